"""The router's Envoy resources, byte for byte: the golden file holds what the router served
when it built envoy-data-plane's typed messages (each resource's content version is a hash
of its protobuf bytes), so building them from localmesh's plain messages changed nothing
Envoy receives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from localmesh.clustermesh import manifests as m, router_plan as rp
from localmesh.kube.targets import JSON
from localmesh.xds import resources as rs
from tests.unit.golden import assert_golden

NOW = datetime(2026, 12, 3, 9, 0, 0, tzinfo=UTC)


def _lease(name: str, header: str, value: str, ports: str, age: int) -> JSON:
    acquired = m.micro_time(NOW - timedelta(seconds=age))
    return {
        "metadata": {
            "name": name,
            "annotations": {
                m.HEADER_ANNOTATION: header,
                m.VALUE_ANNOTATION: value,
                m.SHADOW_ANNOTATION: f"{name}-shadow",
                m.PORTS_ANNOTATION: ports,
            },
        },
        "spec": {
            "holderIdentity": f"{name}@laptop",
            "leaseDurationSeconds": 10,
            "acquireTime": acquired,
            "renewTime": m.micro_time(NOW),
        },
    }


def _pod(name: str, ip: str, *, ready: bool = True) -> JSON:
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    return {"metadata": {"name": name}, "status": {"podIP": ip, "conditions": [condition]}}


def _slice(port: int, *ips: str) -> JSON:
    return {
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "targetRef": {"name": f"p-{ip}"}}
            for ip in ips
        ],
    }


def representative_plan() -> rp.RouterPlan:
    """Two ports; two routed developers with different header keys (one on one port only),
    a third whose shadow pod is not Ready yet; origin pods on both ports."""
    leases = [
        _lease("ana", "X-Version", "ana", "9090:8080:8081,9091:9000:9000", age=30),
        _lease("bob", "baggage", "bob", "9090:8080:8081", age=20),
        _lease("cy", "X-Version", "cy", "9090:8080:8081", age=10),
    ]
    pods = {
        "ana-shadow": _pod("ana-shadow", "10.0.1.1"),
        "bob-shadow": _pod("bob-shadow", "10.0.1.2"),
        "cy-shadow": _pod("cy-shadow", "10.0.1.3", ready=False),
    }
    slices = [_slice(8081, "10.0.2.1", "10.0.2.2"), _slice(9000, "10.0.2.1")]
    return rp.plan("10.0.0.9", [8081, 9000], leases=leases, pods=pods, slices=slices, now=NOW)


def served(router: rp.RouterPlan) -> dict[str, Any]:
    snapshot = rp.build_router_snapshot(router)
    return {
        "version": snapshot.version,
        "resources": {
            type_url: {
                name: {"version": r.version, "json": r.json()}
                for name, r in sorted(snapshot.resources(type_url).items())
            }
            for type_url in rs.TYPE_ORDER
        },
    }


def test_router_resources_are_byte_identical_to_the_golden() -> None:
    assert_golden("router_resources.json", served(representative_plan()))


def test_a_router_without_sessions_or_pods_is_byte_identical_to_the_golden() -> None:
    empty = rp.plan("10.0.0.9", [8081], leases=[], pods={}, slices=[], now=NOW)
    assert_golden("router_resources_empty.json", served(empty))
