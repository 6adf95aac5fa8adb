"""Scenario files: the built-in default, validation errors, generated scale scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmesh.errors import ConfigError
from localmesh.sandbox import Scenario, scale_scenario


def test_default_scenario_is_the_seed_example() -> None:
    sc = Scenario.default()
    assert sc.namespaces == ("users", "billing", "admin")
    by_name = {s.name: s for s in sc.services}
    users = by_name["users-api"]
    assert (users.namespace, users.ports[0].name, users.ports[0].port) == ("users", "grpc", 50051)
    billing = by_name["billing-api"]
    assert (billing.namespace, billing.ports[0].name, billing.ports[0].port) == (
        "billing",
        "http",
        8080,
    )
    assert by_name["admin-web"].ports[0].port == 8080
    workloads = {d.name: d.workload for d in sc.deployments}
    assert workloads == {
        "users-api": "grpc-greeter",
        "billing-api": "http-echo",
        "admin-web": "http-echo",
        "frontend": "frontend",
    }
    frontend = next(d for d in sc.deployments if d.name == "frontend")
    assert (frontend.namespace, frontend.downstream) == ("users", "http://billing-api.billing:8080")
    kinds = [m["kind"] for m in sc.manifests()]
    assert kinds == ["Namespace"] * 3 + ["Deployment"] * 4 + ["Service"] * 4


def test_invalid_scenario_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "deployments:\n  - {name: a, workload: nginx, replicas: -1}\n"
        "services:\n  - {name: b, ports: []}\nextra: 1\n"
    )
    with pytest.raises(ConfigError) as info:
        Scenario.load(path)
    text = str(info.value)
    for fragment in (
        "deployments[0].workload",
        "deployments[0].replicas",
        "services[0].ports",
        "unknown keys ['extra']",
        str(path),
    ):
        assert fragment in text


def test_unreadable_and_non_yaml_scenarios(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read scenario"):
        Scenario.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Scenario.load(bad)


def test_headless_selectorless_and_named_target_ports() -> None:
    sc = Scenario.from_dict(
        {
            "services": [
                {"name": "h", "clusterIP": "None", "selector": {"app": "h"}},
                {
                    "name": "m",
                    "ports": [{"name": "p", "port": 80}],
                    "endpoints": [
                        {"addresses": ["127.0.0.1"], "ports": [{"name": "p", "port": 8080}]}
                    ],
                },
                {
                    "name": "n",
                    "selector": {"app": "n"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
            ]
        }
    )
    manifests = {(m["kind"], m["metadata"]["name"]): m for m in sc.manifests()}
    assert manifests[("Service", "h")]["spec"]["clusterIP"] == "None"
    assert "selector" not in manifests[("Service", "m")]["spec"]
    assert manifests[("Endpoints", "m")]["subsets"][0]["addresses"] == [{"ip": "127.0.0.1"}]
    assert manifests[("Service", "n")]["spec"]["ports"][0]["targetPort"] == "http"


def test_scale_scenario() -> None:
    sc = scale_scenario(10, namespaces=3)
    assert len(sc.services) == 10 and len(sc.deployments) == 10
    assert sc.namespaces == ("scale-0", "scale-1", "scale-2")
    assert sc.services[4].namespace == "scale-1"
    assert sc.services[0].ports[0].target_port == "http"
