"""What the control API talks about, as plain data: `up` fills these, clients read them.

Nothing here imports protobuf or grpc; `localmesh.control.convert` maps these to the wire.
Health is derived from the data itself (`InstanceStatus.problems`), so the server, the
client and the renderers can never disagree about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# Forwarder states; only READY counts as a live endpoint.
POD_READY = "ready"
POD_CONNECTING = "connecting"
POD_BACKOFF = "backoff"
POD_CLOSED = "closed"


@dataclass(frozen=True)
class PodStatus:
    """One pod behind a host, with the local forwarder that reaches it."""

    name: str
    local_address: str
    local_port: int
    state: str = POD_READY
    active_connections: int = 0
    last_error: str = ""

    @property
    def live(self) -> bool:
        return self.state == POD_READY


@dataclass(frozen=True)
class RouteStatus:
    """One `routes:` item of a host: its match, its target and whether the target is up."""

    match: str  # e.g. "x-dev: alice" or "path /v2/"
    target: str  # "local 127.0.0.1:9090" or "namespace/service:port"
    cluster: str = ""
    local: bool = False
    listening: bool = False  # a local target accepted a connection when status was taken
    error: str = ""  # why a Service target cannot be resolved, if so


@dataclass(frozen=True)
class HostStatus:
    """One services.yaml entry."""

    host: str
    namespace: str
    service: str
    port: int | str  # as configured: number or port name
    type: str  # "http" or "grpc"
    cluster: str = ""
    target_port: int = 0  # resolved container port; 0 while unresolved
    pods: tuple[PodStatus, ...] = ()
    last_reconnect: datetime | None = None
    last_reconnect_reason: str = ""
    requests: int = 0
    errors: int = 0
    error: str = ""  # why the target cannot be resolved, if so
    local: str = ""  # the host's own target is a local process at this address
    local_listening: bool = False  # ... which accepted a connection when status was taken
    routes: tuple[RouteStatus, ...] = ()
    # Over the instance's recent window (`InstanceStatus.recent_seconds`), from Envoy's stats.
    recent_requests: int = 0
    recent_failures: int = 0  # 5xx answers, resets and connect failures

    @property
    def target(self) -> str:
        if self.local:
            return f"local {self.local}"
        return f"{self.namespace}/{self.service}:{self.port}"

    @property
    def live_pods(self) -> tuple[PodStatus, ...]:
        return tuple(p for p in self.pods if p.live)


@dataclass(frozen=True)
class XdsTypeStatus:
    """The xDS exchange for one resource type: what was offered, what Envoy accepted."""

    type_url: str
    served_version: str = ""
    acked_version: str = ""
    nack: str = ""  # error_detail of the last NACK while it is still the current version

    @property
    def short_type(self) -> str:
        return self.type_url.rsplit(".", 1)[-1]

    @property
    def in_sync(self) -> bool:
        return not self.nack and self.served_version == self.acked_version


@dataclass(frozen=True)
class CheckStatus:
    """One fact checked when status is taken (e.g. "listener": bound and serving)."""

    name: str
    ok: bool
    problem: str = ""  # why the check fails now, one sentence
    repaired: str = ""  # the last repair localmesh made for it, e.g. "Envoy restarted at ..."


@dataclass(frozen=True)
class EnvoyStatus:
    running: bool
    pid: int = 0
    admin_address: str = ""
    restarts: int = 0
    version: str = ""
    bootstrap_path: str = ""


@dataclass(frozen=True)
class InstanceStatus:
    """Everything `localmesh status` shows about one running instance."""

    name: str
    pid: int
    listener_address: str
    listener_port: int
    envoy: EnvoyStatus
    hosts: tuple[HostStatus, ...] = ()
    xds: tuple[XdsTypeStatus, ...] = ()
    config_path: str = ""
    started_at: datetime | None = None
    # Problems only the instance knows about (e.g. "services.yaml is invalid, serving the
    # previous version"); they make the status unhealthy like the derived ones.
    extra_problems: tuple[str, ...] = ()
    # Facts checked at status time (and repaired in between when they fail).
    checks: tuple[CheckStatus, ...] = ()
    recent_seconds: float = 0.0  # the span the hosts' recent counts cover (0: none yet)

    @property
    def listener(self) -> str:
        address = self.listener_address
        return (
            f"[{address}]:{self.listener_port}"
            if ":" in address
            else (f"{address}:{self.listener_port}")
        )

    def problems(self) -> tuple[str, ...]:
        """Why the instance is unhealthy, one sentence each; empty when healthy."""
        found: list[str] = []
        if not self.envoy.running:
            found.append("envoy is not running")
        found.extend(f"{c.name}: {c.problem}" for c in self.checks if not c.ok)
        for host in self.hosts:
            found.extend(
                f"{host.host}: route {r.match} -> {r.target}: {r.error}"
                for r in host.routes
                if r.error
            )
            if host.local:
                if not host.local_listening:
                    found.append(f"{host.host}: nothing listens on {host.local}")
                continue
            if not host.live_pods:
                why = f": {host.error}" if host.error else ""
                found.append(f"{host.host}: no live endpoints ({host.target}){why}")
        found.extend(
            f"{h.host}: all {h.recent_requests} requests failed in the last "
            f"{self.recent_seconds:.0f}s (5xx, resets or connect failures)"
            for h in self.hosts
            if h.recent_requests and h.recent_failures >= h.recent_requests
        )
        for xds in self.xds:
            if xds.nack:
                found.append(
                    f"envoy rejected {xds.short_type} version {xds.served_version}: {xds.nack}"
                )
        found.extend(p for p in self.extra_problems if p not in found)
        return tuple(found)

    @property
    def healthy(self) -> bool:
        return not self.problems()

    def degraded(self) -> tuple[str, ...]:
        """What works only in part (some recent requests of a host failed), one sentence
        each; it does not make the instance unhealthy, it makes it "degraded"."""
        return tuple(
            f"{h.host}: {h.recent_failures} of {h.recent_requests} requests failed in the last "
            f"{self.recent_seconds:.0f}s (5xx, resets or connect failures)"
            for h in self.hosts
            if 0 < h.recent_failures < h.recent_requests
        )

    @property
    def state(self) -> str:
        """ "unhealthy" (problems), "degraded" (partial failures) or "healthy"."""
        if not self.healthy:
            return "unhealthy"
        return "degraded" if self.degraded() else "healthy"


@dataclass(frozen=True)
class DownResult:
    pid: int  # the process that is stopping


@dataclass(frozen=True)
class SnapshotResource:
    """One resource of the live xDS snapshot."""

    type_url: str
    name: str
    version: str
    json: str  # the resource in the proto3 JSON mapping

    @property
    def short_type(self) -> str:
        return self.type_url.rsplit(".", 1)[-1]
