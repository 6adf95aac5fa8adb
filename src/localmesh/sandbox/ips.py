"""Addresses: a loopback IP per pod (all of 127/8 reaches lo on Linux), cluster IPs and
node ports of services.

macOS has only 127.0.0.1 on lo0 (other 127/8 addresses cannot be bound without `ifconfig
lo0 alias`, which needs root). There the sandbox runs *shared*: each pod still gets its own
address in the API (pod IPs stay distinct, as clients and localmesh expect), but its
servers listen on 127.0.0.1 at ports of their own, and whatever dials a pod (port-forward,
probes, the service proxy) goes through `dial`, which maps pod IP and port to them.
What truly needs an address per pod says so instead: cluster IPs answer only the
sandbox's own pods (through its DNS and `dial`), not other clients (node ports on 127.0.0.1
do), and containers that run as processes, which bind their pod IP, do not start.
LOCALMESH_SANDBOX_LOOPBACK=shared (or `Sandbox(loopback="shared")`) makes a Linux machine
act as macOS; `per-pod` insists on addresses; `auto` (default) probes.
"""

from __future__ import annotations

import ipaddress
import os
import random
from typing import Any

from localmesh.errors import ConfigError
from localmesh.ports import bindable
from localmesh.sandbox import errors

LOOPBACK_ENV = "LOCALMESH_SANDBOX_LOOPBACK"
PER_POD, SHARED, AUTO = "per-pod", "shared", "auto"
SHARED_HOST = "127.0.0.1"
# Said wherever a feature needs an address per pod and the machine has none to give.
NO_PER_POD_ADDRESSES = (
    "this machine binds no loopback address but 127.0.0.1 (macOS: lo0 has only that one), "
    f"so the sandbox runs pods on distinct ports of 127.0.0.1 ({LOOPBACK_ENV}={SHARED})"
)
_PROBE_ADDRESS = "127.16.0.1"  # any 127/8 address but 127.0.0.1 tells
# (pod IP, container port) -> the port on 127.0.0.1 that serves it, shared mode only.
_SHARED_PORTS: dict[tuple[str, int], int] = {}
_PROCESS_POD_IPS: set[str] = set()  # pod IPs of shared-mode sandboxes in this process


def loopback_mode(wanted: str | None = None) -> str:
    """PER_POD or SHARED: `wanted`, else $LOCALMESH_SANDBOX_LOOPBACK, else what binds."""
    choice = (wanted or os.environ.get(LOOPBACK_ENV) or AUTO).strip().lower()
    if choice in (PER_POD, SHARED):
        return choice
    if choice != AUTO:
        raise ConfigError(f"{LOOPBACK_ENV}={choice!r}: expected {AUTO}, {PER_POD} or {SHARED}")
    return PER_POD if extra_loopback_bindable() else SHARED


def extra_loopback_bindable() -> bool:
    """Whether loopback addresses besides 127.0.0.1 can be bound here (Linux: all of 127/8)."""
    return bindable(_PROBE_ADDRESS, 0)


def share_port(pod_ip: str, port: int, bound: int) -> None:
    """In shared mode, `pod_ip:port` is served on 127.0.0.1:`bound`."""
    _SHARED_PORTS[(pod_ip, port)] = bound


def unshare_port(pod_ip: str, port: int, bound: int) -> None:
    if _SHARED_PORTS.get((pod_ip, port)) == bound:
        del _SHARED_PORTS[(pod_ip, port)]


def dial(ip: str, port: int) -> tuple[str, int]:
    """Where to connect to reach a pod's `ip:port` (itself, unless the sandbox is shared)."""
    bound = _SHARED_PORTS.get((ip, port))
    return (SHARED_HOST, bound) if bound is not None else (ip, port)


SERVICE_CIDR = "127.96.0.0/16"
NODE_PORTS = (30000, 32767)
NODE_IP = "127.0.0.1"  # the node's InternalIP: node ports listen there
# Cluster IPs and node ports held by any sandbox of this process: two sandboxes of one test
# run must never serve the same address (other processes pick at random, rarely the same).
_PROCESS_CLUSTER_IPS: set[str] = set()
_PROCESS_NODE_PORTS: set[int] = set()
_REPICKS = 8


