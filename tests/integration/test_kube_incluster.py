"""The in-cluster agents' plain requests against the sandbox's API server, with a
ServiceAccount token and the router's RBAC: reads, watches, conflicts and refusals say
what the official client's path says."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest

from localmesh.clustermesh import manifests as m
from localmesh.errors import KubeError
from localmesh.kube.incluster import (
    SERVICEACCOUNT_DIR_ENV,
    incluster_objects,
    list_functions,
)
from localmesh.kube.objects import Conflict, KubeObjects
from localmesh.kube.reflector import Reflector
from localmesh.sandbox import Sandbox
from localmesh.sandbox.processes import write_service_account
from tests import sandbox_fixtures

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

NS, SERVICE = "billing", "billing-api"


@pytest.fixture
def router_pod_env(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The router's ServiceAccount and RBAC, and its token mounted as a kubelet would."""
    sandbox.apply(m.router_rbac(NS, SERVICE))
    node = sandbox.cluster.kubelet.node
    assert node is not None
    token = sandbox.service_account_token(NS, m.router_name(SERVICE))
    folder = write_service_account(tmp_path / "sa", token, node.ca_pem, NS)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", node.api_host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(node.api_port))
    monkeypatch.setenv(SERVICEACCOUNT_DIR_ENV, str(folder))
    return folder


async def test_reads_writes_and_refusals(router_pod_env: Path) -> None:
    kube = incluster_objects()
    try:
        service = await kube.get("Service", NS, SERVICE)
        assert service is not None and service["metadata"]["name"] == SERVICE
        assert await kube.get("Service", NS, m.origin_name(SERVICE)) is None  # 404 on GET
        stale = {**service, "metadata": {**service["metadata"], "resourceVersion": "1"}}
        with pytest.raises(Conflict):
            await kube.replace("Service", NS, SERVICE, stale)
        with pytest.raises(KubeError, match=r"forbidden by RBAC \(403\)"):
            await kube.get("Secret", NS, "anything")
    finally:
        await kube.close()


async def test_a_token_the_server_refuses_is_a_clear_error(router_pod_env: Path) -> None:
    (router_pod_env / "token").write_text("not-a-token")
    kube = incluster_objects()
    try:
        with pytest.raises(KubeError, match=r"rejected the credentials \(401 Unauthorized\)"):
            await kube.get("Service", NS, SERVICE)
    finally:
        await kube.close()


async def test_reflectors_list_then_watch_and_report_refusals(
    sandbox: Sandbox, router_pod_env: Path
) -> None:
    """The list calls go over the KubeObjects' own pool (one pool, closed with it)."""
    kube = incluster_objects()
    access = kube.access
    sent: list[str] = []
    plain_open = kube.plain.open

    def counted(method: str, path: str, **options: Any) -> Any:
        sent.append(path)
        return plain_open(method, path, **options)

    kube.plain.open = counted  # type: ignore[method-assign]
    lists = list_functions(kube)
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    selector = f"{m.managed_selector(SERVICE)},{m.COMPONENT_LABEL}=session"
    leases = Reflector(
        "Lease", lambda ns, **kw: lists["Lease"](ns, label_selector=selector, **kw), NS,
        lambda kind, payload: events.put_nowait((kind, payload)), loop=loop,
        server=access.server, context=None,
    )  # fmt: skip
    leases.start()
    admin = KubeObjects.connect(str(sandbox.kubeconfig_path))
    try:
        async with asyncio.timeout(30):
            assert await events.get() == ("SYNC", [])
            spec = m.SessionSpec(
                NS, SERVICE, "s1", "x-v", "dev", "dev", "me@host", (m.PortMap(9090, 8080, 8080),)
            )
            lease = m.session_lease(spec)
            await admin.create("Lease", NS, lease)
            kind, payload = await events.get()
            assert (kind, payload["metadata"]["name"]) == ("ADDED", lease["metadata"]["name"])
    finally:
        leases.stop()
        await leases.join()
        await admin.close()

    # Another namespace: the Role does not reach it, the watch says so (as ERROR).
    refused: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    pods = Reflector(
        "Pod", lists["Pod"], "default", lambda kind, payload: refused.put_nowait((kind, payload)),
        loop=loop, server=access.server, context=None,
    )  # fmt: skip
    pods.start()
    try:
        async with asyncio.timeout(30):
            kind, reason = await refused.get()
        assert kind == "ERROR" and "forbidden by RBAC (403)" in reason
    finally:
        pods.stop()
        await pods.join()
        await kube.close()
    assert f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases" in sent
    assert "/api/v1/namespaces/default/pods" in sent


def trust_other_cas(folder: Path) -> None:
    """The pod's ca.crt replaced by the system's CAs, none of which signed the server's."""
    (folder / "ca.crt").write_bytes(Path(ssl.get_default_verify_paths().cafile or "").read_bytes())


async def test_a_server_the_ca_does_not_vouch_for_is_a_tls_error(router_pod_env: Path) -> None:
    trust_other_cas(router_pod_env)
    kube = incluster_objects()
    try:
        with pytest.raises(KubeError, match="TLS failure talking to"):
            await kube.get("Service", NS, SERVICE)
    finally:
        await kube.close()
