"""Port resolution: which Service port number each services.yaml entry targets.

A `PortResolver` turns a `ServiceEntry` (which names its port by name or by number) into the
Service's port number. `MockResolver` answers from mocks.yaml, offline; the cluster-backed
resolver in localmesh.kube implements the same protocol. `mesh_spec_from_config` then builds
the desired `MeshSpec` from the config, the resolved ports and the live endpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from localmesh.config import Config, MockConfig, MockEntry, ServiceEntry
from localmesh.errors import TargetError
from localmesh.mesh import ClusterSpec, Endpoint, MeshSpec, VirtualHostSpec, cluster_name


class PortResolver(Protocol):
    def resolve(self, entry: ServiceEntry) -> int:
        """The Service port number `entry` targets; raises TargetError naming the entry."""
        ...


class MockResolver:
    """Resolves from mocks.yaml: match on namespace, service and port_name.

    A mock with port_name "" matches entries that give `port` (a number) instead of
    `port_name`; its `resolved_port` is the answer for them too.
    """

    def __init__(self, mocks: MockConfig) -> None:
        self._mocks = mocks
        self._by_key: dict[tuple[str, str, str], MockEntry] = {}
        for mock in mocks.mocks:
            self._by_key.setdefault((mock.namespace, mock.service, mock.port_name), mock)

    def resolve(self, entry: ServiceEntry) -> int:
        key = (entry.namespace, entry.service, entry.port_name or "")
        mock = self._by_key.get(key)
        if mock is None:
            raise TargetError(self._missing(entry))
        return mock.resolved_port

    def _missing(self, entry: ServiceEntry) -> str:
        where = f" ({entry.location})" if entry.location else ""
        source = str(self._mocks.source) if self._mocks.source else "the mock config"
        want = f"port_name: {entry.port_name}" if entry.port_name else 'port_name: ""'
        return (
            f"no mock for {entry.describe()}{where} in {source}: add an entry with "
            f"namespace: {entry.namespace}, service: {entry.service}, {want}"
        )


def resolve_all(config: Config, resolver: PortResolver) -> dict[ServiceEntry, int]:
    """Every entry's port; all failures are reported together in one TargetError."""
    ports: dict[ServiceEntry, int] = {}
    problems: list[str] = []
    for entry in config.services:
        try:
            ports[entry] = resolver.resolve(entry)
        except TargetError as exc:
            problems.append(str(exc))
    if problems:
        raise TargetError("\n".join(problems))
    return ports


def entry_cluster_name(entry: ServiceEntry, resolved_port: int) -> str:
    """The Envoy cluster of an entry: one per Service port and protocol, shared by hosts."""
    return cluster_name(entry.namespace, entry.service, resolved_port, entry.protocol)


def mesh_spec_from_config(
    config: Config,
    resolved_ports: Mapping[ServiceEntry, int],
    endpoints_by_cluster: Mapping[str, Sequence[Endpoint]],
    listener_address: str,
) -> MeshSpec:
    """The desired mesh: one virtual host per entry, one cluster per distinct Service port.

    Entries missing from `resolved_ports` (not resolved yet) are left out; a cluster without
    an entry in `endpoints_by_cluster` has no endpoints (yet). Virtual hosts keep the file's
    order; clusters are sorted by name, endpoints sorted, so equal inputs give equal specs.
    """
    clusters: dict[str, ClusterSpec] = {}
    vhosts: list[VirtualHostSpec] = []
    for entry in config.services:
        port = resolved_ports.get(entry)
        if port is None:
            continue
        name = entry_cluster_name(entry, port)
        if name not in clusters:
            endpoints = tuple(sorted(endpoints_by_cluster.get(name, ())))
            clusters[name] = ClusterSpec(name=name, protocol=entry.protocol, endpoints=endpoints)
        vhosts.append(VirtualHostSpec(host=entry.host, cluster=name, protocol=entry.protocol))
    return MeshSpec(
        listener_address=listener_address,
        listener_port=config.listener_port,
        clusters=tuple(clusters[name] for name in sorted(clusters)),
        virtual_hosts=tuple(vhosts),
    )
