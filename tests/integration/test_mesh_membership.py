"""Joining and leaving a Service's mesh on the sandbox (real API semantics, real kubectl)."""

from __future__ import annotations

import asyncio

import pytest

from localmesh.clustermesh import cleanup, manifests as m
from localmesh.clustermesh.membership import MeshError, lease_dead, mesh_state
from localmesh.clustermesh.session import MeshSession, needed_permissions
from localmesh.kube.objects import KubeObjects
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
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

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory


async def test_two_concurrent_joins_then_leaves_restore_the_service(sandbox: Sandbox) -> None:
    before = await service_json(sandbox)
    kube = kube_for(sandbox)
    async with local_server() as port:
        one = MeshSession(kube, options(port, "dev"))
        two = MeshSession(kube, options(port, "kt-mark:other"))
        joined = await asyncio.gather(one.join(), two.join())
        assert sorted(j.first for j in joined) == [False, True]  # one created the router
        # Each shared object was created by exactly one of them and used by the other.
        shared = [w for j in joined for w in j.created if "localmesh-" in w and "Secret" not in w]
        shared = [w for w in shared if "Lease" not in w and "shadow" not in w]
        assert len(shared) == len(set(shared)) == 5
        assert sorted(shared) == sorted(w for j in joined for w in j.reused)

        meshed = await service_json(sandbox)
        state = mesh_state(meshed)
        assert sorted(state.sessions) == sorted(j.spec.name for j in joined)
        assert state.original_selector == before["spec"]["selector"]
        assert meshed["spec"]["selector"] == routed_selector(sandbox)
        assert {k: v for k, v in meshed["spec"].items() if k != "selector"} == {
            k: v for k, v in before["spec"].items() if k != "selector"
        }
        objects = await managed_objects(sandbox)
        assert "Deployment/billing-api-localmesh-router" in objects
        assert "Service/billing-api-localmesh-origin" in objects
        assert {f"Lease/{j.spec.name}" for j in joined} <= set(objects)
        # The origin Service reaches the cluster's pods.
        origin_ready = await sandbox.wait_ready_endpoints(
            "billing", "billing-api-localmesh-origin", count=1, seconds=30
        )
        assert origin_ready

        first_out = await one.leave()
        assert not first_out.restored
        still = await service_json(sandbox)
        assert two.spec is not None
        assert mesh_state(still).sessions == (two.spec.name,)
        assert still["spec"]["selector"] == routed_selector(sandbox)

        last_out = await two.leave()
        assert last_out.restored
    assert await service_json(sandbox) == before
    await wait_managed_gone(sandbox)
    assert await managed_objects(sandbox) == []
    await kube.close()


async def test_crashed_session_is_cleaned(sandbox: Sandbox) -> None:
    before = await service_json(sandbox)
    kube = kube_for(sandbox)
    async with local_server() as port:
        session = MeshSession(kube, options(port, lease_seconds=2))
        joined = await session.join()
    # The router is down too (its node lost), so nothing removes the dead session but
    # `mesh clean`.
    router = await kube.get("Deployment", "billing", m.router_name("billing-api"))
    assert router is not None
    router["spec"]["replicas"] = 0
    await kube.replace("Deployment", "billing", m.router_name("billing-api"), router)
    await sandbox.wait_for(
        lambda: not sandbox.pods("billing", f"{m.COMPONENT_LABEL}=router"), what="router down"
    )
    # A crash: renewal stops, nothing is taken down.
    assert session._renewer is not None
    session._renewer.cancel()
    name = joined.spec.name
    loop = asyncio.get_running_loop()
    until = loop.time() + 30
    while not lease_dead(await kube.get("Lease", "billing", name)):
        assert loop.time() < until, "the lease never expired"
        await asyncio.sleep(0.2)

    dry = await cleanup.clean(kube, "billing", dry_run=True)
    assert any(a.startswith("would restore Service billing/billing-api") for a in dry.actions)
    assert f"would delete Lease billing/{name}" in dry.actions
    assert (await service_json(sandbox))["spec"]["selector"] == routed_selector(sandbox)

    report = await cleanup.clean(kube, "billing", "billing-api")
    assert "restored Service billing/billing-api (selector app=billing-api)" in report.actions
    assert "deleted Deployment billing/billing-api-localmesh-router" in report.actions
    # With its Lease go (garbage collected) the session's shadow pod and Secret.
    for kind in ("Lease", "Pod", "Secret"):
        assert f"deleted {kind} billing/{name}" in report.actions
    assert await service_json(sandbox) == before
    await wait_managed_gone(sandbox)
    again = await cleanup.clean(kube, None)
    assert again.actions == []
    await kube.close()


