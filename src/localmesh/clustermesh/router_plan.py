"""What the in-cluster router's Envoy serves, from the cluster's objects (pure, no I/O).

Inputs: the session Leases of one meshed Service, the shadow pods they name and the
EndpointSlices of the origin Service (`<svc>-localmesh-origin`, the original selector).
Output: one Snapshot for the router's own Envoy:

- per router port (a Service targetPort) one listener on the pod IP, named by the port. A
  port some live session exposes carries marks, so it is HTTP: codec AUTO (HTTP/1.1, h2c,
  gRPC on one port), websocket upgrades, its routes by RDS. Every other port is a TCP
  pass-through (tcp_proxy) to the origin pods, byte for byte: TLS, a server that speaks
  first, any binary protocol keep working. As sessions come and go a port switches mode
  by an in-place update of its listener's filter chain (same name and address): Envoy
  keeps the socket, new connections take the new chain, open ones drain;
- per HTTP port a route configuration (Envoy asks only for the ones its listeners name:
  one it never asks for would never be ACKed) with one virtual host `*`: first a route per live,
  routed session (`header: value`, exact, header name lower case) to a cluster of that
  session's shadow pod, then a catch-all to the cluster of the origin pods (one EDS
  endpoint per ready pod);
- per port two clusters of the origin pods with the same endpoints: `origin.PORT` (HTTP,
  the catch-all's) and `origin-tcp.PORT` (no HTTP options, the pass-through's). Both are
  served whatever the port's mode, so a switch never points a listener at a cluster Envoy
  is still warming (a listener switching to HTTP warms until its routes arrive);
- upstream protocol = the caller's (h1 stays h1, h2c/gRPC stays h2c); Host/:authority kept;
- a marked request whose shadow or tunnel fails gets a 503 whose body names the mark.

A session is routed only while its Lease is live (renewTime + leaseDurationSeconds > now)
and its shadow pod is Ready, or verified by the router itself (`verified`: pod UIDs whose
/readyz the router found OK a moment ago, shadow_verify); otherwise its marked requests
take the catch-all.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.membership import lease_expires_in, lease_live, parse_time
from localmesh.clustermesh.pods import pod_ready
from localmesh.clustermesh.port_protocols import declared_http
from localmesh.desired import (
    ClusterKind,
    ClusterSpec,
    Endpoint,
    HeaderMatch,
    MatchKind,
    Protocol,
    RouteSpec,
    VirtualHostSpec,
)
from localmesh.kube.targets import JSON
from localmesh.xds import resources as rs
from localmesh.xds.proto import Message, message_type
from localmesh.xds.resources import (
    AccessLogFilter,
    Address,
    AndFilter,
    DataSource,
    ExpressionFilter,
    ExtensionFilter,
    Filter,
    FilterChain,
    Http2ProtocolOptions,
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpConnectionManagerUpgradeConfig,
    HttpFilter,
    Listener,
    LocalReplyConfig,
    Rds,
    ResponseFlagFilter,
    ResponseMapper,
    Router,
    SocketAddress,
    SubstitutionFormatString,
)
from localmesh.xds.snapshot import Snapshot

TcpProxy = message_type("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")

# Failures of the upstream connection a marked request may meet on the way to the
# developer's machine: reset (UC), connect failure (UF), retries exhausted (URX), no
# healthy endpoint (UH).
SHADOW_FAILURE_FLAGS = ("UC", "UF", "URX", "UH")


@dataclass(frozen=True)
class Session:
    """One live session's mark, as its Lease says it."""

    name: str
    header: str  # lower case
    value: str
    holder: str
    targets: tuple[int, ...]  # the router ports whose marked requests it takes
    shadow: str  # the shadow pod's name
    shadow_ip: str | None  # set only while the shadow pod is Ready (or router-verified)
    acquired: datetime | None  # the developer's clock
    created: datetime | None = None  # the API server's (whole seconds): orders first

    @property
    def routed(self) -> bool:
        return self.shadow_ip is not None


