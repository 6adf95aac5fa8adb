"""The environment a process container gets, and probe thresholds."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from localmesh.sandbox.probes import Probe, ProbeState
from localmesh.sandbox.processes import NodeConfig, container_env
from localmesh.sandbox.rbac import Identities
from localmesh.sandbox.resources import BY_KIND, NAMESPACES
from localmesh.sandbox.store import Store

POD = {
    "metadata": {"name": "agent-1", "namespace": "mesh", "uid": "u-1", "labels": {"app": "a"}},
    "spec": {"serviceAccountName": "agent", "nodeName": "sandbox-node"},
    "status": {"podIP": "127.20.0.5", "hostIP": "127.0.0.1"},
}


def _store() -> Store:
    store = Store()
    store.create(NAMESPACES, {"metadata": {"name": "mesh"}})
    store.create(
        BY_KIND["ConfigMap"],
        {"metadata": {"name": "cfg", "namespace": "mesh"}, "data": {"mark": "dev", "x": "1"}},
    )
    secret = {"token": base64.b64encode(b"s3cret").decode()}
    store.create(
        BY_KIND["Secret"], {"metadata": {"name": "sec", "namespace": "mesh"}, "data": secret}
    )
    return store


def test_env_has_the_api_server_downward_fields_and_references(tmp_path: Path) -> None:
    store = _store()
    node = NodeConfig("127.0.0.1", 6443, b"", tmp_path, Identities(store))
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "MARK", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mark"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
            {"name": "URL", "value": "http://$(POD_IP):8080/$(MARK)"},
        ],
    }
    env = container_env(POD, container, store, node)
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert env["KUBERNETES_PORT"] == "tcp://127.0.0.1:6443"
    assert env["HOSTNAME"] == "agent-1"
    assert (env["POD_IP"], env["POD_NAME"], env["NS"], env["SA"]) == (
        "127.20.0.5",
        "agent-1",
        "mesh",
        "agent",
    )
    assert (env["APP"], env["MARK"], env["TOKEN"]) == ("a", "dev", "s3cret")
    assert env["CFG_x"] == "1" and env["URL"] == "http://127.20.0.5:8080/dev"
    # The pods share this machine's loopback: the pod's own "localhost" is its IP.
    assert env["LOCALMESH_TUNNEL_BIND"] == "127.20.0.5"
    missing = {"env": [{"name": "M", "valueFrom": {"configMapKeyRef": {"name": "no", "key": "k"}}}]}
    with pytest.raises(ValueError, match='configmap "no" not found'):
        container_env(POD, missing, store, node)
    optional = {
        "env": [
            {
                "name": "M",
                "valueFrom": {"configMapKeyRef": {"name": "no", "key": "k", "optional": True}},
            }
        ]
    }
    assert "M" not in container_env(POD, optional, store, node)


def test_probe_thresholds() -> None:
    probe = Probe({"tcpSocket": {"port": 1}, "failureThreshold": 2, "successThreshold": 2}, "", {})
    state = ProbeState.of(probe)
    assert not state.record(True) and not state.passing  # one success of two
    assert state.record(True) and state.passing
    assert not state.record(False) and state.passing  # one failure of two
    assert state.record(False) and not state.passing


async def test_probe_messages_name_the_address() -> None:
    refused = Probe({"tcpSocket": {"port": "http"}}, "127.0.0.1", {"http": 1})
    assert await refused.run() == (False, "dial tcp 127.0.0.1:1: connect: connection refused")
    unknown = Probe({"httpGet": {"port": "grpc"}}, "127.0.0.1", {})
    ok, message = await unknown.run()
    assert not ok and "'grpc' is not a named port" in message
