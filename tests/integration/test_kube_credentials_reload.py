"""One-off requests (KubeObjects of `mesh`, Cluster's port resolution) pick up the
credentials of a cluster recreated with a new CA and token on the same kubeconfig path."""

from __future__ import annotations

import asyncio

import pytest

from localmesh.config import ServiceEntry
from localmesh.desired import Protocol
from localmesh.kube import Cluster
from localmesh.kube.objects import KubeObjects
from tests import sandbox_fixtures
from tests.sandbox_fixtures import SandboxFactory

pytestmark = pytest.mark.integration
sandbox_factory = sandbox_fixtures.sandbox_factory


async def test_requests_after_a_credential_rotation_reload_the_kubeconfig(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory()
    kube = KubeObjects.connect(str(sb.kubeconfig_path))
    cluster = await asyncio.to_thread(Cluster.connect, str(sb.kubeconfig_path))
    entry = ServiceEntry(
        host="b.localhost",
        namespace="billing",
        service="billing-api",
        protocol=Protocol.HTTP,
        port=8080,
    )
    try:
        assert await kube.list("Pod", "billing")
        assert await asyncio.to_thread(cluster.resolve, entry) == 8080
        before = kube.access.generation
        await sb.faults.restart_apiserver(rotate_credentials=True)
        assert await kube.list("Pod", "billing")  # TLS failure, re-read, retried
        assert kube.access.generation == before + 1
        assert await asyncio.to_thread(cluster.resolve, entry) == 8080
        assert cluster.access.generation == 1
    finally:
        await kube.close()
        await cluster.close()
