"""Port resolution: which Service port number each services.yaml entry targets.

A `PortResolver` turns a `ServiceEntry` (which names its port by name or by number) into the
Service's port number. `MockResolver` answers from mocks.yaml, offline; the cluster-backed
resolver in localmesh.kube implements the same protocol. `localmesh.plan` then builds the
desired state from the config, the resolved ports and the live endpoints.
"""

from __future__ import annotations

from typing import Protocol

from localmesh.config import Config, MockConfig, MockEntry, ServiceEntry
from localmesh.errors import TargetError
from localmesh.protocol_choice import ProtocolChoice, choose_offline


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
        # mocks.yaml knows no appProtocol: entries without `type` go by their port name.
        self.choices: dict[ServiceEntry, ProtocolChoice] = {}
        for mock in mocks.mocks:
            self._by_key.setdefault((mock.namespace, mock.service, mock.port_name), mock)

    def resolve(self, entry: ServiceEntry) -> int:
        key = (entry.namespace, entry.service, entry.port_name or "")
        mock = self._by_key.get(key)
        if mock is None:
            raise TargetError(self._missing(entry))
        if entry.inferred:
            self.choices[entry] = choose_offline(entry.port_name)
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
    """The port of every forwarded Service port (`config.backends()`: entries and route
    targets); all failures are reported together in one TargetError."""
    ports: dict[ServiceEntry, int] = {}
    problems: list[str] = []
    for entry in config.backends():
        try:
            ports[entry] = resolver.resolve(entry)
        except TargetError as exc:
            problems.append(str(exc))
    if problems:
        raise TargetError("\n".join(problems))
    return ports
