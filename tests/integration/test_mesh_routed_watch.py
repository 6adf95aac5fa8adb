"""Why the routed watch says a session is not routed, read from the sandbox's objects: an
unmeshed Service, a Lease that expired (this machine asleep) or is gone, then the shadow."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.routed_watch import RoutedWatch
from localmesh.forward import Connector
from localmesh.kube import load_access
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.integration.mesh_helpers import kube_for

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory


def lease(session_id: str, now: datetime | None = None) -> dict[str, Any]:
    spec = m.SessionSpec(
        "billing", "billing-api", session_id, "version", "dev", "dev", "ana@laptop",
        (m.PortMap(9090, 8080, 8080),),
    )  # fmt: skip
    return m.session_lease(spec, now, duration=m.LEASE_DURATION_SECONDS)


async def test_the_reasons_start_with_the_service_then_the_lease(sandbox: Sandbox) -> None:
    kube = kube_for(sandbox)
    async with aiohttp.ClientSession() as http:
        connector = Connector(load_access(str(sandbox.kubeconfig_path)), http)
        expired = lease("a1b2c3", datetime(2020, 1, 1, tzinfo=UTC))
        live = lease("d4e5f6")
        for obj in (expired, live):
            await kube.create("Lease", "billing", obj)

        def watch(obj: dict[str, Any] | None = None) -> RoutedWatch:
            name = obj["metadata"]["name"] if obj else "billing-api-localmesh-dev-gone00"
            return RoutedWatch(kube, connector, "billing", "billing-api", name)

        # The Service is not meshed (it selects its own pods): no router to ask.
        answer = await watch(live).check()
        assert not answer.routed and answer.why.startswith("not meshed: "), answer
        # With the router not routing it, the Lease is looked at first.
        why = await watch(expired)._why_not()
        assert why.startswith("Lease expired ") and "asleep or offline" in why, why
        assert await watch()._why_not() == "Lease gone"
        assert await watch(live)._why_not() == "shadow pod gone"
    await kube.close()
