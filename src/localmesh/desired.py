"""The desired state: what one Envoy should serve right now, as plain data.

`localmesh.plan` computes a `DesiredState` from services.yaml, the resolved Service ports and
the live endpoints; `localmesh.xds` turns it into resources. The model is not tied to
services.yaml: the in-cluster router builds the same shapes (header-marked routes to a
cluster of pod IPs, a catch-all to the original pods, websocket upgrades) by hand.

Everything is frozen and hashable so that equal inputs give equal snapshots and versions
can be derived from content.

    DesiredState
    ├── listener: ListenerSpec          name, address, port, route configuration name
    ├── clusters: ClusterSpec...        name, kind (forwarded / local / pod IPs), protocol,
    │                                   endpoints
    └── virtual_hosts: VirtualHostSpec  host (and its domains), ordered RouteSpecs:
                                        path prefix, header matches, one cluster or weights
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

DEFAULT_LISTENER_NAME = "localmesh_http"
DEFAULT_ROUTE_CONFIG_NAME = "localmesh_routes"


class Protocol(enum.Enum):
    """How Envoy talks to a cluster's endpoints: `type` in services.yaml."""

    HTTP = "http"  # HTTP/1.1 to the upstream
    GRPC = "grpc"  # HTTP/2 cleartext (h2c) to the upstream
    DOWNSTREAM = "downstream"  # whatever the client spoke (a router in front of pods)


class ClusterKind(enum.Enum):
    """Where a cluster's endpoints come from, which also decides how Envoy gets them."""

    FORWARDED = "forwarded"  # local port-forwards of a Service port; EDS, they come and go
    LOCAL = "local"  # one fixed address of a process on this machine; inline (static)
    POD_IPS = "pod_ips"  # pod IPs reached directly (the in-cluster router); EDS

    @property
    def eds(self) -> bool:
        return self is not ClusterKind.LOCAL


@dataclass(frozen=True, order=True)
class Endpoint:
    """One address of a cluster: a forwarder, a local process or a pod."""

    address: str
    port: int
    pod: str = ""  # informational (status, logs); not part of routing


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    protocol: Protocol
    endpoints: tuple[Endpoint, ...] = ()
    kind: ClusterKind = ClusterKind.FORWARDED
    why: str = ""  # how `protocol` was chosen, when services.yaml gave no `type`


class MatchKind(enum.Enum):
    EXACT = "exact"
    PRESENT = "present"
    REGEX = "regex"  # RE2, matched against the whole header value


@dataclass(frozen=True)
class HeaderMatch:
    """One header condition of a route; all of a route's conditions must hold."""

    name: str  # lower case: HTTP/2 and Envoy compare header names in lower case
    kind: MatchKind
    value: str = ""  # the exact value or the regex; "" for PRESENT

    def describe(self) -> str:
        if self.kind is MatchKind.PRESENT:
            return f"{self.name} present"
        if self.kind is MatchKind.REGEX:
            return f"{self.name} ~ {self.value}"
        return f"{self.name}: {self.value}"


@dataclass(frozen=True)
class WeightedCluster:
    cluster: str
    weight: int


@dataclass(frozen=True)
class RouteSpec:
    """One route of a virtual host: a match, then exactly one of `cluster` and `weighted`.

    `streams` (gRPC, websockets) switches off the route and idle timeouts; `unreachable`
    is the 503 body a client gets when the cluster's address refuses the connection
    (local processes that are not running), "" for Envoy's default. A route with neither
    cluster nor weights answers 503 itself with `failed` as the body (a host whose Service
    could not be resolved says why).
    """

    cluster: str = ""
    weighted: tuple[WeightedCluster, ...] = ()
    path_prefix: str = "/"
    headers: tuple[HeaderMatch, ...] = ()
    streams: bool = False
    name: str = ""
    unreachable: str = ""
    failed: str = ""

    @property
    def clusters(self) -> tuple[str, ...]:
        """Every cluster the route may send a request to."""
        return (self.cluster,) if self.cluster else tuple(w.cluster for w in self.weighted)


@dataclass(frozen=True)
class VirtualHostSpec:
    """One host and its routes, tried in order (first match wins).

    `domains` defaults to the host with any port (`host`, `host:*`).
    """

    host: str
    routes: tuple[RouteSpec, ...]
    domains: tuple[str, ...] = ()

    @classmethod
    def to_cluster(cls, host: str, cluster: str, protocol: Protocol) -> VirtualHostSpec:
        """A host whose every request goes to one cluster."""
        return cls(host, (RouteSpec(cluster=cluster, streams=protocol is Protocol.GRPC),))

    @property
    def all_domains(self) -> tuple[str, ...]:
        return self.domains or (self.host, f"{self.host}:*")

    @property
    def clusters(self) -> tuple[str, ...]:
        return tuple(c for route in self.routes for c in route.clusters)


@dataclass(frozen=True)
class ListenerSpec:
    """The one HTTP listener; its routes come from the route configuration named here."""

    address: str
    port: int
    name: str = DEFAULT_LISTENER_NAME
    route_config_name: str = DEFAULT_ROUTE_CONFIG_NAME
    websockets: bool = False  # allow `Upgrade: websocket` (the in-cluster router)
    access_log: str = ""  # a file Envoy appends one JSON line per request to (`--access-log`)


@dataclass(frozen=True)
class DesiredState:
    listener: ListenerSpec
    clusters: tuple[ClusterSpec, ...] = ()
    virtual_hosts: tuple[VirtualHostSpec, ...] = ()

    @classmethod
    def serving(
        cls,
        listener_address: str,
        listener_port: int,
        clusters: tuple[ClusterSpec, ...] = (),
        virtual_hosts: tuple[VirtualHostSpec, ...] = (),
    ) -> DesiredState:
        """A state on the default listener and route configuration names."""
        return cls(ListenerSpec(listener_address, listener_port), clusters, virtual_hosts)

    @property
    def listener_address(self) -> str:
        return self.listener.address

    @property
    def listener_port(self) -> int:
        return self.listener.port

    @property
    def route_clusters(self) -> frozenset[str]:
        """Every cluster some route sends traffic to."""
        return frozenset(c for vh in self.virtual_hosts for c in vh.clusters)


def cluster_name(namespace: str, service: str, port: int | str, protocol: Protocol) -> str:
    """The Envoy cluster name of a service port: stable and readable in Envoy's stats."""
    return f"{protocol.value}.{namespace}.{service}.{port}"


def local_cluster_name(address: str, port: int, protocol: Protocol) -> str:
    """The Envoy cluster of a local process: one per address and protocol."""
    return f"{protocol.value}.local.{address}.{port}"


__all__ = [
    "DEFAULT_LISTENER_NAME",
    "DEFAULT_ROUTE_CONFIG_NAME",
    "ClusterKind",
    "ClusterSpec",
    "DesiredState",
    "Endpoint",
    "HeaderMatch",
    "ListenerSpec",
    "MatchKind",
    "Protocol",
    "RouteSpec",
    "VirtualHostSpec",
    "WeightedCluster",
    "cluster_name",
    "local_cluster_name",
]
