"""The router on its way out: a real node's kube-proxy applies a Service's new endpoints a
while after the EndpointSlices change, so connections keep arriving at the router pod
after the last developer left. The sandbox's `proxy_lag` fault makes its service proxy lag
the same way; the router must keep serving them, to the pods, until they stop."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.test_mesh_router import (
    UnmarkedLoad,
    body_of,
    cluster_ip,
    comparable,
    local_app,
    start_mesh,
    stop_mesh,
)
from tests.e2e.up_helpers import eventually
from tests.integration.mesh_helpers import service_json, wait_managed_gone

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

PROXY_LAG = 1.0  # seconds the service proxy applies endpoint changes late


async def test_a_lagging_service_proxy_still_reaches_the_pods_while_the_router_stops(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.faults.proxy_lag = PROXY_LAG
    before = comparable(await service_json(sandbox))
    ip = await cluster_ip(sandbox, "billing", "billing-api")
    url = f"http://{ip}:8080/orders"
    load = UnmarkedLoad(url)
    load.start()
    try:
        await eventually(load.answered, seconds=30, what="unmarked load before the mesh")
        async with local_app("ana") as port:
            proc = await start_mesh(sandbox, tmp_path, "billing/billing-api", f"{port}:8080", "dev")
            try:

                async def marked() -> bool:
                    body = await body_of(url, {"version": "dev"})
                    return body is not None and body.startswith("ana")

                await eventually(marked, seconds=30, what="a marked request served locally")
            finally:
                await stop_mesh(proc)
        assert proc.returncode == 0
        assert comparable(await service_json(sandbox)) == before
        # For PROXY_LAG more seconds the cluster IP still leads to the router pod, whose
        # Service, EndpointSlices and Deployment are already deleted: it keeps serving.
        await wait_managed_gone(sandbox)
        seen = load.ok
        await eventually(lambda: load.answered(seen + 5), seconds=30, what="load after")
    finally:
        with contextlib.suppress(Exception):
            await load.stop()
    assert load.failures == [], load.failures[:5]