@dataclass(frozen=True)
class RouterPlan:
    """Everything the router serves right now."""

    pod_ip: str
    ports: tuple[int, ...]
    sessions: tuple[Session, ...]  # live, in route order
    origin: Mapping[int, tuple[Endpoint, ...]]  # router port -> ready origin pods
    declared_http: frozenset[int] = frozenset()  # ports whose name/appProtocol say HTTP
    incumbents: frozenset[str] = frozenset()  # sessions Envoy routes now (ACKed)

    @functools.cached_property
    def held(self) -> Mapping[str, Session]:
        """Sessions whose mark (header and value) an older live session already has on one
        of their ports: name -> that session. A mark is one developer's: the younger one
        is not routed, and its `mesh` says who holds the mark. A session Envoy routes now
        keeps its mark whatever the clocks say: a mark never moves to a later comer."""
        owners: dict[tuple[str, str, int], Session] = {}
        held: dict[str, Session] = {}
        # Incumbents first, then oldest first (a stable sort keeps the age order).
        for s in sorted(self.sessions, key=lambda s: s.name not in self.incumbents):
            for port in s.targets:
                owner = owners.setdefault((s.header, s.value, port), s)
                if owner is not s:
                    held.setdefault(s.name, owner)
        return held

    @property
    def http_ports(self) -> frozenset[int]:
        """The ports some live session exposes (routed or not yet: a port does not switch
        back and forth while a shadow pod starts), and those the Service declares HTTP
        (they never switch: a switch closes the pass-through's open connections); the
        others are TCP pass-throughs."""
        exposed = frozenset(p for s in self.sessions for p in s.targets)
        return (exposed | self.declared_http) & frozenset(self.ports)

    def routes(self, port: int) -> tuple[RouteSpec, ...]:
        marked = tuple(
            RouteSpec(
                cluster=shadow_cluster(s.name, port),
                headers=(HeaderMatch(s.header, MatchKind.EXACT, s.value),),
                streams=True,
                name=s.name,
                unreachable=unreachable_text(s),
            )
            for s in self.sessions
            if s.routed and port in s.targets and s.name not in self.held
        )
        return (*marked, RouteSpec(cluster=origin_cluster(port), streams=True, name="origin"))

    def clusters(self) -> tuple[ClusterSpec, ...]:
        found = [
            ClusterSpec(origin_cluster(p), Protocol.DOWNSTREAM, self.origin.get(p, ()), _PODS)
            for p in self.ports
        ]
        for s in self.sessions:
            if s.shadow_ip is None:
                continue
            for p in s.targets:
                if p in self.ports:
                    endpoint = Endpoint(s.shadow_ip, p, s.shadow)
                    found.append(
                        ClusterSpec(
                            shadow_cluster(s.name, p), Protocol.DOWNSTREAM, (endpoint,), _PODS
                        )
                    )
        return tuple(found)


_PODS = ClusterKind.POD_IPS


def origin_cluster(port: int) -> str:
    return f"origin.{port}"


def origin_tcp_cluster(port: int) -> str:
    return f"origin-tcp.{port}"


def shadow_cluster(session: str, port: int) -> str:
    return f"shadow.{session}.{port}"


def listener_name(port: int) -> str:
    return f"router_{port}"


def route_config_name(port: int) -> str:
    return f"router_routes_{port}"


def unreachable_text(session: Session) -> str:
    return (
        f"localmesh: the local process behind {session.header}: {session.value} is not "
        f"answering (session {session.name} of {session.holder}: is `localmesh mesh` still "
        "running there, and its local port open?)"
    )


# -- from the cluster's objects --------------------------------------------------------
def _routable_ip(pod: JSON | None, verified: frozenset[str] = frozenset()) -> str | None:
    """The pod's IP while it is Ready (or its UID is in `verified`) and not being deleted."""
    if pod is None or pod.get("metadata", {}).get("deletionTimestamp"):
        return None
    ready = pod.get("metadata", {}).get("uid") in verified or pod_ready(pod)
    ip = (pod.get("status") or {}).get("podIP")
    return str(ip) if ready and ip else None


