"""localmesh.kube against the sandbox: entry resolution, errors, and ready-target watches."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localmesh.config import ServiceEntry
from localmesh.desired import Protocol
from localmesh.errors import KubeError, TargetError
from localmesh.kube import Cluster, Target, TargetUpdate
from localmesh.sandbox import Sandbox, Scenario

pytestmark = pytest.mark.integration

SCENARIO: dict[str, Any] = {
    "namespaces": ["shop", "empty"],
    "deployments": [
        {
            "name": "web",
            "namespace": "shop",
            "workload": "http-echo",
            "replicas": 3,
            "ports": [{"name": "http", "containerPort": 8080}],
        },
    ],
    "services": [
        {
            "name": "web",
            "namespace": "shop",
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "admin", "port": 81, "targetPort": 8080},
            ],
        },
        {
            "name": "web-headless",
            "namespace": "shop",
            "selector": {"app": "web"},
            "clusterIP": "None",
            "ports": [{"name": "http", "port": 8080, "targetPort": 8080}],
        },
        {"name": "manual", "namespace": "shop", "ports": [{"name": "http", "port": 80}]},
    ],
}

WAIT = 10.0


def entry(
    service: str = "web",
    namespace: str = "shop",
    port_name: str | None = "http",
    port: int | None = None,
) -> ServiceEntry:
    return ServiceEntry(
        host=f"{service}.localhost",
        namespace=namespace,
        service=service,
        protocol=Protocol.HTTP,
        port_name=port_name if port is None else None,
        port=port,
    )


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox.start(Scenario.from_dict(SCENARIO)) as sb:
        yield sb


@pytest.fixture
async def cluster(sandbox: Sandbox) -> AsyncIterator[Cluster]:
    connected = await asyncio.to_thread(Cluster.connect, str(sandbox.kubeconfig_path))
    yield connected
    await connected.close()


def edited_kubeconfig(sandbox: Sandbox, tmp_path: Path, edit: Any) -> str:
    document = yaml.safe_load(sandbox.kubeconfig_path.read_text())
    edit(document)
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def pod_targets(sandbox: Sandbox, port: int) -> frozenset[Target]:
    return frozenset(
        Target(p["metadata"]["name"], p["status"]["podIP"], port)
        for p in sandbox.service_pods("shop", "web")
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    )


async def wait_targets(watch: Any, wanted: frozenset[Target]) -> TargetUpdate:
    async with asyncio.timeout(WAIT):
        update: TargetUpdate = await watch.wait_for(lambda u: u.targets == wanted)
        return update


async def test_ports_resolve_by_name_and_by_number(cluster: Cluster) -> None:
    assert await asyncio.to_thread(cluster.resolve, entry(port_name="http")) == 80
    assert await asyncio.to_thread(cluster.resolve, entry(port=81)) == 81
    info = await cluster.resolve_async(entry(port_name="http"))
    assert info.port.target_port == "http"
    assert info.selector == {"app": "web"}


async def test_unknown_port_lists_the_available_ports(cluster: Cluster) -> None:
    with pytest.raises(TargetError) as caught:
        await asyncio.to_thread(cluster.resolve, entry(port_name="metrics"))
    message = str(caught.value)
    assert "web.localhost -> shop/web:metrics" in message
    assert "it has: http:80, admin:81" in message


async def test_missing_namespace_and_service_name_the_entry(cluster: Cluster) -> None:
    with pytest.raises(TargetError, match=r"web\.localhost -> nowhere/web:http: namespace "):
        await asyncio.to_thread(cluster.resolve, entry(namespace="nowhere"))
    with pytest.raises(TargetError) as caught:
        await asyncio.to_thread(cluster.resolve, entry(service="ghost", namespace="empty"))
    assert "ghost.localhost -> empty/ghost:http: service 'ghost' not found in namespace" in str(
        caught.value
    )


async def test_wrong_token_is_rejected_with_a_clear_error(sandbox: Sandbox, tmp_path: Path) -> None:
    def wrong_token(doc: Any) -> None:
        doc["users"][0]["user"]["token"] = "not-the-token"

    cluster = Cluster.connect(edited_kubeconfig(sandbox, tmp_path, wrong_token))
    try:
        with pytest.raises(TargetError) as caught:
            await asyncio.to_thread(cluster.resolve, entry())
    finally:
        await cluster.close()
    assert "web.localhost -> shop/web:http" in str(caught.value)
    assert "rejected the credentials (401 Unauthorized)" in str(caught.value)


async def test_untrusted_server_certificate_is_a_tls_failure(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    def no_ca(doc: Any) -> None:
        del doc["clusters"][0]["cluster"]["certificate-authority-data"]

    cluster = Cluster.connect(edited_kubeconfig(sandbox, tmp_path, no_ca))
    try:
        with pytest.raises(TargetError, match="TLS failure talking to the Kubernetes API server"):
            await asyncio.to_thread(cluster.resolve, entry())
    finally:
        await cluster.close()


async def test_unreachable_server_and_missing_kubeconfig(sandbox: Sandbox, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]

    def elsewhere(doc: Any) -> None:
        doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{closed_port}"

    cluster = Cluster.connect(edited_kubeconfig(sandbox, tmp_path, elsewhere))
    try:
        with pytest.raises(TargetError, match="cannot reach the Kubernetes API server"):
            await asyncio.to_thread(cluster.resolve, entry())
    finally:
        await cluster.close()
    with pytest.raises(KubeError, match="kubeconfig"):
        Cluster.connect(str(tmp_path / "missing"))


async def test_kubeconfig_env_with_several_paths_and_context(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # KUBECONFIG lists an unrelated file first; the sandbox's context is selected by name.
    other = tmp_path / "other"
    other.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "x", "user": {"token": "x"}}],
                "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", f"{other}:{sandbox.kubeconfig_path}")
    cluster = Cluster.connect(context="localmesh-sandbox")
    try:
        assert cluster.access.server == sandbox.url.rstrip("/")
        assert await asyncio.to_thread(cluster.resolve, entry()) == 80
    finally:
        await cluster.close()


async def test_watch_follows_readiness_and_pod_replacement(
    sandbox: Sandbox, cluster: Cluster
) -> None:
    watch = await cluster.watch(entry())
    await wait_targets(watch, pod_targets(sandbox, 8080))
    assert len(watch.targets) == 3

    first = sorted(watch.targets)[0]
    sandbox.faults.set_ready("shop", first.pod, False)
    await wait_targets(watch, frozenset(t for t in watch.targets if t != first))
    sandbox.faults.set_ready("shop", first.pod, None)
    await wait_targets(watch, pod_targets(sandbox, 8080))

    replacement = await sandbox.replace_pod("shop", first.pod)
    update = await wait_targets(watch, pod_targets(sandbox, 8080))
    assert replacement in {t.pod for t in update.targets}
    assert first.pod not in {t.pod for t in update.targets}


async def test_headless_and_selectorless_services(sandbox: Sandbox, cluster: Cluster) -> None:
    headless = await cluster.watch(entry("web-headless"))
    assert headless.info is not None and headless.info.headless
    await wait_targets(headless, pod_targets(sandbox, 8080))

    pod = sandbox.service_pods("shop", "web")[0]
    manual = await cluster.watch(entry("manual"))
    assert manual.info is not None and manual.info.selector is None
    sandbox.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": "manual", "namespace": "shop"},
                "subsets": [
                    {
                        "addresses": [{"ip": pod["status"]["podIP"]}],
                        "ports": [{"name": "http", "port": 8080}],
                    }
                ],
            }
        ]
    )
    wanted = frozenset({Target(pod["metadata"]["name"], pod["status"]["podIP"], 8080)})
    await wait_targets(manual, wanted)


async def test_watches_survive_an_apiserver_restart(sandbox: Sandbox, cluster: Cluster) -> None:
    watch = await cluster.watch(entry())
    await wait_targets(watch, pod_targets(sandbox, 8080))
    sandbox.faults.expire_watch_history()
    await sandbox.faults.restart_apiserver(0.3)
    # A change made after the restart only arrives if the watches came back.
    victim = sorted(watch.targets)[0].pod
    await sandbox.replace_pod("shop", victim)
    update = await wait_targets(watch, pod_targets(sandbox, 8080))
    assert victim not in {t.pod for t in update.targets}
    async with asyncio.timeout(WAIT):
        await watch.wait_for(lambda u: u.error is None)