class LoopbackAllocator:
    """Random addresses in 127.16.0.0-127.250.255.254 outside the service range, so sandboxes
    in several processes rarely collide (a collision shows up as a failed bind and the pod
    takes another IP)."""

    def __init__(self, seed: int | None = None, *, shared: bool = False) -> None:
        self._rng = random.Random(seed)
        self._used: set[str] = set()
        self.shared = shared  # pods listen on 127.0.0.1 at ports of their own (see above)

    @property
    def listen_host(self) -> str | None:
        """Where pods' servers listen when not on their pod IP (None: on their pod IP)."""
        return SHARED_HOST if self.shared else None

    def allocate(self) -> str:
        while True:
            second = self._rng.randint(16, 250)
            if second == 96:  # the service range
                continue
            ip = f"127.{second}.{self._rng.randint(0, 255)}.{self._rng.randint(1, 254)}"
            # Shared: nothing binds the address, so no failed bind would tell two
            # sandboxes of this process apart; the process-wide set does.
            if ip not in self._used and not (self.shared and ip in _PROCESS_POD_IPS):
                self._used.add(ip)
                if self.shared:
                    _PROCESS_POD_IPS.add(ip)
                return ip

    def release(self, ip: str) -> None:
        if ip in self._used:
            self._used.discard(ip)
            _PROCESS_POD_IPS.discard(ip)


def _node_port_free(port: int) -> bool:
    return bindable(NODE_IP, port)


