"""Without `type`, the Service port picks the upstream protocol; `type` always wins."""

from __future__ import annotations

import pytest

from localmesh.config import parse_config, parse_mocks
from localmesh.desired import Protocol
from localmesh.plan import plan
from localmesh.protocol_choice import CLIENTS, ProtocolChoice, choose_protocol
from localmesh.resolve import MockResolver, resolve_all


@pytest.mark.parametrize(
    ("name", "app", "protocol", "reason"),
    [
        ("web", "grpc", Protocol.GRPC, "appProtocol grpc"),
        ("web", "h2c", Protocol.GRPC, "appProtocol h2c"),
        ("web", "kubernetes.io/h2c", Protocol.GRPC, "appProtocol kubernetes.io/h2c"),
        ("grpc", "http", Protocol.HTTP, "appProtocol http"),  # appProtocol before the name
        ("grpc", None, Protocol.GRPC, "port name grpc"),
        ("grpc-api", None, Protocol.GRPC, "port name grpc-api"),
        ("h2c", None, Protocol.GRPC, "port name h2c"),
        ("http2", None, Protocol.GRPC, "port name http2"),
        ("grpcish", None, Protocol.DOWNSTREAM, CLIENTS),
        ("http", None, Protocol.DOWNSTREAM, CLIENTS),
        ("", "kubernetes.io/ws", Protocol.DOWNSTREAM, CLIENTS),
    ],
)
def test_choice_from_the_service_port(
    name: str, app: str | None, protocol: Protocol, reason: str
) -> None:
    assert choose_protocol(name, app) == ProtocolChoice(protocol, reason)


SERVICES = """\
services:
  - host: a.localhost
    namespace: ns
    service: a
    port_name: grpc-api
  - host: b.localhost
    namespace: ns
    service: b
    port: 8080
  - host: c.localhost
    namespace: ns
    service: c
    port_name: grpc
    type: http
"""

MOCKS = """\
mocks:
  - {namespace: ns, service: a, port_name: grpc-api, resolved_port: 50051}
  - {namespace: ns, service: b, resolved_port: 8080}
  - {namespace: ns, service: c, port_name: grpc, resolved_port: 9090}
"""


def test_the_plan_follows_the_choice_and_says_why_offline() -> None:
    config = parse_config(SERVICES)
    assert [e.inferred for e in config.services] == [True, True, False]
    resolver = MockResolver(parse_mocks(MOCKS))
    state = plan(config, resolve_all(config, resolver), {}, "127.0.0.1", choices=resolver.choices)
    clusters = {c.name: (c.protocol, c.why) for c in state.clusters}
    assert clusters == {
        "grpc.ns.a.50051": (Protocol.GRPC, "port name grpc-api; assumed offline: no appProtocol"),
        "downstream.ns.b.8080": (
            Protocol.DOWNSTREAM,
            f"{CLIENTS}; assumed offline: no appProtocol",
        ),
        "http.ns.c.9090": (Protocol.HTTP, ""),  # an explicit type wins, and needs no reason
    }
    streams = {v.host: v.routes[-1].streams for v in state.virtual_hosts}
    assert streams == {"a.localhost": True, "b.localhost": False, "c.localhost": False}


def test_a_choice_from_the_cluster_wins_over_the_port_name() -> None:
    config = parse_config(SERVICES)
    a = config.services[0]
    ports = {e: 1000 + i for i, e in enumerate(config.backends())}
    chosen = {a: ProtocolChoice(Protocol.HTTP, "appProtocol http")}
    state = plan(config, ports, {}, "127.0.0.1", choices=chosen)
    assert ("http.ns.a.1000", "appProtocol http") in {(c.name, c.why) for c in state.clusters}