def live_sessions(
    leases: Iterable[JSON],
    pods: Mapping[str, JSON],
    now: datetime,
    verified: frozenset[str] = frozenset(),
) -> tuple[Session, ...]:
    """Sessions whose Lease is live, oldest first (the first of two equal marks wins);
    a Lease without a header or value is not a session and is ignored. `verified`: the
    shadow pods' UIDs the router itself found connected (see the module's docstring)."""
    found = []
    for lease in leases:
        if not lease_live(lease, now):
            continue
        mark = m.lease_mark(lease)
        if mark is None or mark.targets is None:
            continue
        meta = lease.get("metadata") or {}
        notes = meta.get("annotations") or {}
        shadow = notes.get(m.SHADOW_ANNOTATION) or str(meta.get("name", ""))
        spec = lease.get("spec") or {}
        found.append(
            Session(
                name=str(meta.get("name", "")),
                header=mark.header,
                value=mark.value,
                holder=str(spec.get("holderIdentity") or "?"),
                targets=tuple(sorted(mark.targets)),
                shadow=shadow,
                shadow_ip=_routable_ip(pods.get(shadow), verified),
                acquired=parse_time(spec.get("acquireTime")),
                created=parse_time(meta.get("creationTimestamp")),
            )
        )
    epoch = datetime.min.replace(tzinfo=now.tzinfo)
    return tuple(sorted(found, key=lambda s: (s.created or epoch, s.acquired or epoch, s.name)))


def next_expiry(leases: Iterable[JSON], now: datetime) -> float | None:
    """Seconds until the first live Lease expires (None: none is live): the router
    re-plans then even if no event comes."""
    left = (lease_expires_in(lease, now) for lease in leases if lease_live(lease, now))
    return min((s for s in left if s is not None), default=None)


def origin_endpoints(
    slices: Iterable[JSON], ports: Sequence[int]
) -> dict[int, tuple[Endpoint, ...]]:
    """Router port -> one endpoint per ready, non-terminating origin pod serving it (the
    origin Service keeps the original targetPorts, so a slice port is a router port)."""
    found: dict[int, set[Endpoint]] = {p: set() for p in ports}
    for piece in slices:
        numbers = [int(p["port"]) for p in piece.get("ports") or [] if p.get("port") is not None]
        for endpoint in piece.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            addresses = endpoint.get("addresses") or []
            if not addresses:
                continue
            pod = str((endpoint.get("targetRef") or {}).get("name") or "")
            for number in numbers:
                if number in found:
                    found[number].add(Endpoint(str(addresses[0]), number, pod))
    return {p: tuple(sorted(eps)) for p, eps in found.items()}


def plan(
    pod_ip: str,
    ports: Sequence[int],
    *,
    leases: Iterable[JSON],
    pods: Mapping[str, JSON],
    slices: Iterable[JSON],
    now: datetime,
    verified: frozenset[str] = frozenset(),
    incumbents: frozenset[str] = frozenset(),
) -> RouterPlan:
    slices = list(slices)
    return RouterPlan(
        pod_ip=pod_ip,
        ports=tuple(sorted(set(ports))),
        sessions=live_sessions(leases, pods, now, verified),
        origin=origin_endpoints(slices, ports),
        declared_http=declared_http_ports(slices),
        incumbents=incumbents,
    )


def declared_http_ports(slices: Iterable[JSON]) -> frozenset[int]:
    """The origin's ports whose name or appProtocol say HTTP (EndpointSlice ports carry
    both, as the Service's ports do)."""
    return frozenset(
        int(p["port"])
        for piece in slices
        for p in piece.get("ports") or []
        if p.get("port") is not None and declared_http(p)
    )


# -- to Envoy resources ------------------------------------------------------------------
@functools.cache
def _local_reply_config() -> Message:
    """A marked route (it carries the `unreachable` text) whose shadow or tunnel fails
    answers 503 with that text; the catch-all keeps Envoy's own replies."""
    has_text = ExpressionFilter(
        expression=f"has(xds.route_metadata.filter_metadata.{rs.METADATA_NAMESPACE})"
    )
    failed = AccessLogFilter(
        and_filter=AndFilter(
            filters=[
                AccessLogFilter(
                    response_flag_filter=ResponseFlagFilter(flags=list(SHADOW_FAILURE_FLAGS))
                ),
                AccessLogFilter(
                    extension_filter=ExtensionFilter(
                        name="envoy.access_loggers.extension_filters.cel",
                        typed_config=rs.pack(has_text),
                    )
                ),
            ]
        )
    )
    body = f"%METADATA(ROUTE:{rs.METADATA_NAMESPACE}:{rs.UNREACHABLE_KEY})%\n"
    return LocalReplyConfig(
        mappers=[
            ResponseMapper(
                filter=failed,
                status_code=503,
                body_format_override=SubstitutionFormatString(
                    text_format_source=DataSource(inline_string=body)
                ),
            )
        ]
    )