class ServiceIPAllocator:
    """Cluster IPs from 127.96.0.0/16 and node ports from 30000-32767, as the API server
    allocates them. The cluster IPs are loopback addresses, so the sandbox's service proxy
    answers on them (`serviceproxy`)."""

    def __init__(self, cidr: str = SERVICE_CIDR, seed: int | None = None) -> None:
        self.network = ipaddress.ip_network(cidr)
        self._rng = random.Random(seed)
        self._pending: set[str] = set()  # allocated for a create that has not stored yet
        # Cluster IPs are allocated either way (objects look as on any cluster); only
        # with an address per pod can the service proxy answer on them.
        self.serve_cluster_ips = True
        self._used: set[str] = set()
        self._node_ports: set[int] = set()

    # ---- cluster IPs ---------------------------------------------------------------------
    def contains(self, ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in self.network
        except ValueError:
            return False

    def allocate(self) -> str:
        """A free cluster IP (handed out again only after `release`)."""
        size = self.network.num_addresses
        for _ in range(4 * size):
            ip = str(self.network[self._rng.randrange(1, size - 1)])
            if ip not in _PROCESS_CLUSTER_IPS:
                _PROCESS_CLUSTER_IPS.add(ip)
                self._pending.add(ip)
                return ip
        raise errors.ApiError(500, "InternalError", f"no free cluster IP in {self.network}")

    def reserve(self, ip: str) -> None:
        """Take an IP a client chose: 422 when it is outside the range or taken."""
        if not self.contains(ip):
            raise ValueError(
                f"failed to allocate IP {ip}: provided IP is not in the valid range. "
                f"The range of valid IPs is {self.network}"
            )
        if ip in _PROCESS_CLUSTER_IPS:
            raise ValueError(f"failed to allocate IP {ip}: provided IP is already allocated")
        _PROCESS_CLUSTER_IPS.add(ip)
        self._used.add(ip)

    def release(self, ip: str) -> None:
        if ip in self._used or ip in self._pending:
            self._used.discard(ip)
            self._pending.discard(ip)
            _PROCESS_CLUSTER_IPS.discard(ip)

    # ---- node ports ----------------------------------------------------------------------
    def allocate_node_port(self) -> int:
        low, high = NODE_PORTS
        for _ in range(4 * (high - low)):
            port = self._rng.randint(low, high)
            if port not in _PROCESS_NODE_PORTS and _node_port_free(port):
                _PROCESS_NODE_PORTS.add(port)
                self._node_ports.add(port)
                return port
        raise errors.ApiError(500, "InternalError", "no free node port")

    def reserve_node_port(self, port: Any) -> None:
        low, high = NODE_PORTS
        if not isinstance(port, int) or not low <= port <= high:
            raise ValueError(
                f"provided port is not in the valid range. The range of valid ports is {low}-{high}"
            )
        if port in _PROCESS_NODE_PORTS or not _node_port_free(port):
            raise ValueError("provided port is already allocated")
        _PROCESS_NODE_PORTS.add(port)
        self._node_ports.add(port)

    def release_node_port(self, port: int) -> None:
        if port in self._node_ports:
            self._node_ports.discard(port)
            _PROCESS_NODE_PORTS.discard(port)

    def release_all(self) -> None:
        """Give back everything this cluster holds (it is shutting down)."""
        for ip in [*self._used, *self._pending]:
            self.release(ip)
        for port in list(self._node_ports):
            self.release_node_port(port)

    # ---- admission -----------------------------------------------------------------------
    def admit(self, svc: dict[str, Any], current: dict[str, Any] | None) -> None:
        """Settle a Service's cluster IP and node ports before it is stored (create when
        `current` is None, else update), raising 422 as the API server does."""
        spec = svc.setdefault("spec", {})
        name = svc.get("metadata", {}).get("name", "")
        old_spec = (current or {}).get("spec", {})
        spec.setdefault("type", "ClusterIP")
        kind = spec["type"]
        causes: list[tuple[str, str]] = []
        if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            causes.append(
                (
                    "spec.type",
                    f'Unsupported value: "{kind}": supported values: "ClusterIP", '
                    '"ExternalName", "LoadBalancer", "NodePort"',
                )
            )
            raise errors.invalid("Service", name, causes)
        if kind == "ExternalName":
            old_ip = old_spec.get("clusterIP")
            if old_ip and old_ip != "None":
                self.release(old_ip)
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        else:
            self._admit_cluster_ip(spec, old_spec, current is not None, causes)
        self._admit_node_ports(spec, old_spec, kind, causes)
        if causes:
            raise errors.invalid("Service", name, causes)

    def _admit_cluster_ip(
        self,
        spec: dict[str, Any],
        old_spec: dict[str, Any],
        update: bool,
        causes: list[tuple[str, str]],
    ) -> None:
        old_ip = old_spec.get("clusterIP")
        ip = spec.get("clusterIP")
        if update and not ip:
            ip = old_ip  # an update without the allocated values keeps them
            if not ip:  # ExternalName -> ClusterIP: allocate now
                ip = self.allocate()
            spec["clusterIP"] = ip
            spec["clusterIPs"] = [ip]
        if update and old_ip and ip != old_ip:
            causes.append(
                ("spec.clusterIPs[0]", f'Invalid value: ["{ip}"]: may not change once set')
            )
            return
        if ip == "None" or (update and ip == old_ip):
            return
        if ip in self._pending:
            # Ours: make sure no other process serves its ports (pick again if one does).
            ports = [
                int(p["port"]) for p in spec.get("ports") or [] if isinstance(p.get("port"), int)
            ]
            for _ in range(_REPICKS):
                if all(bindable(ip, port) for port in ports):
                    break
                self.release(ip)
                ip = self.allocate()
                spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
            self._pending.discard(ip)
            self._used.add(ip)
            return
        try:
            self.reserve(str(ip))
        except ValueError as exc:
            causes.append(("spec.clusterIPs", f'Invalid value: ["{ip}"]: {exc}'))

    def _admit_node_ports(
        self,
        spec: dict[str, Any],
        old_spec: dict[str, Any],
        kind: str,
        causes: list[tuple[str, str]],
    ) -> None:
        old_ports = {
            (p.get("name", ""), p.get("port")): p.get("nodePort")
            for p in old_spec.get("ports") or []
            if p.get("nodePort")
        }
        kept: set[int] = set()
        wants_node_ports = kind in ("NodePort", "LoadBalancer")
        old_kind = old_spec.get("type", "ClusterIP")
        for i, p in enumerate(spec.get("ports") or []):
            given = p.get("nodePort")
            previous = old_ports.get((p.get("name", ""), p.get("port")))
            if not wants_node_ports and given and given == previous and old_kind != kind:
                del p["nodePort"]  # a type change drops the allocated node ports
                given = None
            if not wants_node_ports:
                if given:
                    causes.append(
                        (
                            f"spec.ports[{i}].nodePort",
                            f"Forbidden: may not be used when `type` is '{kind}'",
                        )
                    )
                continue
            if not given and previous:
                p["nodePort"] = given = previous
            if given and given in old_ports.values():
                kept.add(given)
                continue
            try:
                if given:
                    self.reserve_node_port(given)
                else:
                    p["nodePort"] = self.allocate_node_port()
            except ValueError as exc:
                causes.append((f"spec.ports[{i}].nodePort", f"Invalid value: {given}: {exc}"))
        if wants_node_ports:
            spec.setdefault("externalTrafficPolicy", "Cluster")
        else:
            spec.pop("externalTrafficPolicy", None)
        if not causes:
            for port in set(old_ports.values()) - kept:
                self.release_node_port(int(port))

    def forget(self, svc: dict[str, Any]) -> None:
        """A Service is gone: its cluster IP and node ports are free again."""
        spec = svc.get("spec", {})
        ip = spec.get("clusterIP")
        if ip and ip != "None":
            self.release(ip)
        for p in spec.get("ports") or []:
            if p.get("nodePort"):
                self.release_node_port(int(p["nodePort"]))
