"""Entries resolved from a namespace's synced services mirror, the API as the fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from localmesh.config import ServiceEntry
from localmesh.desired import Protocol
from localmesh.errors import TargetError
from localmesh.kube import Cluster, ServiceKey
from localmesh.kube.targets import ServiceInfo
from localmesh.sandbox import Sandbox, Scenario

pytestmark = pytest.mark.integration

SCENARIO = {
    "namespaces": ["shop"],
    "services": [
        {"name": "a", "namespace": "shop", "ports": [{"name": "http", "port": 80}]},
        {"name": "b", "namespace": "shop", "ports": [{"name": "http", "port": 81}]},
    ],
}


def entry(service: str, port_name: str = "http") -> ServiceEntry:
    return ServiceEntry(
        host=f"{service}.localhost",
        namespace="shop",
        service=service,
        protocol=Protocol.HTTP,
        port_name=port_name,
    )


def service(name: str, ports: dict[str, int]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"ports": [{"name": n, "port": p} for n, p in ports.items()]},
    }


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox.start(Scenario.from_dict(SCENARIO)) as sb:
        yield sb


@pytest.fixture
async def cluster(sandbox: Sandbox) -> AsyncIterator[Cluster]:
    connected = await asyncio.to_thread(Cluster.connect, str(sandbox.kubeconfig_path))
    yield connected
    await connected.close()


class CountingResolver:
    """Counts the API round trips `Cluster.watch` makes to resolve entries."""

    def __init__(self, cluster: Cluster) -> None:
        self.calls: list[str] = []
        self._resolve = cluster.resolve_async

        async def resolve(e: ServiceEntry) -> ServiceInfo:
            self.calls.append(e.service)
            return await self._resolve(e)

        cluster.resolve_async = resolve  # type: ignore[method-assign,assignment]


async def mirror_has(cluster: Cluster, name: str, port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            info = cluster._cached_info(entry(name))
            if info is not None and info.port.port == port:
                return
            await asyncio.sleep(0.01)


async def test_second_entry_of_a_namespace_needs_no_round_trip(cluster: Cluster) -> None:
    counter = CountingResolver(cluster)
    first = await cluster.watch(entry("a"))
    assert first.key == ServiceKey("shop", "a", 80)
    await mirror_has(cluster, "b", 81)
    second = await cluster.watch(entry("b"))
    assert second.key == ServiceKey("shop", "b", 81)
    assert counter.calls == ["a"]


async def test_what_the_mirror_lacks_is_asked_of_the_api(
    cluster: Cluster, sandbox: Sandbox
) -> None:
    await cluster.watch(entry("a"))
    await mirror_has(cluster, "b", 81)
    counter = CountingResolver(cluster)
    # A port the mirrored service does not have: the API's answer decides.
    with pytest.raises(TargetError, match="has no port 'grpc'; it has: http"):
        await cluster.watch(entry("b", "grpc"))
    # A service just created (the mirror may not have it yet): the same answer either way.
    sandbox.apply([service("c", {"http": 82, "grpc": 9090})])
    assert (await cluster.watch(entry("c", "grpc"))).key.port == 9090
    with pytest.raises(TargetError, match="not found"):
        await cluster.watch(entry("nope"))
    assert "b" in counter.calls and "nope" in counter.calls


async def test_mirrored_objects_keep_only_what_is_read(cluster: Cluster, sandbox: Sandbox) -> None:
    await cluster.watch(entry("a"))
    annotated = service("d", {"http": 83})
    annotated["metadata"] = {
        "name": "d",
        "namespace": "shop",
        "labels": {"team": "x"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}" * 500},
        "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {}}],
    }
    sandbox.apply([annotated])
    await mirror_has(cluster, "d", 83)
    stored = cluster._namespaces["shop"].services["d"]
    assert stored["metadata"]["labels"] == {"team": "x"}
    assert "annotations" not in stored["metadata"]
    assert "managedFields" not in stored["metadata"]
    assert (await cluster.watch(entry("d"))).key.port == 83