def build_router_listener(pod_ip: str, port: int, *, http: bool = True) -> Message:
    """The listener of one router port: HTTP with marked routes, or a TCP pass-through.
    The name and address are the same in both modes (an in-place filter-chain update)."""
    network = _http_filter(port) if http else _tcp_proxy_filter(port)
    return Listener(
        name=listener_name(port),
        address=Address(socket_address=SocketAddress(address=pod_ip, port_value=port)),
        enable_reuse_port=False,
        filter_chains=[FilterChain(filters=[network])],
    )


@functools.cache
def _tcp_proxy_filter(port: int) -> Message:
    proxy = TcpProxy(stat_prefix=f"router_tcp_{port}", cluster=origin_tcp_cluster(port))
    return Filter(name="envoy.filters.network.tcp_proxy", typed_config=rs.pack(proxy))


def build_tcp_cluster(spec: ClusterSpec) -> Message:
    """An EDS cluster of pod IPs without HTTP protocol options: tcp_proxy's upstream."""
    return rs.Cluster(
        name=spec.name,
        connect_timeout=rs.CONNECT_TIMEOUT,
        type=rs.ClusterDiscoveryType.EDS,
        eds_cluster_config=rs.ClusterEdsClusterConfig(eds_config=rs.ads_config_source()),
    )


@functools.cache
def _http_filter(port: int) -> Message:
    hcm = HttpConnectionManager(
        stat_prefix=f"router_{port}",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        http2_protocol_options=Http2ProtocolOptions(),
        # Transparent and lean: no x-request-id or x-envoy-* headers added, no per-status
        # stats (every request pays for those on the pod's few CPU cycles).
        generate_request_id=False,
        http_filters=[
            HttpFilter(
                name="envoy.filters.http.router",
                typed_config=rs.pack(Router(dynamic_stats=False, suppress_envoy_headers=True)),
            )
        ],
        local_reply_config=_local_reply_config(),
        upgrade_configs=[HttpConnectionManagerUpgradeConfig(upgrade_type="websocket")],
        rds=Rds(config_source=rs.ads_config_source(), route_config_name=route_config_name(port)),
    )
    return Filter(name="envoy.filters.network.http_connection_manager", typed_config=rs.pack(hcm))


def build_router_snapshot(router: RouterPlan) -> Snapshot:
    clusters = router.clusters()
    tcp = [
        ClusterSpec(origin_tcp_cluster(p), Protocol.DOWNSTREAM, router.origin.get(p, ()), _PODS)
        for p in router.ports
    ]
    http = router.http_ports
    routes = {
        route_config_name(p): rs.build_route_configuration(
            route_config_name(p),
            [rs.build_virtual_host(VirtualHostSpec("*", router.routes(p), domains=("*",)))],
        )
        for p in router.ports
        if p in http
    }
    snapshot = Snapshot.from_messages(
        {
            rs.CLUSTER_TYPE: {
                **{c.name: rs.build_cluster(c) for c in clusters},
                **{c.name: build_tcp_cluster(c) for c in tcp},
            },
            rs.ENDPOINT_TYPE: {c.name: rs.build_load_assignment(c) for c in (*clusters, *tcp)},
            rs.LISTENER_TYPE: {
                listener_name(p): build_router_listener(router.pod_ip, p, http=p in http)
                for p in router.ports
            },
            rs.ROUTE_TYPE: routes,
        }
    )
    return snapshot.check()


__all__ = [
    "RouterPlan",
    "Session",
    "build_router_snapshot",
    "live_sessions",
    "next_expiry",
    "origin_endpoints",
    "plan",
]
