"""Which images run as processes, how their argv and env are built, and the scenario keys
that describe them."""

from __future__ import annotations

import sys

import pytest

from localmesh.errors import ConfigError
from localmesh.sandbox import Scenario
from localmesh.sandbox.processes import (
    DEFAULT_PROCESS_IMAGES,
    StartError,
    argv_for,
    expand,
    image_repository,
    runs_as_process,
)
from localmesh.sandbox.rbac import Attributes, rule_allows
from localmesh.sandbox.scenario import deployment_manifest


@pytest.mark.parametrize(
    ("image", "runs"),
    [
        ("localmesh:dev", True),
        ("localmesh", True),
        ("ghcr.io/acme/localmesh:1.2", True),
        ("registry:5000/localmesh@sha256:abc", True),
        ("ghcr.io/acme/localmesh-router:1.2", False),
        ("ghcr.io/acme/lcoalmesh:1.2", False),
        ("busybox", False),
    ],
)
def test_localmesh_images_run_as_processes(image: str, runs: bool) -> None:
    assert runs_as_process(image, DEFAULT_PROCESS_IMAGES) is runs


def test_image_repository_drops_tag_and_digest_not_the_registry_port() -> None:
    assert image_repository("registry:5000/a/localmesh:1@sha256:x") == "registry:5000/a/localmesh"
    assert image_repository("registry:5000/localmesh") == "registry:5000/localmesh"


def test_argv_maps_localmesh_and_python_to_this_interpreter() -> None:
    env = {"PORT": "8080"}
    assert argv_for({"args": ["agent", "--port", "$(PORT)"]}, env) == [
        sys.executable,
        "-m",
        "localmesh",
        "agent",
        "--port",
        "8080",
    ]
    assert argv_for({"command": ["/usr/bin/python3.12", "-m", "x"]}, env) == [
        sys.executable,
        "-m",
        "x",
    ]
    with pytest.raises(StartError, match='exec: "sh": executable file not found in \\$PATH'):
        argv_for({"command": ["sh", "-c", "true"]}, env)


def test_expansion_keeps_unknown_variables_and_escapes() -> None:
    assert expand("$(A)-$(B)-$$(A)", {"A": "1"}) == "1-$(B)-$(A)"


def test_rules_match_verbs_resources_subresources_and_names() -> None:
    rule = {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["mine"],
        "verbs": ["get", "update"],
    }
    lease = Attributes("get", "coordination.k8s.io", "leases", "ns", "mine")
    assert rule_allows(rule, lease)
    assert not rule_allows(rule, Attributes("get", "coordination.k8s.io", "leases", "ns", "other"))
    assert not rule_allows(rule, Attributes("list", "coordination.k8s.io", "leases", "ns"))
    assert not rule_allows(rule, Attributes("get", "", "leases", "ns", "mine"))
    logs = Attributes("get", "", "pods", "ns", "p", "log")
    assert not rule_allows({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}, logs)
    assert rule_allows({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}, logs)
    assert rule_allows({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, logs)


def test_scenario_container_keys() -> None:
    scenario = Scenario.from_dict(
        {
            "deployments": [
                {
                    "name": "agent",
                    "image": "localmesh:dev",
                    "args": ["agent"],
                    "serviceAccountName": "mesh",
                    "readinessProbe": {"tcpSocket": {"port": 8080}},
                }
            ]
        }
    )
    spec = deployment_manifest(scenario.deployments[0])["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "mesh"
    (container,) = spec["containers"]
    assert container["name"] == "agent" and container["image"] == "localmesh:dev"
    assert container["args"] == ["agent"] and container["ports"] == []
    with pytest.raises(ConfigError, match=r"deployments\[0\]\.args: must be a list"):
        Scenario.from_dict({"deployments": [{"name": "a", "args": "agent"}]})
