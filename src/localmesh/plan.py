"""The planner: services.yaml + resolved Service ports + live endpoints -> `DesiredState`.

ONE pure function, used by `up` (through the reconciler), `dump-envoy-config` and hence
what `--live` shows:

    plan(config, resolved, endpoints, listener_address, *, memo=None) -> DesiredState

- `resolved` maps each forwarded Service port (`Config.backends()`: entries without
  routes) to its port number; a backend missing there is not resolved (yet): routes to it
  are left out, and so is a host with no route left.
- `endpoints` maps `backend_key(entry, port)` ("namespace/service:port") to its live
  endpoints; a missing key means no endpoints (yet). Entries naming the same Service port
  share them, whatever their `type`.

A host's routes are its `routes:` in file order, then its own target as the catch-all.
Local processes become static clusters whose refused connection answers 503 with a body
naming the address and the route. Virtual hosts keep the file's order; clusters are
sorted by name and endpoints sorted, so equal inputs give equal states. A caller that
plans again and again (the reconciler, on every forwarder event) passes a `PlanMemo`: the
result is the same, built from what did not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
from localmesh.protocol_choice import ProtocolChoice, choose_offline, explicit


def backend_key(entry: ServiceEntry, port: int) -> str:
    """What endpoints are filed under: a Service port, whatever the entry's type."""
    return f"{entry.namespace}/{entry.service}:{port}"


Choices = Mapping[ServiceEntry, ProtocolChoice]


def backend_protocol(backend: ServiceEntry, choices: Choices | None = None) -> ProtocolChoice:
    """The protocol Envoy speaks to a forwarded backend: its `type`, else what was chosen
    from its Service port (`choices`, filled by whoever resolved it), else what its port
    name alone says."""
    if not backend.inferred:
        return explicit(backend.protocol)
    found = choices.get(backend) if choices else None
    return found if found is not None else choose_offline(backend.port_name)


def entry_cluster_name(
    entry: ServiceEntry, resolved_port: int, choices: Choices | None = None
) -> str:
    """The Envoy cluster of a forwarded entry: one per Service port and protocol."""
    protocol = backend_protocol(entry, choices).protocol
    return cluster_name(entry.namespace, entry.service, resolved_port, protocol)


def unreachable_text(address: LocalAddress, host: str, match: str = "") -> str:
    """The 503 body when nothing listens on a local target."""
    where = f"{host}, {match}" if match else host
    return f"localmesh: nothing listens on {address} ({where})"


@dataclass(frozen=True)
class _ClusterNeed:
    """A cluster some route uses, and where its endpoints come from."""

    name: str
    protocol: Protocol
    kind: ClusterKind
    backend: str = ""  # forwarded: the key of its endpoints
    local: Endpoint | None = None  # local: its one address
    why: str = ""  # forwarded without `type`: how the protocol was chosen


class _Clusters:
    """The clusters one plan's routes use, each named once however many routes use it."""

    def __init__(self, choices: Choices | None = None) -> None:
        self.needs: dict[str, _ClusterNeed] = {}
        self.choices = choices

    def protocol(self, backend: ServiceEntry) -> Protocol:
        return backend_protocol(backend, self.choices).protocol

    def forwarded(self, backend: ServiceEntry, port: int) -> str:
        choice = backend_protocol(backend, self.choices)
        name = cluster_name(backend.namespace, backend.service, port, choice.protocol)
        if name not in self.needs:
            key = backend_key(backend, port)
            why = choice.reason if backend.inferred else ""
            need = _ClusterNeed(name, choice.protocol, ClusterKind.FORWARDED, key, why=why)
            self.needs[name] = need
        return name

    def local(self, address: LocalAddress, protocol: Protocol) -> str:
        name = local_cluster_name(address.address, address.port, protocol)
        if name not in self.needs:
            endpoint = Endpoint(address.address, address.port)
            self.needs[name] = _ClusterNeed(name, protocol, ClusterKind.LOCAL, local=endpoint)
        return name


_Ports = tuple[tuple[int | None, ProtocolChoice | None, str | None], ...]
_Host = tuple[_Ports, VirtualHostSpec | None, tuple[_ClusterNeed, ...]]


class PlanMemo:
    """What the last plan of one caller was built from, so that the next one reuses every
    unchanged piece (the very same objects: the snapshot then stops at identity) and, when
    only endpoints moved (the same `config` and `resolved` objects), skips the hosts
    entirely. The plan is the same with or without a memo; only its cost differs. Endpoint
    sequences given with a memo must not be changed in place (the reconciler gives tuples).
    """

    def __init__(self) -> None:
        self.config: Config | None = None
        self.resolved: Mapping[ServiceEntry, int] | None = None
        self.choices: Choices | None = None
        self.failures: Mapping[ServiceEntry, str] | None = None
        self.listener: ListenerSpec | None = None
        self.vhosts: tuple[VirtualHostSpec, ...] = ()
        self.needs: tuple[_ClusterNeed, ...] = ()  # sorted by name
        # entry -> (its backends' ports, its virtual host, the clusters it uses)
        self.hosts: dict[ServiceEntry, _Host] = {}
        # cluster name -> (the endpoints it was built from, the spec)
        self.specs: dict[str, tuple[object, ClusterSpec]] = {}


def failed_text(host: str, reason: str) -> str:
    """The 503 body of a host whose Service could not be resolved."""
    return f"localmesh: {host}: {reason}\n"


