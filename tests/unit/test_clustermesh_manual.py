"""Manual mode's objects and rules, without a cluster. The Istio rules are checked against
Istio's own typed models (cloudcoil-models-istio, generated from Istio's CRD schemas): a
rule that does not validate, or loses a field in the round trip (a misspelt or misplaced
field), fails. The Gateway API HTTPRoute is checked against the schema of its CRD, pinned
in tests/unit/schemas (the file says where it came from), with unknown fields refused as
`kubectl apply --validate=strict` refuses them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs
import pytest
import yaml
from cloudcoil.models.istio.networking.v1 import DestinationRule, VirtualService

from localmesh.cli.main import build_parser
from localmesh.cli.mesh_manual import manual_args, rules_yaml
from localmesh.clustermesh import manifests as m, manual_rules as rules
from localmesh.clustermesh.manual import (
    APPLIED_ANNOTATION,
    ManualJoined,
    applied_rules,
    manual_shadow_pod,
    mark_label,
    shadow_labels,
    shadow_service,
)
from localmesh.clustermesh.marks import parse_version_mark
from localmesh.clustermesh.membership import MeshError
from localmesh.clustermesh.session import Joined
from localmesh.errors import ConfigError

SELECTOR = {"app": "billing-api"}


def pod(labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "p", "labels": labels}}


def service(*ports: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "billing-api", "namespace": "billing"},
        "spec": {"selector": SELECTOR, "ports": list(ports)},
    }


def istio_round_trip(obj: dict[str, Any]) -> None:
    models: dict[str, Any] = {"DestinationRule": DestinationRule, "VirtualService": VirtualService}
    parsed = models[obj["kind"]].model_validate(obj)
    assert parsed.model_dump(by_alias=True, exclude_none=True, mode="json") == obj


def strict(schema: Any) -> Any:
    """`schema` with unknown fields refused wherever the CRD does not keep them."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    keeps = out.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in out
    if "properties" in out and not keeps:
        out["additionalProperties"] = False
    return out


HTTPROUTE_SCHEMA = strict(
    json.loads((Path(__file__).parent / "schemas" / "httproute-v1.json").read_text())["schema"]
)