async def test_wrong_image_is_a_clear_error_and_leaves_nothing(sandbox: Sandbox) -> None:
    before = await service_json(sandbox)
    kube = kube_for(sandbox)
    async with local_server() as port:
        session = MeshSession(kube, options(port, image="nowhere/not-an-image:0"))
        with pytest.raises(MeshError, match=r"cannot start: (ErrImagePull|ImagePullBackOff)") as e:
            await session.join()
    # The hint names what a pip user has: the README's section, not a file of the repository.
    assert "docs/" not in str(e.value)
    assert str(e.value).endswith('pass --router-image (README, section "mesh": The image)'), e.value
    assert await service_json(sandbox) == before
    assert await managed_objects(sandbox) == []
    await kube.close()


async def test_bad_input_changes_nothing(sandbox: Sandbox) -> None:
    before = await service_json(sandbox)
    kube = kube_for(sandbox)
    async with local_server() as port:
        with pytest.raises(MeshError, match=r"has no port 9999; its ports: http:8080->http"):
            await MeshSession(kube, options(port, exposed=_expose(f"{port}:9999"))).join()
        with pytest.raises(MeshError, match="service billing/nope not found"):
            await MeshSession(kube, options(port, service="nope")).join()
        with pytest.raises(MeshError, match="a ManualSession joins in that mode"):
            await MeshSession(kube, options(port, mode="manual")).join()
        manual = await kube.get("Service", "billing", "billing-api")
        assert manual is not None
        manual["metadata"].setdefault("annotations", {})[m.MODE_ANNOTATION] = "manual"
        await kube.replace("Service", "billing", "billing-api", manual)
        with pytest.raises(
            MeshError,
            match=r"is meshed in manual mode; .*`localmesh mesh clean -n billing billing-api`",
        ):
            await MeshSession(kube, options(port)).join()
        del manual["metadata"]["annotations"]
        manual["metadata"].pop("resourceVersion")
        await kube.replace("Service", "billing", "billing-api", manual)
    # The server is gone now: nothing accepts connections on that port.
    with pytest.raises(MeshError, match=f"nothing accepts connections on local port {port}"):
        await MeshSession(kube, options(port)).join()
    assert await service_json(sandbox) == before
    assert await managed_objects(sandbox) == []
    await kube.close()


def _expose(text: str) -> tuple[object, ...]:
    from localmesh.clustermesh.marks import parse_expose

    return parse_expose(text)


async def test_the_needed_permissions_are_enough(sandbox: Sandbox) -> None:
    before = await service_json(sandbox)
    admin = kube_for(sandbox)
    rules = as_rules(needed_permissions("billing", "billing-api"))
    dev = KubeObjects.connect(await kubeconfig_with(sandbox, admin, rules))
    async with local_server() as port:
        session = MeshSession(dev, options(port))
        await session.join()
        assert (await session.leave()).restored
    assert await service_json(sandbox) == before
    await dev.close()
    await admin.close()


async def test_missing_permission_is_named_and_nothing_changes(sandbox: Sandbox) -> None:
    before = await service_json(sandbox)
    admin = kube_for(sandbox)
    wanted = needed_permissions("billing", "billing-api")
    missing = next(p for p in wanted if p.resource == "rolebindings")
    path = await kubeconfig_with(sandbox, admin, as_rules([p for p in wanted if p != missing]))
    dev = KubeObjects.connect(path)
    async with local_server() as port:
        with pytest.raises(MeshError) as info:
            await MeshSession(dev, options(port)).join()
    message = str(info.value)
    assert "missing permissions to mesh billing/billing-api (nothing was changed)" in message
    assert missing.can_i("billing") in message
    assert message.count("kubectl auth can-i") == 1
    assert await service_json(sandbox) == before
    assert [o for o in await managed_objects(sandbox)] == []
    await dev.close()
    await admin.close()


async def test_router_not_ready_in_time_is_rolled_back(sandbox: Sandbox) -> None:
    before = await service_json(sandbox)
    kube = kube_for(sandbox)
    async with local_server() as port:
        # The router pod never becomes Ready (as if its probe always failed).
        sandbox.faults.hold_unready("billing", m.router_selector("billing-api"))
        session = MeshSession(kube, options(port, ready_timeout=2))
        with pytest.raises(MeshError, match=r"router was not Ready within 2s"):
            await session.join()
    assert await service_json(sandbox) == before
    await wait_managed_gone(sandbox)
    await kube.close()


async def test_a_join_racing_the_last_leave_keeps_a_working_mesh(sandbox: Sandbox) -> None:
    before = await service_json(sandbox)
    kube = kube_for(sandbox)
    async with local_server() as port:
        leaving = MeshSession(kube, options(port, "dev"))
        await leaving.join()
        joining = MeshSession(kube, options(port, "other"))
        _, joined = await asyncio.gather(leaving.leave(), joining.join())
        # Whatever the interleaving: the joiner is in, the Service points at a router that
        # exists and is Ready, and the original selector is the real one.
        meshed = await service_json(sandbox)
        state = mesh_state(meshed)
        assert state.sessions == (joined.spec.name,)
        assert state.original_selector == before["spec"]["selector"]
        assert meshed["spec"]["selector"] == routed_selector(sandbox)
        deployment = await kube.get("Deployment", "billing", m.router_name("billing-api"))
        assert deployment is not None and not deployment["metadata"].get("deletionTimestamp")
        for name in ("billing-api-localmesh-origin",):
            assert await kube.get("Service", "billing", name) is not None
        assert (await joining.leave()).restored
    assert await service_json(sandbox) == before
    await wait_managed_gone(sandbox)
    await kube.close()


