"""The control plane against the real Envoy binary: pushes, ACKs, NACKs, reconnects."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localmesh.bootstrap import AdsMode, BootstrapOptions, build_bootstrap
from localmesh.desired import (
    DEFAULT_LISTENER_NAME,
    DEFAULT_ROUTE_CONFIG_NAME,
    ClusterSpec,
    DesiredState,
    Endpoint,
    Protocol,
    VirtualHostSpec,
    cluster_name,
)
from localmesh.errors import NackedError
from localmesh.xds import resources as rs
from localmesh.xds.cache import SnapshotCache
from localmesh.xds.server import XdsServer, start_server
from localmesh.xds.snapshot import Snapshot, build_snapshot
from tests.integration.xds_helpers import (
    EnvoyProcess,
    free_port,
    http_backend,
    http_get,
    run_envoy,
    wait_until,
)

pytestmark = pytest.mark.integration

ACK_WITHIN = 10.0


@dataclass
class Plane:
    cache: SnapshotCache
    server: XdsServer
    envoy: EnvoyProcess
    listener_port: int

    async def push(self, mesh: DesiredState) -> Snapshot:
        snapshot = build_snapshot(mesh, self.cache.snapshot)
        self.cache.set_snapshot(snapshot)
        async with asyncio.timeout(ACK_WITHIN):
            await self.cache.wait_for_ack(snapshot.version)
        return snapshot

    async def get(self, host: str) -> tuple[int, bytes]:
        return await asyncio.to_thread(http_get, self.listener_port, host)


@pytest.fixture(params=list(AdsMode), ids=lambda m: m.value)
async def plane(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Plane]:
    cache = SnapshotCache()
    socket_path = tmp_path / "run" / "xds.sock"
    server = await start_server(cache, socket_path)
    bootstrap = build_bootstrap(
        BootstrapOptions(xds_socket_path=str(socket_path), ads_mode=request.param)
    )
    plane = None
    try:
        async with run_envoy(tmp_path, bootstrap) as envoy:
            plane = Plane(cache, server, envoy, free_port())
            yield plane
    finally:
        # Envoy is stopped first; the server may have been replaced by the test.
        await (plane.server if plane else server).stop(1.0)


def service(
    name: str, port: int, protocol: Protocol = Protocol.HTTP
) -> tuple[ClusterSpec, VirtualHostSpec]:
    cluster = cluster_name("dev", name, 80, protocol)
    return (
        ClusterSpec(cluster, protocol, (Endpoint("127.0.0.1", port, f"{name}-0"),)),
        VirtualHostSpec.to_cluster(f"{name}.localhost", cluster, protocol),
    )


def mesh_of(port: int, *services: tuple[ClusterSpec, VirtualHostSpec]) -> DesiredState:
    return DesiredState.serving(
        "127.0.0.1",
        port,
        clusters=tuple(c for c, _ in services),
        virtual_hosts=tuple(v for _, v in services),
    )


async def test_push_is_acked_and_served(plane: Plane) -> None:
    async with http_backend(b"billing") as billing, http_backend(b"orders") as orders:
        mesh = mesh_of(
            plane.listener_port,
            service("billing", billing),
            service("orders", orders, Protocol.GRPC),
        )
        await plane.push(mesh)
        names = await plane.envoy.dynamic_names()
        assert names["clusters"] == {c.name for c in mesh.clusters}
        assert names["listeners"] == {DEFAULT_LISTENER_NAME}
        assert names["routes"] == {DEFAULT_ROUTE_CONFIG_NAME}
        endpoints = await plane.envoy.cluster_endpoints()
        assert endpoints[mesh.clusters[0].name] == {billing}
        assert await plane.get("billing.localhost") == (200, b"billing")
        assert await plane.get(f"billing.localhost:{plane.listener_port}") == (200, b"billing")
        assert (await plane.get("nobody.localhost"))[0] == 404
        (status,) = plane.cache.status()
        assert status.in_sync and all(t.last_error is None for t in status.types)


async def test_endpoint_swap_and_service_changes_without_restart(plane: Plane) -> None:
    async with http_backend(b"v1") as v1, http_backend(b"v2") as v2, http_backend(b"new") as new:
        pid = plane.envoy.process.pid
        billing, billing_host = service("billing", v1)
        await plane.push(mesh_of(plane.listener_port, (billing, billing_host)))
        assert await plane.get("billing.localhost") == (200, b"v1")
        swapped = dataclasses.replace(billing, endpoints=(Endpoint("127.0.0.1", v2, "billing-1"),))
        await plane.push(mesh_of(plane.listener_port, (swapped, billing_host)))
        assert await plane.get("billing.localhost") == (200, b"v2")
        added = service("search", new)
        await plane.push(mesh_of(plane.listener_port, (swapped, billing_host), added))
        assert await plane.get("search.localhost") == (200, b"new")
        await plane.push(mesh_of(plane.listener_port, added))
        assert (await plane.get("billing.localhost"))[0] == 404
        assert (await plane.envoy.dynamic_names())["clusters"] == {added[0].name}
        assert plane.envoy.process.pid == pid and plane.envoy.process.returncode is None


async def test_nack_keeps_the_old_config_serving(plane: Plane) -> None:
    async with http_backend(b"billing") as billing:
        good = mesh_of(plane.listener_port, service("billing", billing))
        await plane.push(good)
        # Two virtual hosts with one domain: valid messages, but Envoy rejects the routes.
        dup_vhost = VirtualHostSpec.to_cluster(
            "billing.localhost", good.clusters[0].name, Protocol.GRPC
        )
        duplicate = dataclasses.replace(good, virtual_hosts=(*good.virtual_hosts, dup_vhost))
        bad = build_snapshot(duplicate, plane.cache.snapshot)
        plane.cache.set_snapshot(bad)
        with pytest.raises(NackedError, match=r"billing\.localhost"):
            async with asyncio.timeout(ACK_WITHIN):
                await plane.cache.wait_for_ack(bad.version)
        (status,) = plane.cache.status()
        routes = status.types[3]
        assert routes.type_url == rs.ROUTE_TYPE
        assert routes.nack_count == 1 and routes.last_error
        assert "billing.localhost" in routes.last_error
        assert await plane.get("billing.localhost") == (200, b"billing")
        # Fixing the input is pushed and ACKed; the error is cleared.
        fixed = mesh_of(plane.listener_port, service("billing", billing), service("other", billing))
        await plane.push(fixed)
        assert plane.cache.status()[0].types[3].last_error is None
        assert await plane.get("other.localhost") == (200, b"billing")


async def test_envoy_resyncs_after_a_control_plane_restart(plane: Plane) -> None:
    async with http_backend(b"one") as one, http_backend(b"two") as two:
        await plane.push(mesh_of(plane.listener_port, service("svc", one)))
        await plane.server.stop(0.5)
        await wait_until(lambda: plane.cache.status() == [], what="stream closed")
        # While the control plane is away Envoy keeps serving.
        assert await plane.get("svc.localhost") == (200, b"one")
        plane.server = await start_server(plane.cache, plane.server.socket_path)
        changed = build_snapshot(
            mesh_of(plane.listener_port, service("svc", two)), plane.cache.snapshot
        )
        plane.cache.set_snapshot(changed)
        async with asyncio.timeout(ACK_WITHIN):
            await plane.cache.wait_for_ack(changed.version)
        assert await plane.get("svc.localhost") == (200, b"two")


async def statuses_while_pushing(
    plane: Plane, host: str, snapshot: Snapshot, until: int = 200
) -> list[int]:
    """Request `host` back to back while `snapshot` is pushed, until it answers `until`."""
    seen: list[int] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            seen.append((await plane.get(host))[0])

    prober = asyncio.create_task(probe(), name="probe")
    try:
        await wait_until(lambda: len(seen) > 0, what="first probe")
        plane.cache.set_snapshot(snapshot)
        async with asyncio.timeout(ACK_WITHIN):
            await plane.cache.wait_for_ack(snapshot.version)
        await wait_until(lambda: seen[-1] == until, what=f"{host} to answer {until}")
    finally:
        done.set()
        await prober
    return seen


async def test_new_service_never_answers_503_while_it_is_added(plane: Plane) -> None:
    """Routes reach Envoy only after their cluster is warm: 404 until then, never 503."""
    async with http_backend(b"base") as base, http_backend(b"fresh") as fresh:
        services = [service("base", base)]
        await plane.push(mesh_of(plane.listener_port, *services))
        for round_ in range(3):
            services.append(service(f"fresh{round_}", fresh))
            snapshot = build_snapshot(mesh_of(plane.listener_port, *services), plane.cache.snapshot)
            seen = await statuses_while_pushing(plane, f"fresh{round_}.localhost", snapshot)
            assert set(seen) <= {404, 200}, seen


async def test_removed_service_answers_404_never_503(plane: Plane) -> None:
    """Routes drop a cluster before the cluster goes: 200 until then 404, never 503."""
    async with http_backend(b"x") as backend:
        services = [service(f"gone{i}", backend) for i in range(3)]
        await plane.push(mesh_of(plane.listener_port, *services))
        while services:
            removed = services.pop()
            host = f"{removed[1].host}"
            snapshot = build_snapshot(mesh_of(plane.listener_port, *services), plane.cache.snapshot)
            seen = await statuses_while_pushing(plane, host, snapshot, until=404)
            assert set(seen) <= {200, 404}, seen
