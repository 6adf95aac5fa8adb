"""`localmesh init`'s rules: Services (raw JSON) -> services.yaml entries, and the text
written, which the project's own loader must accept."""

from __future__ import annotations

from typing import Any

import yaml

from localmesh.config import parse_config
from localmesh.desired import Protocol
from localmesh.services_init import PlannedEntry, plan_entries, render


def service(
    namespace: str,
    name: str,
    ports: list[dict[str, Any]],
    *,
    selector: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {
            "selector": {"app": name} if selector is None else selector,
            "clusterIP": "10.0.0.1",
            "ports": ports,
            **spec,
        },
    }


HTTP = [{"name": "http", "port": 8080, "targetPort": 8080}]


def hosts(entries: tuple[PlannedEntry, ...]) -> list[str]:
    return [e.host for e in entries]


def test_single_port_services_need_no_port_and_get_service_dot_localhost() -> None:
    plan = plan_entries([service("billing", "billing-api", HTTP)], ["billing"])
    (entry,) = plan.entries
    assert (entry.host, entry.port_name, entry.port, entry.type) == (
        "billing-api.localhost",
        None,
        None,
        None,
    )


def test_a_name_in_several_namespaces_gets_the_namespace_in_both_hosts() -> None:
    plan = plan_entries(
        [
            service("users", "api", HTTP),
            service("billing", "api", HTTP),
            service("billing", "ledger", HTTP),
        ],
        ["billing", "users"],
    )
    assert hosts(plan.entries) == [
        "api.billing.localhost",
        "ledger.localhost",
        "api.users.localhost",
    ]


def test_several_ports_are_named_and_typed_where_the_port_says_so() -> None:
    ports = [
        {"name": "grpc", "port": 50051},
        {"name": "web", "port": 8080, "appProtocol": "http"},
        {"name": "metrics", "port": 9090},
        {"name": "rpc", "port": 7000, "appProtocol": "kubernetes.io/h2c"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
    ]
    plan = plan_entries([service("users", "users-api", ports)], ["users"])
    got = [(e.host, e.port_name, e.type) for e in plan.entries]
    assert got == [
        ("users-api.localhost", "grpc", Protocol.GRPC.value),
        ("web.users-api.localhost", "web", Protocol.HTTP.value),
        ("metrics.users-api.localhost", "metrics", None),
        ("rpc.users-api.localhost", "rpc", Protocol.GRPC.value),
    ]
    assert [(s.service, s.why) for s in plan.skipped] == [("users-api", "port dns: UDP")]


def test_services_without_a_forwardable_port_are_skipped_saying_why() -> None:
    plan = plan_entries(
        [
            service("db", "pg", [{"port": 5432}], clusterIP="None"),
            service("db", "legacy", [{"port": 80}], selector={}),
            service("db", "ext", [], type="ExternalName", externalName="db.example.com"),
            service("db", "main", [{"port": 5432}]),
        ],
        ["db"],
    )
    assert hosts(plan.entries) == ["main.localhost"]
    why = {s.service: s.why for s in plan.skipped}
    assert why["pg"].startswith("headless")
    assert why["legacy"].startswith("no selector")
    assert why["ext"].startswith("ExternalName (db.example.com)")


def test_the_text_loads_with_the_projects_loader_and_keeps_comments() -> None:
    services = [
        service("billing", "billing-api", HTTP),
        service("users", "users-api", [{"name": "grpc", "port": 50051}, *HTTP]),
        service("users", "billing-api", HTTP),
        service("users", "ghost", [{"port": 80}], clusterIP="None"),
    ]
    namespaces = ["billing", "users", "empty"]
    text = render(plan_entries(services, namespaces), namespaces, ["made by a test"], 8080)
    assert text.startswith("# made by a test\n")
    assert "  # skipped ghost: headless" in text
    assert "  # namespace empty\n  # no Services\n" in text
    config = parse_config(text)
    assert config.listener_port == 8080
    got = {(e.host, e.namespace, e.service, e.port_name) for e in config.services}
    assert got == {
        ("billing-api.billing.localhost", "billing", "billing-api", None),
        ("users-api.localhost", "users", "users-api", "grpc"),
        ("http.users-api.localhost", "users", "users-api", "http"),
        ("billing-api.users.localhost", "users", "billing-api", None),
    }
    grpc = next(e for e in config.services if e.host == "users-api.localhost")
    assert grpc.protocol is Protocol.GRPC and not grpc.inferred


def test_no_services_is_still_a_valid_file() -> None:
    text = render(plan_entries([], ["quiet"]), ["quiet"], ["header"], 80)
    assert yaml.safe_load(text) == {"listener_port": 80, "services": []}
    assert parse_config(text).services == ()