def plan_host(
    entry: ServiceEntry,
    resolved: Mapping[ServiceEntry, int],
    clusters: _Clusters,
    failures: Mapping[ServiceEntry, str] | None = None,
) -> VirtualHostSpec | None:
    """One host's virtual host, or None when none of its targets is resolved yet and no
    reason is known (with one, the host answers 503 with it)."""
    routes: list[RouteSpec] = []
    for route in entry.routes:
        match = route.describe_match()
        if isinstance(route.target, LocalAddress):
            cluster = clusters.local(route.target, route.protocol)
            text = unreachable_text(route.target, entry.host, match)
            streams = route.protocol is Protocol.GRPC
        else:
            backend = route_backend(entry, route)
            port = resolved.get(backend)
            if port is None:
                continue  # not resolved (yet): its requests fall through to the next route
            cluster, text = clusters.forwarded(backend, port), ""
            streams = clusters.protocol(backend) is Protocol.GRPC
        routes.append(
            RouteSpec(
                cluster=cluster,
                path_prefix=route.path_prefix,
                headers=route.headers,
                streams=streams,
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
            streams = clusters.protocol(own) is Protocol.GRPC
            routes.append(RouteSpec(cluster=clusters.forwarded(own, port), streams=streams))
        elif failures and own in failures:
            routes.append(RouteSpec(failed=failed_text(entry.host, failures[own])))
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
    memo: PlanMemo | None = None,
    choices: Choices | None = None,
    failures: Mapping[ServiceEntry, str] | None = None,
    access_log: str = "",
) -> DesiredState:
    """The desired state for `config` (see the module docstring); `memo` makes repeated
    plans of one caller cheap (see PlanMemo) and is updated. `choices`: the protocol
    chosen from the Service port of each backend without `type` (see protocol_choice)."""
    last = memo or PlanMemo()
    hosts = last.hosts
    if (
        memo is not None
        and memo.config is config
        and memo.resolved is resolved
        and memo.choices is choices
        and memo.failures is failures
    ):
        vhosts, needs = memo.vhosts, memo.needs  # only endpoints can have changed
    else:
        vhosts, needs, hosts = _plan_hosts(config, resolved, last, choices, failures)
    specs: dict[str, tuple[object, ClusterSpec]] = {}
    for need in needs:
        source: object = endpoints.get(need.backend, ()) if need.kind.eds else need.local
        cached = last.specs.get(need.name)
        if (
            cached is not None
            and cached[0] is source
            and cached[1].protocol is need.protocol
            and cached[1].why == need.why
        ):
            specs[need.name] = cached
            continue
        if need.kind.eds:
            found = tuple(sorted(endpoints.get(need.backend, ())))
        else:
            assert need.local is not None
            found = (need.local,)
        spec = ClusterSpec(need.name, need.protocol, found, need.kind, need.why)
        if cached is not None and cached[1] == spec:
            spec = cached[1]
        specs[need.name] = (source, spec)
    listener = ListenerSpec(
        listener_address,
        config.listener_port,
        listener_name,
        route_config_name,
        access_log=access_log,
    )
    if last.listener is not None and last.listener == listener:
        listener = last.listener
    if memo is not None:
        memo.config, memo.resolved, memo.listener = config, resolved, listener
        memo.choices, memo.failures = choices, failures
        memo.vhosts, memo.needs, memo.specs, memo.hosts = vhosts, needs, specs, hosts
    clusters = tuple(spec for _, spec in specs.values())
    return DesiredState(listener=listener, clusters=clusters, virtual_hosts=vhosts)


def _plan_hosts(
    config: Config,
    resolved: Mapping[ServiceEntry, int],
    last: PlanMemo,
    choices: Choices | None,
    failures: Mapping[ServiceEntry, str] | None,
) -> tuple[tuple[VirtualHostSpec, ...], tuple[_ClusterNeed, ...], dict[ServiceEntry, _Host]]:
    """Every host's virtual host and the clusters they use: an entry equal to one of the
    last plan, with the same ports, keeps its virtual host (the same object)."""
    old_hosts = {v.host: v for v in last.vhosts}
    hosts: dict[ServiceEntry, _Host] = {}
    needs: dict[str, _ClusterNeed] = {}
    vhosts = []
    for entry in config.services:
        ports = tuple(
            (
                resolved.get(b),
                backend_protocol(b, choices) if b.inferred else None,
                failures.get(b) if failures else None,
            )
            for b in entry.backends()
        )
        known = last.hosts.get(entry)
        if known is not None and known[0] == ports:
            host = known
        else:
            clusters = _Clusters(choices)
            vhost = plan_host(entry, resolved, clusters, failures)
            if vhost is not None:
                old = old_hosts.get(vhost.host)
                vhost = old if old == vhost else vhost
            host = (ports, vhost, tuple(clusters.needs.values()))
        hosts[entry] = host
        if host[1] is not None:
            vhosts.append(host[1])
        for need in host[2]:
            needs.setdefault(need.name, need)
    ordered = tuple(needs[name] for name in sorted(needs))
    return tuple(vhosts), ordered, hosts


__all__ = [
    "Choices",
    "PlanMemo",
    "backend_key",
    "backend_protocol",
    "entry_cluster_name",
    "failed_text",
    "plan",
    "plan_host",
    "unreachable_text",
]