def validate_http_route(obj: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(HTTPROUTE_SCHEMA).validate(obj)


def test_the_pinned_schema_refuses_a_misspelt_field() -> None:
    r = rules_input(None, "shadow")
    (route,) = rules.http_routes(r)
    validate_http_route(route)
    route["spec"]["rules"][0]["backendRef"] = route["spec"]["rules"][0].pop("backendRefs")
    with pytest.raises(jsonschema.ValidationError, match="backendRef"):
        validate_http_route(route)


def spec(*ports: tuple[int, int, int]) -> m.SessionSpec:
    return m.SessionSpec(
        namespace="billing",
        service="billing-api",
        session_id="abc123",
        header="version",
        value="dev",
        slug="dev",
        holder="me@here",
        ports=tuple(m.PortMap(*p) for p in ports),
        mode="manual",
    )


def rules_input(
    cluster: rules.ClusterSubset | None, shadow: str | None, ports: tuple[int, ...] = (8080,)
) -> rules.RulesInput:
    return rules.RulesInput(
        namespace="billing",
        service="billing-api",
        header="version",
        value="dev",
        slug="dev",
        mark_labels={"version": "dev"},
        ports=ports,
        http_ports=(8080, 9090),
        cluster=cluster,
        shadow_service=shadow,
    )


def test_rules_validate_against_istio_models_and_use_the_real_ports() -> None:
    cluster = rules.ClusterSubset({"version": "v1"}, None)
    dr, vs = rules.istio_rules(rules_input(cluster, None))
    for obj in (dr, vs):
        istio_round_trip(obj)
        assert obj["metadata"]["namespace"] == "billing"
    assert dr["spec"]["host"] == "billing-api"
    subsets = {s["name"]: s["labels"] for s in dr["spec"]["subsets"]}
    assert subsets == {"cluster": {"version": "v1"}, "localmesh-dev": {"version": "dev"}}
    routes = vs["spec"]["http"]
    assert [r["name"] for r in routes] == ["mark-8080", "default-8080", "default-9090"]
    assert routes[0]["match"] == [{"headers": {"version": {"exact": "dev"}}, "port": 8080}]
    assert routes[0]["route"][0]["destination"]["subset"] == "localmesh-dev"
    assert {r["route"][0]["destination"]["subset"] for r in routes[1:]} == {"cluster"}
    assert [r["route"][0]["destination"]["port"]["number"] for r in routes] == [8080, 8080, 9090]
    misspelt = {**dr, "spec": {**dr["spec"], "subset": dr["spec"]["subsets"]}}
    with pytest.raises(AssertionError):  # the models drop the unknown field
        istio_round_trip(misspelt)


def test_without_selector_labels_marked_requests_go_to_the_shadow_service() -> None:
    (vs,) = rules.istio_rules(rules_input(None, "billing-api-localmesh-dev-abc123"))
    istio_round_trip(vs)
    mark, *defaults = vs["spec"]["http"]
    assert mark["route"][0]["destination"] == {
        "host": "billing-api-localmesh-dev-abc123",
        "port": {"number": 8080},
    }
    assert all("subset" not in r["route"][0]["destination"] for r in defaults)
    (route,) = rules.http_routes(rules_input(None, "billing-api-localmesh-dev-abc123"))
    validate_http_route(route)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [
        {"group": "", "kind": "Service", "name": "billing-api", "port": 8080}
    ]
    marked, default = route["spec"]["rules"]
    assert marked["matches"] == [
        {"headers": [{"type": "Exact", "name": "version", "value": "dev"}]}
    ]
    assert marked["backendRefs"] == [{"name": "billing-api-localmesh-dev-abc123", "port": 8080}]
    assert default == {"backendRefs": [{"name": "billing-api", "port": 8080}]}
    assert rules.http_routes(rules_input(None, None)) == []


def test_http_ports_skip_other_protocols() -> None:
    svc = service(
        {"name": "http", "port": 80},
        {"name": "grpc-api", "port": 50051},
        {"port": 8080},
        {"name": "tcp-db", "port": 5432},
        {"name": "x", "port": 9000, "appProtocol": "kubernetes.io/h2c"},
        {"name": "web", "port": 443, "appProtocol": "https"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
    )
    assert rules.http_ports(svc) == [80, 50051, 8080, 9000]


def test_cluster_subset_prefers_the_marks_key_then_steady_labels() -> None:
    shadow = {**SELECTOR, "version": "dev", m.MANAGED_BY_LABEL: m.MANAGER}
    pods = [
        pod({**SELECTOR, "version": "v1", "tier": "api", "pod-template-hash": "abc"}),
        pod({**SELECTOR, "version": "v1", "tier": "api", "pod-template-hash": "abc"}),
        pod(shadow),  # the shadow itself, or another developer's, is never a cluster pod
    ]
    assert rules.cluster_subset(SELECTOR, pods, shadow).labels == {"version": "v1"}
    steady = [pod({**SELECTOR, "tier": "api", "pod-template-hash": "abc"})]
    assert rules.cluster_subset(SELECTOR, steady, shadow) == rules.ClusterSubset(
        {"tier": "api"}, None
    )
    hashed = rules.cluster_subset(SELECTOR, [pod({**SELECTOR, "pod-template-hash": "abc"})], shadow)
    assert hashed.labels == {"pod-template-hash": "abc"}
    assert hashed.note is not None and "changes with each rollout" in hashed.note
    differing = [pod({**SELECTOR, "tier": "a"}), pod({**SELECTOR, "tier": "b"})]
    with pytest.raises(rules.RulesError, match="no label the shadow lacks"):
        rules.cluster_subset(SELECTOR, differing, shadow)
    with pytest.raises(rules.RulesError, match="no pods"):
        rules.cluster_subset(SELECTOR, [pod(shadow)], shadow)


def test_mark_label_is_the_value_or_its_label_form() -> None:
    assert mark_label(parse_version_mark("dev")) == {"version": "dev"}
    assert mark_label(parse_version_mark("kt-mark:0.0.1")) == {"kt-mark": "0.0.1"}
    odd = parse_version_mark("v:a b")
    assert mark_label(odd) == {"v": odd.slug}
    with pytest.raises(MeshError, match="cannot be a pod label"):
        mark_label(parse_version_mark("x~y:dev"))


def test_shadow_labels_and_their_conflicts() -> None:
    labels = shadow_labels("billing-api", "s1", SELECTOR, {"version": "dev"})
    assert labels == {
        "app": "billing-api",
        "version": "dev",
        **m.service_labels("billing-api", "shadow"),
        m.SESSION_LABEL: "s1",
    }
    bare = shadow_labels("billing-api", "s1", None, {"version": "dev"})
    assert "app" not in bare and bare["version"] == "dev"
    with pytest.raises(MeshError, match="uses version \\(the mark's key\\)"):
        shadow_labels("billing-api", "s1", {"version": "v1"}, {"version": "dev"})
    with pytest.raises(MeshError, match=r"a label localmesh uses.*--no-selector-labels"):
        shadow_labels("billing-api", "s1", {m.MANAGED_BY_LABEL: "helm"}, {"version": "dev"})


def test_shadow_pod_names_the_services_named_target_ports() -> None:
    s = spec((9090, 8080, 8080))
    labels = shadow_labels("billing-api", s.name, SELECTOR, {"version": "dev"})
    pod = manual_shadow_pod(s, labels, {8080: "http"})
    assert pod["metadata"]["labels"] == labels
    ports = pod["spec"]["containers"][0]["ports"]
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in ports
    svc = shadow_service(s)
    assert svc["spec"]["selector"] == {m.SESSION_LABEL: s.name}
    assert svc["spec"]["ports"] == [
        {"name": "http-8080", "port": 8080, "targetPort": 8080, "protocol": "TCP"}
    ]


def test_printed_rules_are_one_yaml_stream() -> None:
    cluster = rules.ClusterSubset({"version": "v1"}, None)
    r = rules_input(cluster, "shadow-svc")
    joined = Joined(spec((9090, 8080, 8080)), b"", [], [], True)
    manual = ManualJoined(joined, {}, r, rules.istio_rules(r), rules.http_routes(r), [])
    docs = [d for d in yaml.safe_load_all(rules_yaml(manual)) if d is not None]
    assert [d["kind"] for d in docs] == ["DestinationRule", "VirtualService", "HTTPRoute"]
    for doc in docs[:2]:
        istio_round_trip(doc)
    validate_http_route(docs[2])


def parse(*argv: str) -> Any:
    return build_parser("localmesh").parse_args(["mesh", "svc", "--expose", "80", *argv])


def test_manual_flags_belong_to_manual_mode(tmp_path: Any) -> None:
    assert manual_args(parse()) is None
    for flag in (
        ["--no-selector-labels"],
        ["--shadow-service"],
        ["--istio-output", "x"],
        ["--apply"],
    ):
        with pytest.raises(ConfigError, match=f"{flag[0]} belongs to --mode manual"):
            manual_args(parse(*flag))
    got = manual_args(parse("--mode", "manual", "--no-selector-labels"))
    assert got is not None and not got.selector_labels and got.output is None
    out = tmp_path / "rules.yaml"
    got = manual_args(parse("--mode", "manual", "--istio-output", str(out)))
    assert got is not None and got.output == out and got.selector_labels
    with pytest.raises(ConfigError, match="cannot write in"):
        manual_args(parse("--mode", "manual", "--istio-output", str(tmp_path / "no" / "x")))


def test_applied_rules_are_read_from_the_lease() -> None:
    assert applied_rules(None) == []
    assert applied_rules({"metadata": {}}) == []
    lease = {"metadata": {"annotations": {APPLIED_ANNOTATION: '[["VirtualService", "a"]]'}}}
    assert applied_rules(lease) == [("VirtualService", "a")]
