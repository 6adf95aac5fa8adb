"""Controllers of the sandbox: replicas, garbage collection, derived endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from localmesh.sandbox import Sandbox, Scenario
from localmesh.sandbox.resources import (
    DEPLOYMENTS,
    ENDPOINTS,
    ENDPOINTSLICES,
    NAMESPACES,
    PODS,
    SERVICES,
)
from tests import sandbox_fixtures
from tests.sandbox_fixtures import SandboxFactory

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory


def slices(sb: Sandbox, ns: str, service: str) -> list[dict[str, Any]]:
    return [
        s
        for s in sb.store.iter(ENDPOINTSLICES, ns)
        if s["metadata"]["labels"].get("kubernetes.io/service-name") == service
    ]


async def test_deleting_a_deployment_removes_its_pods_and_endpoints(sandbox: Sandbox) -> None:
    sandbox.cluster.delete(DEPLOYMENTS, "billing", "billing-api")
    await sandbox.wait_for(lambda: not sandbox.pods("billing"), what="pods to be gone")
    await sandbox.wait_for(
        lambda: "subsets" not in sandbox.store.get(ENDPOINTS, "billing", "billing-api"),
        what="empty endpoints",
    )
    (only,) = slices(sandbox, "billing", "billing-api")
    assert only["endpoints"] == []
    # The service outlives its pods; deleting it removes its derived objects too.
    sandbox.cluster.delete(SERVICES, "billing", "billing-api")
    await sandbox.wait_for(
        lambda: (
            not slices(sandbox, "billing", "billing-api")
            and sandbox.store.peek(ENDPOINTS, "billing", "billing-api") is None
        ),
        what="derived objects to be gone",
    )


async def test_named_target_port_resolves_per_pod(sandbox_factory: SandboxFactory) -> None:
    scenario = Scenario.from_dict(
        {
            "deployments": [
                {
                    "name": "old",
                    "namespace": "x",
                    "labels": {"app": "api", "gen": "1"},
                    "ports": [{"name": "http", "containerPort": 8080}],
                },
                {
                    "name": "new",
                    "namespace": "x",
                    "labels": {"app": "api", "gen": "2"},
                    "ports": [{"name": "http", "containerPort": 9090}],
                },
            ],
            "services": [
                {
                    "name": "api",
                    "namespace": "x",
                    "selector": {"app": "api"},
                    "ports": [{"name": "web", "port": 80, "targetPort": "http"}],
                },
            ],
        }
    )
    sb = await sandbox_factory(scenario)
    ports = sorted(s["ports"][0]["port"] for s in slices(sb, "x", "api"))
    assert ports == [8080, 9090]
    subsets = sb.store.get(ENDPOINTS, "x", "api")["subsets"]
    assert sorted(s["ports"][0]["port"] for s in subsets) == [8080, 9090]
    assert all(s["ports"][0]["name"] == "web" for s in subsets)


async def test_service_selector_change_moves_endpoints(sandbox: Sandbox) -> None:
    users_ip = sandbox.pods("users")[0]["status"]["podIP"]
    svc = sandbox.store.get(SERVICES, "billing", "billing-api")
    svc["spec"]["selector"] = {"app": "nothing"}
    sandbox.cluster.replace(SERVICES, "billing", "billing-api", svc)
    await sandbox.wait_for(lambda: not sandbox.ready_endpoints("billing", "billing-api"))
    sandbox.cluster.patch(
        SERVICES,
        "billing",
        "billing-api",
        "application/merge-patch+json",
        {"spec": {"selector": {"app": "billing-api"}}},
    )
    await sandbox.wait_ready_endpoints("billing", "billing-api")
    assert users_ip not in sandbox.ready_endpoints("billing", "billing-api")


async def test_deleting_a_namespace_deletes_its_contents(sandbox: Sandbox) -> None:
    pod_ip = sandbox.pods("admin")[0]["status"]["podIP"]
    sandbox.cluster.delete(NAMESPACES, None, "admin")
    assert sandbox.store.peek(NAMESPACES, None, "admin") is None
    assert not list(sandbox.store.iter(PODS, "admin"))
    assert not list(sandbox.store.iter(SERVICES, "admin"))
    # Its pods' servers close as well.
    await sandbox.cluster.kubelet.stopped()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(pod_ip, 8080)


async def test_generate_name_and_scenario_ready_delay(sandbox_factory: SandboxFactory) -> None:
    scenario = Scenario.from_dict(
        {"deployments": [{"name": "slow", "namespace": "s", "readyDelay": 0.3}]}
    )
    sb = await sandbox_factory(scenario, wait_ready=False)
    pod = await sb.wait_for(
        lambda: [p for p in sb.pods("s") if p["status"].get("phase") == "Running"],
        what="a running pod",
    )
    assert sb.ready_pod("s", pod[0]["metadata"]["name"]) is None
    await sb.wait_all_ready(5)
    made = sb.cluster.create(
        PODS,
        {
            "metadata": {"generateName": "job-", "namespace": "s"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    )
    assert made["metadata"]["name"].startswith("job-") and len(made["metadata"]["name"]) == 9
    # An image the sandbox cannot run is never pulled, as with a wrong image name.

    def waiting_reason() -> str | None:
        pod = sb.store.peek(PODS, "s", made["metadata"]["name"]) or {}
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        reason = (statuses[0].get("state", {}).get("waiting") or {}).get("reason")
        return reason if reason in ("ErrImagePull", "ImagePullBackOff") else None

    await sb.wait_for(waiting_reason, what="the job pod to fail pulling busybox")
    assert sb.store.get(PODS, "s", made["metadata"]["name"])["status"]["phase"] == "Pending"
