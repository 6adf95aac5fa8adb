"""The objects `localmesh mesh` creates, checked against the official client's models
(a misspelt field is dropped by the model round trip, so the comparison catches it)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client as k8s_client

from localmesh.clustermesh import manifests as m
from localmesh.kube.targets import PortNotFound

SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "billing-api", "namespace": "billing", "resourceVersion": "7"},
    "spec": {
        "selector": {"app": "billing-api"},
        "clusterIP": "10.0.0.7",
        "ports": [
            {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
            {"name": "admin", "port": 9000, "targetPort": 9001, "protocol": "TCP"},
        ],
    },
}
POD: dict[str, Any] = {
    "metadata": {"name": "billing-api-1", "labels": {"app": "billing-api"}},
    "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8081}]}]},
}


def round_trip(obj: dict[str, Any], model: str) -> Any:
    api: Any = k8s_client.ApiClient()
    typed = api._ApiClient__deserialize(copy.deepcopy(obj), model)
    return api.sanitize_for_serialization(typed)


LEASE: dict[str, Any] = {
    "apiVersion": "coordination.k8s.io/v1",
    "kind": "Lease",
    "metadata": {"name": "billing-api-localmesh-dev-a1b2c3", "uid": "u-1"},
}


@pytest.mark.parametrize(
    ("build", "model"),
    [
        (lambda: m.origin_service(SERVICE), "V1Service"),
        (
            lambda: m.router_deployment(
                "billing", "billing-api", "img:1", m.router_ports(SERVICE, [POD])
            ),
            "V1Deployment",
        ),
        (lambda: m.router_rbac("billing", "billing-api")[0], "V1ServiceAccount"),
        (lambda: m.router_rbac("billing", "billing-api")[1], "V1Role"),
        (lambda: m.router_rbac("billing", "billing-api", ["s1"])[1], "V1Role"),
        (lambda: m.owned_by(m.router_rbac("billing", "b")[0], LEASE), "V1ServiceAccount"),
        (lambda: m.router_rbac("billing", "billing-api")[2], "V1RoleBinding"),
        (lambda: m.shadow_pod(spec()), "V1Pod"),
        (lambda: m.shadow_pod(spec(), LEASE), "V1Pod"),
        (lambda: m.tunnel_secret(spec(), b"\x01\x02"), "V1Secret"),
        (lambda: m.tunnel_secret(spec(), b"\x01", LEASE), "V1Secret"),
    ],
)
def test_objects_survive_the_client_models(build: Any, model: str) -> None:
    obj = build()
    assert round_trip(obj, model) == obj


def spec(**overrides: Any) -> m.SessionSpec:
    values: dict[str, Any] = {
        "namespace": "billing",
        "service": "billing-api",
        "session_id": "a1b2c3",
        "header": "version",
        "value": "dev",
        "slug": "dev",
        "holder": "ana@laptop",
        "ports": (m.PortMap(9090, 8080, 8081),),
        "image": "img:1",
    }
    values.update(overrides)
    return m.SessionSpec(**values)


def test_lease_carries_the_mark_and_liveness() -> None:
    now = datetime(2026, 12, 3, 7, 0, 0, 123456, tzinfo=UTC)
    lease = m.session_lease(spec(), now)
    typed = round_trip(lease, "V1Lease")
    # The model turns MicroTime into a datetime; everything else must survive unchanged.
    assert {k: v for k, v in typed["spec"].items() if not k.endswith("Time")} == {
        "holderIdentity": "ana@laptop",
        "leaseDurationSeconds": m.LEASE_DURATION_SECONDS,
    }
    assert typed["metadata"] == lease["metadata"]
    assert lease["spec"]["renewTime"] == "2026-12-03T07:00:00.123456Z"
    assert lease["metadata"]["name"] == "billing-api-localmesh-dev-a1b2c3"
    notes = lease["metadata"]["annotations"]
    assert notes[m.HEADER_ANNOTATION] == "version"
    assert notes[m.VALUE_ANNOTATION] == "dev"
    assert notes[m.SHADOW_ANNOTATION] == lease["metadata"]["name"]
    assert m.parse_port_maps(notes[m.PORTS_ANNOTATION]) == [m.PortMap(9090, 8080, 8081)]
    assert lease["metadata"]["labels"] == {
        m.MANAGED_BY_LABEL: "localmesh",
        m.SERVICE_LABEL: "billing-api",
        m.COMPONENT_LABEL: "session",
    }


def test_origin_keeps_the_original_selector_and_ports() -> None:
    origin = m.origin_service(SERVICE)
    assert origin["metadata"]["name"] == "billing-api-localmesh-origin"
    assert origin["spec"]["selector"] == {"app": "billing-api"}
    assert origin["spec"]["ports"] == SERVICE["spec"]["ports"]
    assert "clusterIP" not in origin["spec"]
    # Once meshed, the Service's own selector is the router's: the recorded one wins.
    meshed = copy.deepcopy(SERVICE)
    meshed["spec"]["selector"] = m.router_selector("billing-api")
    meshed["metadata"]["annotations"] = {
        m.ORIGINAL_SELECTOR_ANNOTATION: json.dumps({"app": "billing-api"})
    }
    assert m.origin_service(meshed)["spec"]["selector"] == {"app": "billing-api"}


def test_router_listens_on_the_services_target_ports() -> None:
    ports = m.router_ports(SERVICE, [POD])
    assert ports == [m.RouterPort(8081, "http"), m.RouterPort(9001, None)]
    deployment = m.router_deployment("billing", "billing-api", "img:1", ports)
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["ports"][:2] == [
        {"name": "http", "containerPort": 8081, "protocol": "TCP"},
        {"containerPort": 9001, "protocol": "TCP"},
    ]
    assert container["command"] == [
        "localmesh",
        "agent",
        "router",
        "--namespace",
        "billing",
        "--service",
        "billing-api",
        "--health-port",
        str(m.ROUTER_HEALTH_PORT),
    ]
    assert container["readinessProbe"]["httpGet"]["port"] == m.ROUTER_HEALTH_PORT
    assert pod["metadata"]["labels"] == m.router_selector("billing-api")
    assert deployment["spec"]["selector"]["matchLabels"] == m.router_selector("billing-api")
    assert pod["spec"]["serviceAccountName"] == "billing-api-localmesh-router"
    assert "sysctls" not in pod["spec"]["securityContext"]


def test_router_health_port_and_low_ports() -> None:
    service = copy.deepcopy(SERVICE)
    service["spec"]["ports"] = [
        {"port": 80, "targetPort": 80, "protocol": "TCP"},
        {"port": 81, "targetPort": m.ROUTER_HEALTH_PORT, "protocol": "TCP"},
    ]
    ports = m.router_ports(service, [])
    deployment = m.router_deployment("ns", "web", "img", ports)
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["command"][-1] == str(m.ROUTER_HEALTH_PORT + 1)
    assert pod_spec["securityContext"]["sysctls"][0]["name"] == (
        "net.ipv4.ip_unprivileged_port_start"
    )


def test_unresolvable_or_udp_ports_are_refused() -> None:
    with pytest.raises(m.PortError, match="no pod of the service has a container port named"):
        m.router_ports(SERVICE, [])
    udp = copy.deepcopy(SERVICE)
    udp["spec"]["ports"].append({"name": "dns", "port": 53, "protocol": "UDP"})
    with pytest.raises(m.PortError, match="is UDP"):
        m.router_ports(udp, [POD])


def test_exposed_ports_must_be_service_ports() -> None:
    assert m.port_maps(SERVICE, [(9090, 8080), (9000, 9000)], [POD]) == [
        m.PortMap(9090, 8080, 8081),
        m.PortMap(9000, 9000, 9001),
    ]
    with pytest.raises(PortNotFound) as info:
        m.port_maps(SERVICE, [(9090, 8081)], [POD])
    assert info.value.available == ["http:8080->http", "admin:9000->9001"]


def test_router_role_names_its_objects() -> None:
    _, role, binding = m.router_rbac("billing", "billing-api")
    writes = [r for r in role["rules"] if {"update", "patch", "delete"} & set(r["verbs"])]
    assert writes and all(r.get("resourceNames") for r in writes)
    services = next(r for r in role["rules"] if "update" in r["verbs"])
    assert services["resourceNames"] == ["billing-api", "billing-api-localmesh-origin"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "billing-api-localmesh-router", "namespace": "billing"}
    ]


def test_router_may_delete_only_the_leases_of_sessions_that_joined() -> None:
    assert m.role_sessions(m.router_rbac("billing", "billing-api")[1]) == []
    first = m.router_rbac("billing", "billing-api", ["s1"])[1]
    rule = next(
        r for r in first["rules"] if r["verbs"] == ["delete"] and "leases" in r["resources"]
    )
    assert rule["resourceNames"] == ["s1"]  # never empty: that would be every Lease
    second = m.router_rbac("billing", "billing-api", ["s2"])[1]
    merged = m.with_session_leases(first, second, {"s1", "s2"})
    assert m.role_sessions(merged) == ["s1", "s2"]
    assert m.with_session_leases(merged, second, {"s1", "s2"}) == merged
    # A name whose Lease is gone (its session ended) is dropped; the joiner's own stays.
    third = m.router_rbac("billing", "billing-api", ["s3"])[1]
    assert m.role_sessions(m.with_session_leases(merged, third, {"s2", "s3"})) == ["s2", "s3"]
    # Nothing else of the router's is deletable by it but the origin Service.
    deletes = [r for r in merged["rules"] if "delete" in r["verbs"]]
    assert [(r["resources"], r["resourceNames"]) for r in deletes] == [
        (["services"], ["billing-api-localmesh-origin"]),
        (["leases"], ["s1", "s2"]),
    ]


def test_session_objects_are_owned_by_the_lease_and_the_shadow_has_no_token() -> None:
    owner = [
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "name": LEASE["metadata"]["name"],
            "uid": "u-1",
        }
    ]
    pod = m.shadow_pod(spec(), LEASE)
    assert pod["metadata"]["ownerReferences"] == owner
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert m.tunnel_secret(spec(), b"\x01", LEASE)["metadata"]["ownerReferences"] == owner
    assert "ownerReferences" not in m.shadow_pod(spec())["metadata"]


def test_shadow_pod_never_matches_the_service_selector() -> None:
    pod = m.shadow_pod(spec(ports=(m.PortMap(9090, 8080, 8081), m.PortMap(9091, 8082, 8081))))
    labels = pod["metadata"]["labels"]
    assert not set(SERVICE["spec"]["selector"].items()) <= set(labels.items())
    assert labels[m.SESSION_LABEL] == pod["metadata"]["name"]
    container = pod["spec"]["containers"][0]
    assert container["ports"][0] == {"containerPort": 8081, "protocol": "TCP"}
    assert [p["containerPort"] for p in container["ports"]] == [8081, 15390, 15021]
    assert container["command"] == [
        "localmesh",
        "agent",
        "shadow",
        "--ports",
        "8081",
        "--health-port",
        "15021",
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 15021}


def test_names_stay_within_limits_and_distinct() -> None:
    long_a = "a" * 60 + "-one"
    long_b = "a" * 60 + "-two"
    assert len(m.origin_name(long_a)) <= 63
    assert m.origin_name(long_a) != m.origin_name(long_b)
    assert m.session_name("svc", "0-0-1-abcdef", "x1") == "svc-localmesh-0-0-1-abcdef-x1"
    assert len(m.session_name("s" * 63, "v" * 40, "x1")) <= 63


def test_router_idle_timeout_is_passed_to_the_agent() -> None:
    deployment = m.router_deployment("ns", "web", "img", [], idle_timeout=2.5)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["--idle-timeout", "2.5"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    plain = m.router_deployment("ns", "web", "img", [])["spec"]["template"]["spec"]
    assert "--idle-timeout" not in plain["containers"][0]["command"]


def test_shadow_gets_its_secret_and_pod_ip() -> None:
    pod = m.shadow_pod(spec())
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    ref = env["LOCALMESH_TUNNEL_SECRET"]["valueFrom"]["secretKeyRef"]
    secret = m.tunnel_secret(spec(), b"\xab")
    assert ref == {"name": secret["metadata"]["name"], "key": "secret"}
    assert secret["data"] == {"secret": "YWI="}  # base64 of the hex text
