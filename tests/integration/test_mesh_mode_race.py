"""An auto and a manual session starting on one Service at the same moment: both pass
their checks before either writes, then the mode claim, one compare-and-swap on the
Service's annotations, lets exactly one of them in; the other is refused and rolled back.
And the rights manual mode asks for, that claim included, are enough."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from localmesh.clustermesh.manual import ManualSession
from localmesh.clustermesh.membership import MeshError, mesh_state
from localmesh.clustermesh.session import MeshSession
from localmesh.kube.objects import KubeObjects
from localmesh.kube.targets import JSON
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.crd_helpers import crd_yaml, istio_crds
from tests.integration.mesh_helpers import (
    as_rules,
    kube_for,
    kubeconfig_with,
    local_server,
    managed_objects,
    options,
    routed_selector,
    service_json,
    wait_managed_gone,
)
from tests.sandbox_fixtures import kubectl

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory


class MeetAtLease(KubeObjects):
    """The real client, except that creating the session Lease (the first write of a join,
    after every check) waits until the other session got there too."""

    def __init__(self, sb: Sandbox, barrier: asyncio.Barrier) -> None:
        super().__init__(kube_for(sb).access)
        self.barrier = barrier

    async def create(self, kind: str, namespace: str, body: JSON) -> JSON:
        if kind == "Lease":
            async with asyncio.timeout(60):
                await self.barrier.wait()
        return await super().create(kind, namespace, body)


@pytest.mark.parametrize("rounds", [2])
async def test_auto_and_manual_starting_together_let_exactly_one_in(
    sandbox: Sandbox, rounds: int
) -> None:
    before = await service_json(sandbox)
    async with local_server() as port:
        for _ in range(rounds):
            barrier = asyncio.Barrier(2)
            kubes = [MeetAtLease(sandbox, barrier), MeetAtLease(sandbox, barrier)]
            auto = MeshSession(kubes[0], options(port, "dev"))
            manual = ManualSession(kubes[1], options(port, "other", mode="manual"))
            results: tuple[Any, ...] = await asyncio.gather(
                auto.join(), manual.join(), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            assert len(errors) == 1, results
            assert isinstance(errors[0], MeshError), errors[0]
            assert "mode" in str(errors[0])
            winner = auto if errors[0] is results[1] else manual
            loser = manual if winner is auto else auto
            assert loser.spec is not None and winner.spec is not None
            meshed = await service_json(sandbox)
            state = mesh_state(meshed)
            assert state.sessions == (winner.spec.name,)
            if winner is auto:
                assert state.mode == "auto"
                assert meshed["spec"]["selector"] == routed_selector(sandbox)
            else:
                assert state.mode == "manual"
                assert meshed["spec"] == before["spec"]
            # The refused session left nothing behind.
            assert not any(loser.spec.name in o for o in await managed_objects(sandbox))
            await winner.leave()
            assert await service_json(sandbox) == before
            await wait_managed_gone(sandbox)
            for kube in kubes:
                await kube.close()
    assert await managed_objects(sandbox) == []


async def test_manual_mode_with_apply_needs_only_the_permissions_it_names(
    sandbox: Sandbox,
) -> None:
    """A developer holding exactly what ManualSession.permissions() names (the Service's
    claim and the applied rules included) joins, applies and leaves."""
    (await kubectl(sandbox, "apply", "-f", "-", input=crd_yaml(*istio_crds()))).check()
    before = await service_json(sandbox)
    admin = kube_for(sandbox)
    async with local_server() as port:
        opts = options(port, mode="manual")
        rules = as_rules(ManualSession(admin, opts, apply=True).permissions())
        dev = KubeObjects.connect(await kubeconfig_with(sandbox, admin, rules))
        session = ManualSession(dev, opts, apply=True)
        joined = await session.join()
        assert sum("(applied)" in c for c in joined.created) == 2
        assert mesh_state(await service_json(sandbox)).mode == "manual"
        await session.leave()
    assert await service_json(sandbox) == before
    assert (await admin.list("DestinationRule", "billing")) == []
    await wait_managed_gone(sandbox)
    await dev.close()
    await admin.close()
