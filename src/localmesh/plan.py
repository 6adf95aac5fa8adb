"""The planner: services.yaml + resolved Service ports + live endpoints -> `DesiredState`.

ONE pure function, used by `up` (through the reconciler), `dump-envoy-config` and hence
what `--live` shows:

    plan(config, resolved, endpoints, listener_address) -> DesiredState

- `resolved` maps each forwarded Service port (`Config.backends()`: entries without
  routes) to its port number; a backend missing there is not resolved (yet): routes to it
  are left out, and so is a host with no route left.
- `endpoints` maps `backend_key(entry, port)` ("namespace/service:port") to its live
  endpoints; a missing key means no endpoints (yet). Entries naming the same Service port
  share them, whatever their `type`.

A host's routes are its `routes:` in file order, then its own target as the catch-all.
Local processes become static clusters whose refused connection answers 503 with a body
naming the address and the route. Virtual hosts keep the file's order; clusters are
sorted by name and endpoints sorted, so equal inputs give equal states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from localmesh.config import Config, LocalAddress, ServiceEntry, route_backend
from localmesh.desired import (
    DEFAULT_LISTENER_NAME,
    DEFAULT_ROUTE_CONFIG_NAME,
    ClusterKind,
    ClusterSpec,
    DesiredState,
    Endpoint,
    ListenerSpec,
    Protocol,
    RouteSpec,
    VirtualHostSpec,
    cluster_name,
    local_cluster_name,
)


def backend_key(entry: ServiceEntry, port: int) -> str:
    """What endpoints are filed under: a Service port, whatever the entry's type."""
    return f"{entry.namespace}/{entry.service}:{port}"


def entry_cluster_name(entry: ServiceEntry, resolved_port: int) -> str:
    """The Envoy cluster of a forwarded entry: one per Service port and protocol."""
    return cluster_name(entry.namespace, entry.service, resolved_port, entry.protocol)


def unreachable_text(address: LocalAddress, host: str, match: str = "") -> str:
    """The 503 body when nothing listens on a local target."""
    where = f"{host}, {match}" if match else host
    return f"localmesh: nothing listens on {address} ({where})"


class _Clusters:
    """The clusters of one plan, each built once however many routes use it."""

    def __init__(self, endpoints: Mapping[str, Sequence[Endpoint]]) -> None:
        self._endpoints = endpoints
        self.specs: dict[str, ClusterSpec] = {}

    def forwarded(self, backend: ServiceEntry, port: int) -> str:
        name = entry_cluster_name(backend, port)
        if name not in self.specs:
            found = tuple(sorted(self._endpoints.get(backend_key(backend, port), ())))
            self.specs[name] = ClusterSpec(name, backend.protocol, found)
        return name

    def local(self, address: LocalAddress, protocol: Protocol) -> str:
        name = local_cluster_name(address.address, address.port, protocol)
        if name not in self.specs:
            endpoint = Endpoint(address.address, address.port)
            self.specs[name] = ClusterSpec(name, protocol, (endpoint,), ClusterKind.LOCAL)
        return name


def plan_host(
    entry: ServiceEntry, resolved: Mapping[ServiceEntry, int], clusters: _Clusters
) -> VirtualHostSpec | None:
    """One host's virtual host, or None when none of its targets is resolved yet."""
    routes: list[RouteSpec] = []
    for route in entry.routes:
        match = route.describe_match()
        if isinstance(route.target, LocalAddress):
            cluster = clusters.local(route.target, route.protocol)
            text = unreachable_text(route.target, entry.host, match)
        else:
            backend = route_backend(entry, route)
            port = resolved.get(backend)
            if port is None:
                continue  # not resolved (yet): its requests fall through to the next route
            cluster, text = clusters.forwarded(backend, port), ""
        routes.append(
            RouteSpec(
                cluster=cluster,
                path_prefix=route.path_prefix,
                headers=route.headers,
                streams=route.protocol is Protocol.GRPC,
                name=f"{entry.host}: {match}",
                unreachable=text,
            )
        )
    streams = entry.protocol is Protocol.GRPC
    if entry.local is not None:
        cluster = clusters.local(entry.local, entry.protocol)
        text = unreachable_text(entry.local, entry.host)
        routes.append(RouteSpec(cluster=cluster, streams=streams, unreachable=text))
    else:
        own = entry.backends()[0]
        port = resolved.get(own)
        if port is not None:
            routes.append(RouteSpec(cluster=clusters.forwarded(own, port), streams=streams))
    if not routes:
        return None
    return VirtualHostSpec(entry.host, tuple(routes))


def plan(
    config: Config,
    resolved: Mapping[ServiceEntry, int],
    endpoints: Mapping[str, Sequence[Endpoint]],
    listener_address: str,
    *,
    listener_name: str = DEFAULT_LISTENER_NAME,
    route_config_name: str = DEFAULT_ROUTE_CONFIG_NAME,
    previous: DesiredState | None = None,
) -> DesiredState:
    """The desired state for `config` (see the module docstring).

    Pieces equal to `previous`'s are `previous`'s very objects, so that building the next
    snapshot stops at identity for everything that did not change (1,000 hosts, one edit).
    """
    clusters = _Clusters(endpoints)
    old_hosts = {v.host: v for v in previous.virtual_hosts} if previous else {}
    vhosts = []
    for entry in config.services:
        vhost = plan_host(entry, resolved, clusters)
        if vhost is not None:
            old = old_hosts.get(vhost.host)
            vhosts.append(old if old == vhost else vhost)
    old_clusters = {c.name: c for c in previous.clusters} if previous else {}
    specs = []
    for name in sorted(clusters.specs):
        spec, old_spec = clusters.specs[name], old_clusters.get(name)
        specs.append(old_spec if old_spec == spec else spec)
    listener = ListenerSpec(
        listener_address, config.listener_port, listener_name, route_config_name
    )
    if previous is not None and previous.listener == listener:
        listener = previous.listener
    return DesiredState(listener=listener, clusters=tuple(specs), virtual_hosts=tuple(vhosts))


__all__ = ["backend_key", "entry_cluster_name", "plan", "plan_host", "unreachable_text"]
