"""A developer joins while the last mesh's objects wait for the garbage collector.

On a real cluster the collector is asynchronous: when the router retires (or the last
developer leaves), the owner goes at once and what it owned (the router's Deployment, its
ReplicaSet and pod, its RBAC; a dead session's shadow pod and Secret) goes later. The
sandbox's collector is held here (`faults.garbage_delay`) so that every join below
happens inside that window, whatever the machine's speed, and the test then lets it
catch up (`faults.collect_garbage_now()`), as a real one does a few seconds later."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from localmesh.clustermesh import manifests as m
from localmesh.sandbox import Sandbox
from localmesh.sandbox.resources import BY_PLURAL, PODS, SERVICES
from tests import sandbox_fixtures
from tests.e2e.test_mesh_router import (
    IDLE_TIMEOUT,
    UnmarkedLoad,
    body_of,
    cluster_ip,
    comparable,
    local_app,
    start_mesh,
    stop_mesh,
)
from tests.e2e.up_helpers import eventually
from tests.integration.mesh_helpers import namespace_objects, service_json

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

HELD = 3600.0  # the collector does nothing until collect_garbage_now()
SERVICE = "billing-api"
ROUTER_KINDS = ("deployments", "serviceaccounts", "roles", "rolebindings")


def router_objects(sb: Sandbox) -> dict[str, dict[str, Any]]:
    """The router's Deployment and RBAC as stored, by kind."""
    found = {}
    for plural in ROUTER_KINDS:
        obj = sb.store.peek(BY_PLURAL[plural], "billing", m.router_name(SERVICE))
        if obj is not None:
            found[plural] = obj
    return found


def router_pods(sb: Sandbox) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in sb.store.iter(PODS, "billing")
        if (p["metadata"].get("labels") or {}).get(m.COMPONENT_LABEL) == "router"
    }


def origin(sb: Sandbox) -> dict[str, Any] | None:
    return sb.store.peek(SERVICES, "billing", m.origin_name(SERVICE))


async def served_by(url: str, name: str, headers: dict[str, str]) -> bool:
    body = await body_of(url, headers)
    return body is not None and body.startswith(name)


async def plain_from_the_pods(url: str) -> bool:
    body = await body_of(url)
    return body is not None and json.loads(body)["pod"].startswith(SERVICE)


