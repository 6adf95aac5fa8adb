"""What a deleted origin Service (or session Lease) owned outlives it until the garbage
collector gets to it; joiners never rely on it (the sandbox's collector held, real API)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from localmesh.clustermesh import cleanup, manifests as m
from localmesh.clustermesh.membership import MeshError, create_owned, ensure
from localmesh.kube.objects import KubeObjects
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.integration.mesh_helpers import kube_for, namespace_objects, service_json
from tests.sandbox_fixtures import kubectl

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

NS, SERVICE = "billing", "billing-api"
HELD = 3600.0  # the collector does nothing until collect_garbage_now()


async def origin_of(kube: KubeObjects, sb: Sandbox, claim: str) -> dict[str, Any]:
    service = await service_json(sb)
    origin, _ = await ensure(kube, m.origin_service(service), claim)
    return origin


def role_owned_by(origin: dict[str, Any], sessions: list[str]) -> dict[str, Any]:
    role = next(o for o in m.router_rbac(NS, SERVICE, sessions) if o["kind"] == "Role")
    return m.owned_by(role, origin)


async def test_router_objects_of_a_deleted_origin_are_replaced_not_claimed(
    sandbox: Sandbox,
) -> None:
    sandbox.faults.garbage_delay = HELD
    kube = kube_for(sandbox)
    try:
        first = await origin_of(kube, sandbox, "a")
        old_role, made = await ensure(kube, role_owned_by(first, ["old-session"]), "a")
        assert made
        # The origin Service goes (a retiring router); its Role waits for the collector.
        assert await kube.delete("Service", NS, m.origin_name(SERVICE))
        assert (await kube.get("Role", NS, m.router_name(SERVICE))) is not None

        second = await origin_of(kube, sandbox, "b")
        assert second["metadata"]["uid"] != first["metadata"]["uid"]
        # Two joiners at once (each Lease first, as a join does): one makes the Role
        # again, the other claims that one.
        for session in ("b1", "b2"):
            lease = {"metadata": {"name": session, "labels": m.service_labels(SERVICE, "session")}}
            await kube.create("Lease", NS, {"kind": "Lease", **lease, "spec": {}})
        (_, one_made), (_, two_made) = await asyncio.gather(
            ensure(kube, role_owned_by(second, ["b1"]), "b1"),
            ensure(kube, role_owned_by(second, ["b2"]), "b2"),
        )
        assert sorted([one_made, two_made]) == [False, True]
        role = await kube.get("Role", NS, m.router_name(SERVICE))
        assert role is not None
        assert role["metadata"]["uid"] != old_role["metadata"]["uid"]
        assert m.owner_uids(role) == {second["metadata"]["uid"]}
        assert m.role_sessions(role) == ["b1", "b2"]  # none of the old one's

        # The collector catches up: the new Role is not what the old origin owned.
        sandbox.faults.collect_garbage_now()
        kept = await kube.get("Role", NS, m.router_name(SERVICE))
        assert kept is not None and kept["metadata"]["uid"] == role["metadata"]["uid"]
    finally:
        await kube.close()


async def test_a_session_object_left_by_an_earlier_lease_of_its_name_is_replaced(
    sandbox: Sandbox,
) -> None:
    sandbox.faults.garbage_delay = HELD
    kube = kube_for(sandbox)
    name = "billing-api-localmesh-dev-abc123"
    labels = m.service_labels(SERVICE, "session")
    lease_body = {"kind": "Lease", "metadata": {"name": name, "namespace": NS, "labels": labels}}
    try:
        earlier = await kube.create("Lease", NS, copy.deepcopy(lease_body))
        secret = {
            "kind": "Secret",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "data": {},
        }
        old = await create_owned(kube, m.owned_by(copy.deepcopy(secret), earlier))
        assert await kube.delete("Lease", NS, name)
        lease = await kube.create("Lease", NS, copy.deepcopy(lease_body))
        new = await create_owned(kube, m.owned_by(copy.deepcopy(secret), lease))
        assert new["metadata"]["uid"] != old["metadata"]["uid"]
        assert m.owner_uids(new) == {lease["metadata"]["uid"]}
        # One owned by the live Lease is not garbage: never deleted on a name clash.
        with pytest.raises(MeshError, match="belongs to another owner"):
            await create_owned(kube, m.owned_by(copy.deepcopy(secret), earlier))
        sandbox.faults.collect_garbage_now()
        kept = await kube.get("Secret", NS, name)
        assert kept is not None and kept["metadata"]["uid"] == new["metadata"]["uid"]
    finally:
        await kube.close()


async def test_clean_in_the_window_deletes_the_garbage_and_reports_it(sandbox: Sandbox) -> None:
    """After a retire, before the collector: `mesh clean` removes what is left (nothing
    of anyone's live mesh) and the namespace ends as it was."""
    objects_before = namespace_objects(sandbox)
    sandbox.faults.garbage_delay = HELD
    kube = kube_for(sandbox)
    try:
        origin = await origin_of(kube, sandbox, "a")
        made = [m.owned_by(obj, origin) for obj in m.router_rbac(NS, SERVICE, ["gone-session"])]
        for obj in made:
            await ensure(kube, obj, "a")
        assert await kube.delete("Service", NS, m.origin_name(SERVICE))
        report = await cleanup.clean(kube, NS, SERVICE)
        for obj in made:
            what = f"deleted {obj['kind']} {NS}/{obj['metadata']['name']}"
            assert what in report.actions, report.actions
        assert namespace_objects(sandbox) == objects_before
        sandbox.faults.collect_garbage_now()
        assert namespace_objects(sandbox) == objects_before
        again = await cleanup.clean(kube, NS, SERVICE)
        assert again.actions == [] and again.kept == []
    finally:
        await kube.close()


async def test_an_orphaned_router_object_is_replaced(sandbox: Sandbox) -> None:
    """Released by `kubectl delete --cascade=orphan` of the origin Service: nobody owns or
    removes it, so a joiner makes it again, owned by its origin."""
    kube = kube_for(sandbox)
    try:
        first = await origin_of(kube, sandbox, "a")
        orphan, _ = await ensure(kube, role_owned_by(first, []), "a")
        origin = m.origin_name(SERVICE)
        (await kubectl(sandbox, "delete", "service", origin, "-n", NS, "--cascade=orphan")).check()
        released = await kube.get("Role", NS, m.router_name(SERVICE))
        assert released is not None and not m.owner_uids(released)
        second = await origin_of(kube, sandbox, "b")
        role, made = await ensure(kube, role_owned_by(second, ["b"]), "b")
        assert made and role["metadata"]["uid"] != orphan["metadata"]["uid"]
        assert m.owner_uids(role) == {second["metadata"]["uid"]}
    finally:
        await kube.close()