async def test_the_router_may_do_exactly_its_job(sandbox: Sandbox) -> None:
    kube = kube_for(sandbox)
    async with local_server() as port:
        session = MeshSession(kube, options(port))
        joined = await session.join()
        router = f"--as=system:serviceaccount:billing:{m.router_name('billing-api')}"
        allowed = [
            "update services/billing-api",
            "patch services/billing-api-localmesh-origin",
            "delete services/billing-api-localmesh-origin",
            "watch leases.coordination.k8s.io",
            "list endpointslices.discovery.k8s.io",
            "list pods",
            "get deployments.apps/billing-api-localmesh-router",
            # The Lease of a session that joined (the garbage collector does the rest).
            f"delete leases.coordination.k8s.io/{joined.spec.name}",
        ]
        denied = [
            "update services/other",
            "delete services/billing-api",
            "create services",
            "delete pods",
            "delete secrets",
            "update leases.coordination.k8s.io",
            "delete leases.coordination.k8s.io/someone-elses",
            "delete leases.coordination.k8s.io",
            # Deleting the origin Service removes these: the router needs no right on them.
            "delete deployments.apps/billing-api-localmesh-router",
            "delete roles.rbac.authorization.k8s.io/billing-api-localmesh-router",
            "delete deployments.apps/billing-api",
            "list secrets",
            "list pods -n users",
        ]
        for rule in allowed + denied:
            result = await sandbox_fixtures.kubectl(
                sandbox,
                "auth",
                "can-i",
                *rule.split(),
                *(["-n", "billing"] * ("-n" not in rule)),
                router,
            )
            assert (result.stdout.strip() == "yes") == (rule in allowed), rule
        await session.leave()
    await kube.close()


async def test_clean_removes_leftovers_of_a_service_no_longer_meshed(sandbox: Sandbox) -> None:
    # A leaver that crashed between restoring the Service and deleting the router's objects.
    before = await service_json(sandbox)
    kube = kube_for(sandbox)
    service = await kube.get("Service", "billing", "billing-api")
    assert service is not None
    for obj in [m.origin_service(service), *m.router_rbac("billing", "billing-api")]:
        await kube.create(obj["kind"], "billing", obj)
    assert len(await managed_objects(sandbox)) == 4
    report = await cleanup.clean(kube, None)
    assert sorted(report.actions) == [
        "deleted Role billing/billing-api-localmesh-router",
        "deleted RoleBinding billing/billing-api-localmesh-router",
        "deleted Service billing/billing-api-localmesh-origin",
        "deleted ServiceAccount billing/billing-api-localmesh-router",
    ]
    assert await service_json(sandbox) == before
    await wait_managed_gone(sandbox)
    await kube.close()


async def test_checks_skip_ports_and_need_a_selector(sandbox: Sandbox) -> None:
    kube = kube_for(sandbox)
    # Nothing listens on port 1, and the check is skipped as the flag says.
    checked = await MeshSession(kube, options(1, skip_port_checking=True)).check()
    assert [str(p) for p in checked.ports] == ["1:8080:8080"]
    with pytest.raises(MeshError, match="nothing accepts connections on local port 1"):
        await MeshSession(kube, options(1)).check()
    await kube.create(
        "Service",
        "billing",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "by-hand"},
            "spec": {"ports": [{"port": 8080}]},
        },
    )
    with pytest.raises(MeshError, match="service billing/by-hand has no selector"):
        await MeshSession(kube, options(1, service="by-hand", skip_port_checking=True)).check()
    assert await managed_objects(sandbox) == []
    await kube.close()


async def test_the_routers_role_names_only_the_leases_that_exist(sandbox: Sandbox) -> None:
    """Each joiner adds its Lease to the router's Role (the router may delete it once
    dead) and drops the names of sessions that ended: the Role does not grow forever."""
    kube = kube_for(sandbox)
    async with local_server() as port:
        one, two, three = (MeshSession(kube, options(port, f"kt-mark:s{i}")) for i in range(3))
        await one.join()
        await two.join()
        await one.leave()
        await three.join()
        role = await kube.get("Role", "billing", m.router_name("billing-api"))
        assert role is not None and two.spec is not None and three.spec is not None
        assert m.role_sessions(role) == sorted([two.spec.name, three.spec.name])
        await two.leave()
        await three.leave()
    await wait_managed_gone(sandbox)
    await kube.close()
