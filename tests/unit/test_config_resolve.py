"""From config and resolved ports to the desired DesiredState."""

from __future__ import annotations

from localmesh.config import ServiceEntry, parse_config
from localmesh.desired import ClusterSpec, DesiredState, Endpoint, Protocol, VirtualHostSpec
from localmesh.plan import entry_cluster_name, plan
from localmesh.resolve import PortResolver

CONFIG = parse_config(
    """\
listener_port: 8080
services:
  - {host: users-api.localhost, namespace: users, service: users-api, port_name: grpc, type: grpc}
  - {host: billing-api.localhost, namespace: billing, service: billing-api, port_name: http,
     type: http}
  - {host: billing.localhost, namespace: billing, service: billing-api, port_name: http, type: http}
  - {host: admin.localhost, namespace: admin, service: admin-web, port: 8080, type: http}
"""
)
USERS, BILLING, BILLING2, ADMIN = CONFIG.services
PORTS = {USERS: 50051, BILLING: 8080, BILLING2: 8080, ADMIN: 80}


class FixedResolver:
    """A PortResolver answering from a dict (structural typing: no base class)."""

    def __init__(self, ports: dict[ServiceEntry, int]) -> None:
        self.ports = ports

    def resolve(self, entry: ServiceEntry) -> int:
        return self.ports[entry]


def test_fixed_resolver_satisfies_the_protocol() -> None:
    resolver: PortResolver = FixedResolver(PORTS)
    assert resolver.resolve(USERS) == 50051


def test_mesh_spec_shares_one_cluster_per_service_port() -> None:
    endpoints = {
        "billing/billing-api:8080": [
            Endpoint("127.0.0.1", 4002, "b-2"),
            Endpoint("127.0.0.1", 4001, "b-1"),
        ],
        "unrelated": [Endpoint("127.0.0.1", 1)],
    }
    mesh = plan(CONFIG, PORTS, endpoints, "127.0.0.1")
    assert mesh == DesiredState.serving(
        listener_address="127.0.0.1",
        listener_port=8080,
        clusters=(
            ClusterSpec("grpc.users.users-api.50051", Protocol.GRPC),
            ClusterSpec("http.admin.admin-web.80", Protocol.HTTP),
            ClusterSpec(
                "http.billing.billing-api.8080",
                Protocol.HTTP,
                (Endpoint("127.0.0.1", 4001, "b-1"), Endpoint("127.0.0.1", 4002, "b-2")),
            ),
        ),
        virtual_hosts=(
            VirtualHostSpec.to_cluster(
                "users-api.localhost", "grpc.users.users-api.50051", Protocol.GRPC
            ),
            VirtualHostSpec.to_cluster(
                "billing-api.localhost", "http.billing.billing-api.8080", Protocol.HTTP
            ),
            VirtualHostSpec.to_cluster(
                "billing.localhost", "http.billing.billing-api.8080", Protocol.HTTP
            ),
            VirtualHostSpec.to_cluster("admin.localhost", "http.admin.admin-web.80", Protocol.HTTP),
        ),
    )


def test_unresolved_entries_are_left_out() -> None:
    mesh = plan(CONFIG, {ADMIN: 80}, {}, "0.0.0.0")
    assert [v.host for v in mesh.virtual_hosts] == ["admin.localhost"]
    assert [c.name for c in mesh.clusters] == ["http.admin.admin-web.80"]
    assert mesh.listener_address == "0.0.0.0"


def test_cluster_name_uses_the_resolved_port_and_protocol() -> None:
    assert entry_cluster_name(USERS, 50051) == "grpc.users.users-api.50051"
    assert entry_cluster_name(ADMIN, 80) == "http.admin.admin-web.80"


def test_equal_inputs_give_equal_specs() -> None:
    again = parse_config(
        "\n"
        + "listener_port: 8080\nservices:\n"
        + "".join(
            f"  - {{host: {e.host}, namespace: {e.namespace}, service: {e.service}, "
            + (f"port_name: {e.port_name}" if e.port_name else f"port: {e.port}")
            + f", type: {e.protocol.value}}}\n"
            for e in CONFIG.services
        )
    )
    ports = {
        entry: PORTS[original]
        for entry, original in zip(again.services, CONFIG.services, strict=True)
    }
    assert plan(again, ports, {}, "127.0.0.1") == plan(CONFIG, PORTS, {}, "127.0.0.1")