async def test_a_join_after_the_router_retired_builds_its_own_router_and_retires_again(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.faults.garbage_delay = HELD
    before = comparable(await service_json(sandbox))
    objects_before = namespace_objects(sandbox)
    ip = await cluster_ip(sandbox, "billing", SERVICE)
    url = f"http://{ip}:8080/x"
    load = UnmarkedLoad(url)
    load.start()
    await eventually(load.answered, seconds=30, what="unmarked load before the mesh")
    async with contextlib.AsyncExitStack() as stack:
        ana_port = await stack.enter_async_context(local_app("ana"))
        bob_port = await stack.enter_async_context(local_app("bob"))
        ana = await start_mesh(sandbox, tmp_path, f"billing/{SERVICE}", f"{ana_port}:8080", "dev")
        procs = [ana]
        try:
            await eventually(
                lambda: served_by(url, "ana", {"version": "dev"}), seconds=30, what="ana's mark"
            )
            first_pods = router_pods(sandbox)
            ana.kill()  # ana's machine dies: nobody is left, the router retires
            await ana.wait()

            async def retired() -> bool:
                restored = comparable(await service_json(sandbox)) == before
                return restored and origin(sandbox) is None

            await eventually(
                retired,
                seconds=m.LEASE_DURATION_SECONDS + IDLE_TIMEOUT + 30,
                what="the router to restore the Service and delete the origin Service",
                every=0.2,
            )
            # The window: the router's objects outlive the origin Service that owns them.
            stale = router_objects(sandbox)
            assert set(stale) == set(ROUTER_KINDS)
            assert router_pods(sandbox) == first_pods

            bob = await start_mesh(
                sandbox, tmp_path, f"billing/{SERVICE}", f"{bob_port}:8080", "baggage:bob"
            )
            procs.append(bob)
            # Still inside the window: the retired router's pod was not collected.
            assert first_pods <= router_pods(sandbox)
            new_origin = origin(sandbox)
            assert new_origin is not None
            # bob's router objects belong to bob's origin Service, not to the deleted one.
            for plural, obj in router_objects(sandbox).items():
                refs = obj["metadata"].get("ownerReferences") or []
                assert [r["uid"] for r in refs] == [new_origin["metadata"]["uid"]], plural
            await eventually(
                lambda: served_by(url, "bob", {"baggage": "bob"}), seconds=30, what="bob's mark"
            )
            assert await plain_from_the_pods(url)

            # The collector catches up: what the deleted origin owned goes; bob's stays.
            sandbox.faults.collect_garbage_now()

            async def old_router_gone() -> bool:
                return not (router_pods(sandbox) & first_pods)

            await eventually(old_router_gone, seconds=60, what="the retired router collected")
            assert set(router_objects(sandbox)) == set(ROUTER_KINDS)
            for _ in range(5):
                assert await served_by(url, "bob", {"baggage": "bob"})
                assert await plain_from_the_pods(url)

            # bob's machine dies too: bob's router (not the retired one) retires in turn.
            sandbox.faults.garbage_delay = 0.5  # from now on it collects by itself, late
            bob.kill()
            await bob.wait()

            async def as_before() -> bool:
                return (
                    comparable(await service_json(sandbox)) == before
                    and namespace_objects(sandbox) == objects_before
                )

            await eventually(
                as_before,
                seconds=m.LEASE_DURATION_SECONDS + IDLE_TIMEOUT + 60,
                what="the Service restored and the namespace as before",
                every=0.2,
            )
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    seen = load.ok
    await eventually(lambda: load.answered(seen + 5), seconds=30, what="load after the mesh")
    await load.stop()
    assert load.failures == [], load.failures[:5]


async def test_a_join_after_the_last_leave_does_not_use_the_leavers_router(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The leaver deletes the router's Deployment; its ReplicaSet and Ready pod wait for
    the collector. The next developer's join must wait for its own router pod."""
    sandbox.faults.garbage_delay = HELD
    before = comparable(await service_json(sandbox))
    objects_before = namespace_objects(sandbox)
    ip = await cluster_ip(sandbox, "billing", SERVICE)
    url = f"http://{ip}:8080/y"
    load = UnmarkedLoad(url)
    load.start()
    await eventually(load.answered, seconds=30, what="unmarked load before the mesh")
    async with local_app("ana") as ana_port, local_app("bob") as bob_port:
        ana = await start_mesh(sandbox, tmp_path, f"billing/{SERVICE}", f"{ana_port}:8080", "dev")
        try:
            await eventually(
                lambda: served_by(url, "ana", {"version": "dev"}), seconds=30, what="ana's mark"
            )
            first_pods = router_pods(sandbox)
        finally:
            await stop_mesh(ana)
        assert ana.returncode == 0
        assert comparable(await service_json(sandbox)) == before
        assert first_pods <= router_pods(sandbox)  # the leaver's router awaits collection

        bob = await start_mesh(sandbox, tmp_path, f"billing/{SERVICE}", f"{bob_port}:8080", "bob")
        try:
            # The Service selects bob's router pod only, never the leaver's.
            svc = await service_json(sandbox)
            chosen = {
                p["metadata"]["name"]
                for p in sandbox.pods("billing", svc["spec"]["selector"])
                if not p["metadata"].get("deletionTimestamp")
            }
            assert chosen and not chosen & first_pods, chosen
            await eventually(
                lambda: served_by(url, "bob", {"version": "bob"}), seconds=30, what="bob's mark"
            )
            sandbox.faults.collect_garbage_now()
            for _ in range(5):
                assert await served_by(url, "bob", {"version": "bob"})
                assert await plain_from_the_pods(url)
        finally:
            await stop_mesh(bob)
        assert bob.returncode == 0
    sandbox.faults.collect_garbage_now()
    sandbox.faults.garbage_delay = 0.5

    async def as_before() -> bool:
        sandbox.faults.collect_garbage_now()
        return (
            comparable(await service_json(sandbox)) == before
            and namespace_objects(sandbox) == objects_before
        )

    await eventually(as_before, seconds=60, what="the namespace as before", every=0.2)
    seen = load.ok
    await eventually(lambda: load.answered(seen + 5), seconds=30, what="load after the mesh")
    await load.stop()
    assert load.failures == [], load.failures[:5]
