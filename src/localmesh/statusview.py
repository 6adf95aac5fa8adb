"""The status builder: what `localmesh status` shows, assembled from the running parts.

    await build_status(StatusSources(...)) -> InstanceStatus

Local targets are checked, not assumed: each distinct local address gets one connection
attempt (concurrently, bounded by LOCAL_PROBE_TIMEOUT) every time status is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from localmesh.apply_config import Backends
from localmesh.config import Config, LocalAddress, ServiceEntry, ServiceRef, route_backend
from localmesh.control import (
    HostStatus,
    PodStatus,
    RouteStatus,
    XdsTypeStatus,
)
from localmesh.desired import local_cluster_name
from localmesh.envoy import ClusterTraffic
from localmesh.forward import ForwardManager
from localmesh.plan import backend_protocol, entry_cluster_name
from localmesh.recent import Recent
from localmesh.xds.cache import SnapshotCache

LOCAL_PROBE_TIMEOUT = 1.0


async def accepts_connections(address: LocalAddress) -> bool:
    """Whether something accepts a connection on `address` right now."""
    try:
        async with asyncio.timeout(LOCAL_PROBE_TIMEOUT):
            if address.unix:
                _, writer = await asyncio.open_unix_connection(address.address)
            else:
                _, writer = await asyncio.open_connection(address.address, address.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()
    return True


def local_addresses(config: Config) -> list[LocalAddress]:
    found: dict[LocalAddress, None] = {}
    for entry in config.services:
        if entry.local is not None:
            found[entry.local] = None
        for route in entry.routes:
            if isinstance(route.target, LocalAddress):
                found[route.target] = None
    return list(found)


async def probe_all(addresses: Sequence[LocalAddress]) -> dict[LocalAddress, bool]:
    results = await asyncio.gather(*(accepts_connections(a) for a in addresses))
    return dict(zip(addresses, results, strict=True))


def xds_status(cache: SnapshotCache) -> tuple[XdsTypeStatus, ...]:
    found: list[XdsTypeStatus] = []
    for stream in cache.status():
        snapshot = cache.snapshot_for(stream.node_id)
        for t in stream.types:
            found.append(
                XdsTypeStatus(
                    type_url=t.type_url,
                    served_version=snapshot.type_version(t.type_url),
                    acked_version=t.acked_version,
                    nack=t.last_error or "",
                )
            )
    return tuple(found)


@dataclass(frozen=True)
class HostSources:
    backends: Backends
    manager: ForwardManager | None
    traffic: Mapping[str, ClusterTraffic]
    listening: Mapping[LocalAddress, bool]
    recent: Mapping[str, Recent]  # per cluster, over the instance's recent window


def _pods(sources: HostSources, backend: ServiceEntry) -> tuple[tuple[PodStatus, ...], int]:
    state = sources.backends.state(backend)
    if state is None or state.key is None or sources.manager is None:
        return (), 0
    service = sources.manager.services.get(state.key)
    pods: list[PodStatus] = []
    target_port = 0
    for target, forwarder in sorted((service.forwarders if service else {}).items()):
        address, port = forwarder.address
        target_port = target.port
        pods.append(
            PodStatus(
                name=target.pod,
                local_address=address,
                local_port=port,
                state=forwarder.state,
                active_connections=forwarder.stats.active,
                last_error=forwarder.stats.last_error or "",
            )
        )
    return tuple(pods), target_port


def _route_status(sources: HostSources, entry: ServiceEntry) -> tuple[RouteStatus, ...]:
    found = []
    for route in entry.routes:
        match = route.describe_match()
        if isinstance(route.target, LocalAddress):
            found.append(
                RouteStatus(
                    match=match,
                    target=f"local {route.target}",
                    cluster=local_cluster_name(
                        route.target.address, route.target.port, route.protocol
                    ),
                    local=True,
                    listening=sources.listening.get(route.target, False),
                )
            )
            continue
        assert isinstance(route.target, ServiceRef)
        state = sources.backends.state(route_backend(entry, route))
        key = state.key if state is not None else None
        found.append(
            RouteStatus(
                match=match,
                target=str(route.target),
                cluster=_cluster(sources, route_backend(entry, route), key.port) if key else "",
                error=state.error if state is not None else "",
            )
        )
    return tuple(found)


def _with_recent(sources: HostSources, host: HostStatus) -> HostStatus:
    recent = sources.recent.get(host.cluster)
    if recent is None:
        return host
    return replace(host, recent_requests=recent.requests, recent_failures=recent.failures)


def _cluster(sources: HostSources, backend: ServiceEntry, port: int) -> str:
    return entry_cluster_name(backend, port, sources.backends.choices())


def host_status(sources: HostSources, entry: ServiceEntry) -> HostStatus:
    return _with_recent(sources, _host_status(sources, entry))


def _host_status(sources: HostSources, entry: ServiceEntry) -> HostStatus:
    routes = _route_status(sources, entry)
    if entry.local is not None:
        cluster = local_cluster_name(entry.local.address, entry.local.port, entry.protocol)
        counts = sources.traffic.get(cluster)
        return HostStatus(
            host=entry.host,
            namespace="",
            service="",
            port="",
            type=entry.protocol.value,
            cluster=cluster,
            requests=counts.requests if counts else 0,
            errors=(counts.responses_5xx + counts.connect_failures) if counts else 0,
            local=str(entry.local),
            local_listening=sources.listening.get(entry.local, False),
            routes=routes,
        )
    backend = entry.backends()[0]
    state = sources.backends.state(backend)
    key = state.key if state is not None else None
    cluster = _cluster(sources, backend, key.port) if key is not None else ""
    pods, target_port = _pods(sources, backend)
    counts = sources.traffic.get(cluster)
    return HostStatus(
        host=entry.host,
        namespace=entry.namespace,
        service=entry.service,
        port=entry.port_ref,
        type=backend_protocol(backend, sources.backends.choices()).describe()
        if backend.inferred
        else entry.protocol.value,
        cluster=cluster,
        target_port=target_port,
        pods=pods,
        last_reconnect=state.last_reconnect if state else None,
        last_reconnect_reason=state.last_reconnect_reason if state else "",
        requests=counts.requests if counts else 0,
        errors=(counts.responses_5xx + counts.connect_failures) if counts else 0,
        error=state.error if state else "",
        routes=routes,
    )


async def hosts_status(
    backends: Backends,
    manager: ForwardManager | None,
    traffic: Mapping[str, ClusterTraffic],
    recent: Mapping[str, Recent] | None = None,
) -> tuple[HostStatus, ...]:
    config = backends.config
    listening = await probe_all(local_addresses(config))
    sources = HostSources(backends, manager, traffic, listening, recent or {})
    return tuple(host_status(sources, entry) for entry in config.services)


__all__ = [
    "accepts_connections",
    "host_status",
    "hosts_status",
    "local_addresses",
    "probe_all",
    "xds_status",
]
