"""Two developers with the same mark on one Service: the router would serve the mark to the
first only, so the second `mesh` is refused before anything changes (real API server)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import aiohttp
import pytest

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.marks import parse_expose
from localmesh.clustermesh.membership import MeshError
from localmesh.clustermesh.pods import pod_ready
from localmesh.clustermesh.routed_watch import RoutedWatch
from localmesh.clustermesh.session import Checked, MeshSession, wait_routed
from localmesh.forward import Connector
from localmesh.kube import load_access
from localmesh.sandbox import Sandbox
from localmesh.sandbox.resources import PODS
from localmesh.sandbox.workloads import image_for
from tests import sandbox_fixtures
from tests.integration.mesh_helpers import (
    kube_for,
    local_server,
    managed_objects,
    options,
    service_json,
    wait_managed_gone,
)

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory


def lease_of(
    port: int, mark: str, holder: str, session_id: str, now: datetime | None = None
) -> dict[str, object]:
    o = options(port, mark, holder=holder, session_id=session_id)
    spec = m.SessionSpec(
        namespace=o.namespace,
        service=o.service,
        session_id=o.session_id,
        header=o.mark.key,
        value=o.mark.value,
        slug=o.mark.slug,
        holder=o.holder,
        ports=(m.PortMap(port, 8080, 8080),),
        image=o.image,
        mode=o.mode,
    )
    return m.session_lease(spec, now, duration=m.LEASE_DURATION_SECONDS)


async def test_the_same_mark_on_the_same_port_is_refused(sandbox: Sandbox) -> None:
    kube = kube_for(sandbox)
    async with local_server() as port:
        # Ana's live session (its Lease is what other developers see of it).
        await kube.create("Lease", "billing", lease_of(port, "dev", "ana@laptop", "a1b2c3"))
        before_service = await service_json(sandbox)
        before_objects = await managed_objects(sandbox)
        # The header name in another case is the same header.
        for mark in ("dev", "Version:dev"):
            second = MeshSession(kube, options(port, mark, holder="bo@desk"))
            with pytest.raises(MeshError) as refused:
                await second.check()
            message = str(refused.value)
            assert "\n" not in message
            assert "ana@laptop" in message and "pick another --version-mark" in message
            assert "`version: dev`" in message and "port 8080" in message
            # A crashed session holds the mark until its Lease expires: when that is.
            expires = re.search(r"if that `mesh` is gone, its Lease expires in (\d+)s", message)
            assert expires and 0 < int(expires[1]) <= m.LEASE_DURATION_SECONDS, message
            # join() stops at the same check, before it creates anything.
            with pytest.raises(MeshError):
                await second.join()
        assert await service_json(sandbox) == before_service
        assert await managed_objects(sandbox) == before_objects

        # Another value, or the same value under another header, is another mark.
        for mark in ("other", "kt-mark:dev"):
            await MeshSession(kube, options(port, mark, holder="bo@desk")).check()
    await kube.close()


async def test_two_service_ports_on_one_pod_port_are_the_same_port(sandbox: Sandbox) -> None:
    """The router routes by the pod's port: a mark on Service port 80 and the same mark on
    Service port 8080, both targeting the pod's port 8080, would collide there."""
    kube = kube_for(sandbox)
    async with local_server() as port:
        service = await kube.get("Service", "billing", "billing-api")
        assert service is not None
        service["spec"]["ports"].append({"name": "alt", "port": 80, "targetPort": "http"})
        await kube.replace("Service", "billing", "billing-api", service)
        await kube.create("Lease", "billing", lease_of(port, "dev", "ana@laptop", "a1b2c3"))
        second = MeshSession(
            kube, options(port, "dev", holder="bo@desk", exposed=parse_expose(f"{port}:80"))
        )
        with pytest.raises(MeshError) as refused:
            await second.check()
        message = str(refused.value)
        assert "ana@laptop" in message and "port 80 (pod port 8080)" in message, message
    await kube.close()


async def test_an_expired_lease_with_the_same_mark_does_not_block(sandbox: Sandbox) -> None:
    kube = kube_for(sandbox)
    async with local_server() as port:
        long_ago = datetime(2020, 1, 1, tzinfo=UTC)
        await kube.create(
            "Lease", "billing", lease_of(port, "dev", "ana@laptop", "d4e5f6", long_ago)
        )
        await MeshSession(kube, options(port, "dev", holder="bo@desk")).check()
    await kube.close()


async def test_the_same_mark_joined_at_once_the_later_session_is_told_who_holds_it(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two developers start the same mark at the same moment: both pass the check (neither
    Lease exists yet) and both join. The router routes the mark to the older session only,
    and answers the younger's question with who holds it, so its `mesh` stops at once.
    The holder's name is any text: the answer carries it whole."""
    kube = kube_for(sandbox)
    ana_holder = "anä@läptöp"
    async with local_server() as port, aiohttp.ClientSession() as http:
        connector = Connector(load_access(str(sandbox.kubeconfig_path)), http)
        ana = MeshSession(kube, options(port, "dev", holder=ana_holder))
        bo = MeshSession(kube, options(port, "dev", holder="bo@desk"))
        for session in (ana, bo):
            checked = await session.check()

            async def passed(checked: Checked = checked) -> Checked:
                return checked

            monkeypatch.setattr(session, "check", passed)
        first = await ana.join()
        second = await bo.join()
        with pytest.raises(MeshError) as refused:
            await wait_routed(connector, "billing", second, 30)
        message = str(refused.value)
        held = f"{ana_holder} (session {first.spec.name})"
        assert message.startswith(f"the mark version: dev is already routed to {held}, ")
        assert "choose another --version-mark" in message
        # A router pod the Service no longer selects (a retired one the garbage collector
        # has not removed yet) is Ready too, and first by name: `status` asks the selected.
        retired = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "a-retired-router",
                "namespace": "billing",
                "labels": {**m.router_selector("billing-api"), m.ORIGIN_UID_LABEL: "gone"},
            },
            "spec": {
                "containers": [
                    {
                        "name": "echo",  # answers 200 to any GET, /routed/... too
                        "image": image_for("http-echo"),
                        "ports": [{"name": "lm-health", "containerPort": 8080}],
                    }
                ]
            },
        }
        await kube.create("Pod", "billing", retired)
        await sandbox.wait_for(
            lambda: pod_ready(sandbox.store.peek(PODS, "billing", "a-retired-router")),
            30,
            "the retired router pod Ready",
        )
        watch = RoutedWatch(kube, connector, "billing", "billing-api", second.spec.name)
        try:
            answer = await watch.check()
        finally:
            await watch.stop()
        assert answer.held and answer.why == f"mark held by {held}", answer
        await kube.delete("Pod", "billing", "a-retired-router")
        # The older session is not held: it is told "not routed" (no tunnel here), no more.
        with pytest.raises(MeshError, match="did not route this session's mark within 1s"):
            await wait_routed(connector, "billing", first, 1)
        for session in (bo, ana):
            await session.leave()
    await wait_managed_gone(sandbox)
    await kube.close()
