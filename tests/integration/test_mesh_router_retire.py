"""The router's retire racing a joiner (sandbox, real API): a developer who joins between
the router's restoring write and its delete of the origin Service claims the origin, so
the delete misses, and the router (which the joiner found Ready) stays in service."""

from __future__ import annotations

import pytest

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.membership import cas_service, ensure, mesh_state, with_session
from localmesh.clustermesh.router import RouterAgent
from localmesh.kube.objects import KubeObjects
from localmesh.kube.targets import JSON
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.integration.mesh_helpers import kube_for

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

NS, SERVICE = "billing", "billing-api"


def session(name: str) -> m.SessionSpec:
    return m.SessionSpec(NS, SERVICE, name, "version", name, name, "dev@laptop", ())


class JoinAfterRestore(KubeObjects):
    """The real client, except that right after the router's restoring write a developer
    joins: lists a live session on the Service and claims the origin Service."""

    def __init__(self, sb: Sandbox) -> None:
        super().__init__(kube_for(sb).access)
        self.joined = False

    async def replace(self, kind: str, namespace: str, name: str, body: JSON) -> JSON:
        written = await super().replace(kind, namespace, name, body)
        if kind == "Service" and name == SERVICE and not self.joined:
            self.joined = True
            joiner = session("late")
            await super().create("Lease", NS, m.session_lease(joiner))
            _, meshed = await cas_service(self, NS, SERVICE, lambda s: with_session(s, joiner.name))
            await ensure(self, m.origin_service(meshed), f"{joiner.name} now")
        return written


async def test_a_join_during_the_retire_keeps_the_router(sandbox: Sandbox) -> None:
    kube = JoinAfterRestore(sandbox)
    setup = kube_for(sandbox)
    try:
        # A mesh whose only session is dead (its Lease is gone): the router may retire.
        _, meshed = await cas_service(setup, NS, SERVICE, lambda s: with_session(s, "gone"))
        origin, _ = await ensure(setup, m.origin_service(meshed), "gone then")
        agent = RouterAgent(NS, SERVICE, pod_ip="127.0.0.1", health_port=0, kube=kube)

        assert not await agent.retire(kube)
        assert kube.joined
        kept = await kube.get("Service", NS, m.origin_name(SERVICE))
        assert kept is not None and kept["metadata"]["uid"] == origin["metadata"]["uid"]
        service = await kube.get("Service", NS, SERVICE)
        assert service is not None
        assert mesh_state(service).sessions == (session("late").name,)
    finally:
        await kube.close()
        await setup.close()
