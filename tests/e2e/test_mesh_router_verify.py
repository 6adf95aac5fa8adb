"""The router verifies a shadow pod itself while the kubelet has not called it Ready: the
sandbox's kubelet is told never to call any shadow Ready (`hold_unready`), so a marked
request served locally can only come from the router's own /readyz check, and the mark
going back to the pods after the tunnel drops (its Lease kept live) only from that check
going stale. Everything real: the `mesh` CLI, the router agent with its Envoy, the shadow
agent, curl."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.session import health_port_of
from localmesh.kube.objects import Conflict, KubeObjects
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.test_mesh_router import (
    body_of,
    cluster_ip,
    local_app,
    router_ip,
    start_mesh,
    stop_mesh,
)
from tests.e2e.up_helpers import curl, eventually
from tests.integration.mesh_helpers import kube_for

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

HOURS = 3600


async def shadow_pods(sb: Sandbox) -> list[dict[str, object]]:
    out = (
        await sandbox_fixtures.kubectl(
            sb, "get", "pods", "-n", "billing", "-l", f"{m.COMPONENT_LABEL}=shadow", "-o", "json"
        )
    ).check()
    items: list[dict[str, object]] = json.loads(out.stdout)["items"]
    return items


def ready(pod: dict[str, object]) -> bool:
    status = pod.get("status")
    assert isinstance(status, dict)
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


async def test_a_shadow_never_ready_by_the_kubelet_is_served_once_connected_and_falls_back(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.faults.hold_unready("billing", m.service_labels("billing-api", "shadow"))
    url = f"http://{await cluster_ip(sandbox, 'billing', 'billing-api')}:8080/orders"
    kube = kube_for(sandbox)
    try:
        async with local_app("ana") as port:
            proc = await start_mesh(sandbox, tmp_path, "billing/billing-api", f"{port}:8080", "dev")
            try:
                # `mesh` says "try ..." once the router's Envoy ACKed the route: the first
                # marked request to the router pod is served locally, though the kubelet
                # never called the shadow Ready.
                router = await router_ip(sandbox)
                first = await body_of(f"http://{router}:8080/first", {"version": "dev"})
                assert first == f"ana served /first for {router}:8080"
                body = await body_of(url, {"version": "dev"})
                assert body is not None and body.startswith("ana served /orders")
                (pod,) = await shadow_pods(sandbox)
                assert not ready(pod)
                plain = await body_of(url)
                assert plain is not None and json.loads(plain)["pod"].startswith("billing-api")

                # The session stays live (its Lease now lasts an hour) but its tunnel drops:
                # the developer's process dies. The router's check fails, and its Envoy
                # ACKs a snapshot without the mark's route (/routed says 404) ...
                meta = pod["metadata"]
                assert isinstance(meta, dict)
                session = str(meta["name"])
                await keep_live(kube, session)
                routed = await routed_url(kube, router, session)
                assert await status_of(routed) == 200
                proc.kill()
                await proc.wait()

                async def unrouted() -> bool:
                    return await status_of(routed) == 404

                await eventually(unrouted, seconds=30, what="the mark's route gone")
                # ... so the very next marked request is the pods' (no retry).
                body = await body_of(url, {"version": "dev"})
                assert body is not None and json.loads(body)["pod"].startswith("billing-api")
                lease = await kube.get("Lease", "billing", session)
                assert lease is not None and lease["spec"]["leaseDurationSeconds"] == HOURS
            finally:
                await stop_mesh(proc)
    finally:
        await kube.close()


async def routed_url(kube: KubeObjects, router: str, session: str) -> str:
    """The router's GET /routed/<session> (answered at once), on its health port."""
    pods = await kube.list("Pod", "billing", f"{m.COMPONENT_LABEL}=router")
    (pod,) = [p for p in pods if p["status"].get("podIP") == router]
    return f"http://{router}:{health_port_of(pod)}/routed/{session}?wait=0"


async def status_of(url: str) -> int:
    return (await curl(url)).status


async def keep_live(kube: KubeObjects, name: str) -> None:
    """Renew the session's Lease for an hour (the CLI may renew it meanwhile: retry)."""
    async with asyncio.timeout(30):
        while True:
            lease = await kube.get("Lease", "billing", name)
            assert lease is not None
            lease["spec"]["leaseDurationSeconds"] = HOURS
            lease["spec"]["renewTime"] = m.micro_time(datetime.now(UTC))
            try:
                await kube.replace("Lease", "billing", name, lease)
                return
            except Conflict:
                continue
