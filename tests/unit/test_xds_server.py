"""The ADS server over a real unix socket, with a grpc.aio client playing Envoy."""

from __future__ import annotations

import asyncio
import dataclasses
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy_data_plane.envoy.config.cluster.v3 import Cluster
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from envoy_data_plane.google.rpc import Status

from localmesh.desired import DesiredState
from localmesh.xds import resources as rs
from localmesh.xds.cache import SnapshotCache
from localmesh.xds.server import ADS_SERVICE, XdsServer, start_server
from localmesh.xds.snapshot import build_snapshot
from tests.unit.test_xds_resources import MESH

CDS, EDS, LDS, RDS = rs.CLUSTER_TYPE, rs.ENDPOINT_TYPE, rs.LISTENER_TYPE, rs.ROUTE_TYPE
CLUSTERS = sorted(c.name for c in MESH.clusters)


class FakeEnvoy:
    """One ADS stream from the client side: write requests, read responses."""

    def __init__(self, channel: grpc.aio.Channel, node: str, *, delta: bool = False) -> None:
        method = "DeltaAggregatedResources" if delta else "StreamAggregatedResources"
        response_type = DeltaDiscoveryResponse if delta else DiscoveryResponse
        self.call: Any = channel.stream_stream(
            f"/{ADS_SERVICE}/{method}",
            request_serializer=bytes,
            response_deserializer=response_type.parse,
        )()
        self.node = node
        self.first = True

    def _node(self) -> Node | None:
        if self.first:
            self.first = False
            return Node(id=self.node)
        return None

    async def request(
        self,
        type_url: str,
        names: list[str] | None = None,
        nonce: str = "",
        error: str | None = None,
        version: str = "",
    ) -> None:
        await self.call.write(
            DiscoveryRequest(
                node=self._node(),
                type_url=type_url,
                resource_names=names or [],
                response_nonce=nonce,
                version_info=version,
                error_detail=Status(code=3, message=error) if error else None,
            )
        )

    async def delta(
        self,
        type_url: str,
        subscribe: list[str] | None = None,
        nonce: str = "",
        initial: dict[str, str] | None = None,
    ) -> None:
        await self.call.write(
            DeltaDiscoveryRequest(
                node=self._node(),
                type_url=type_url,
                resource_names_subscribe=subscribe or [],
                response_nonce=nonce,
                initial_resource_versions=initial or {},
            )
        )

    async def read(self) -> Any:
        async with asyncio.timeout(5):
            return await self.call.read()

    async def ack(self, response: DiscoveryResponse, names: list[str] | None = None) -> None:
        await self.request(
            response.type_url, names, nonce=response.nonce, version=response.version_info
        )

    async def sync(self) -> dict[str, DiscoveryResponse]:
        """Behave like Envoy until all four types are ACKed; returns the last responses."""
        last: dict[str, DiscoveryResponse] = {}
        await self.request(CDS)
        await self.request(LDS)
        while len(last) < 4:
            response = await self.read()
            last[response.type_url] = response
            names = None
            if response.type_url == CDS:
                names = sorted(Cluster.parse(a.value).name for a in response.resources)
                await self.request(EDS, names)
            elif response.type_url == LDS:
                await self.request(RDS, ["localmesh_routes"])
            elif response.type_url == EDS:
                names = sorted(CLUSTERS)
            elif response.type_url == RDS:
                names = ["localmesh_routes"]
            await self.ack(response, names)
        return last

    def close(self) -> None:
        self.call.cancel()


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[tuple[SnapshotCache, XdsServer, grpc.aio.Channel]]:
    cache = SnapshotCache(build_snapshot(MESH))
    server = await start_server(cache, tmp_path / "run" / "xds.sock")
    channel = grpc.aio.insecure_channel(f"unix:{server.socket_path}")
    try:
        yield cache, server, channel
    finally:
        await channel.close()
        await server.stop(0.5)


async def wait_status(cache: SnapshotCache, predicate: Any) -> None:
    async with asyncio.timeout(5):
        while not predicate(cache.status()):
            await cache.wait_changed()


async def test_sotw_push_and_ack(served: Any) -> None:
    cache, _, channel = served
    envoy = FakeEnvoy(channel, "node-a")
    last = await envoy.sync()
    clusters = [Cluster.parse(a.value) for a in last[CDS].resources]
    assert [c.name for c in clusters] == CLUSTERS
    assert all(a.type_url == CDS for a in last[CDS].resources)
    async with asyncio.timeout(5):
        await cache.wait_for_ack()
    (status,) = cache.status()
    assert status.node_id == "node-a" and status.in_sync and not status.delta
    envoy.close()


async def test_nack_is_recorded_and_not_resent(served: Any) -> None:
    cache, _, channel = served
    envoy = FakeEnvoy(channel, "node-a")
    await envoy.sync()
    smaller = build_snapshot(
        dataclasses.replace(
            MESH,
            clusters=MESH.clusters[:2] + MESH.clusters[2:],
            virtual_hosts=MESH.virtual_hosts[:1],
        ),
        cache.snapshot,
    )
    cache.set_snapshot(smaller)
    routes = await envoy.read()
    assert routes.type_url == RDS
    await envoy.request(RDS, ["localmesh_routes"], nonce=routes.nonce, error="no way")
    await wait_status(cache, lambda s: s[0].types[3].last_error == "no way")
    # Nothing is resent: the next thing on the stream answers the next request.
    await envoy.request(EDS, [*CLUSTERS, "unknown"], nonce="stale")
    follow = await envoy.read()
    assert follow.type_url == EDS
    assert cache.status()[0].types[3].nack_count == 1
    envoy.close()


async def test_stale_nonce_is_ignored(served: Any) -> None:
    cache, _, channel = served
    envoy = FakeEnvoy(channel, "node-a")
    await envoy.sync()
    await envoy.request(EDS, CLUSTERS, nonce="not-a-nonce", error="ignored")
    await envoy.request(LDS, nonce="not-a-nonce-either")
    # Neither request is answered; a growing subscription is.
    await envoy.request(EDS, [*CLUSTERS, "extra"], nonce="stale")
    response = await envoy.read()
    assert response.type_url == EDS
    assert all(t.last_error is None for t in cache.status()[0].types)
    envoy.close()


async def test_delta_announces_removals(served: Any) -> None:
    cache, _, channel = served
    envoy = FakeEnvoy(channel, "node-d", delta=True)
    await envoy.delta(CDS)
    first = await envoy.read()
    assert sorted(r.name for r in first.resources) == CLUSTERS
    assert all(r.version for r in first.resources)
    await envoy.delta(CDS, nonce=first.nonce)
    idle = "http.shop.idle.80"
    cache.set_snapshot(
        build_snapshot(
            dataclasses.replace(MESH, clusters=tuple(c for c in MESH.clusters if c.name != idle)),
            cache.snapshot,
        )
    )
    update = await envoy.read()
    assert update.removed_resources == [idle]
    assert update.resources == []
    envoy.close()


async def test_delta_reconnect_reports_versions_and_gets_only_changes(served: Any) -> None:
    cache, _, channel = served
    held = {n: r.version for n, r in cache.snapshot.resources(CDS).items()}
    held[CLUSTERS[0]] = "outdated"
    envoy = FakeEnvoy(channel, "node-d", delta=True)
    await envoy.delta(CDS, initial=held)
    response = await envoy.read()
    assert [r.name for r in response.resources] == [CLUSTERS[0]]
    envoy.close()


async def test_reconnect_and_two_nodes(served: Any) -> None:
    cache, _, channel = served
    a = FakeEnvoy(channel, "node-a")
    await a.sync()
    a.close()
    await wait_status(cache, lambda s: s == [])
    again = FakeEnvoy(channel, "node-a")
    b = FakeEnvoy(channel, "node-b")
    await again.sync()
    await b.sync()
    async with asyncio.timeout(5):
        await cache.wait_for_ack(streams=2)
    assert sorted(s.node_id for s in cache.status()) == ["node-a", "node-b"]
    # A change reaches both.
    cache.set_snapshot(build_snapshot(DesiredState.serving("127.0.0.1", 18080), cache.snapshot))
    routed = sorted(c for v in MESH.virtual_hosts for c in v.clusters)
    for envoy in (again, b):
        first = {r.type_url: r for r in [await envoy.read() for _ in range(3)]}
        assert set(first) == {CDS, EDS, RDS}
        # The unrouted cluster goes at once; routed ones stay until the routes are ACKed.
        kept = sorted(Cluster.parse(a.value).name for a in first[CDS].resources)
        assert kept == routed
    again.close()
    b.close()


async def test_socket_is_user_only_and_server_is_shareable(tmp_path: Path) -> None:
    calls: list[bytes] = []

    def register(server: grpc.aio.Server) -> None:
        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            calls.append(request)
            return request

        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
                ),
            )
        )

    cache = SnapshotCache()
    server = await start_server(
        cache, tmp_path / "d" / "xds.sock", services=[register], tcp_address="127.0.0.1:0"
    )
    try:
        assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.socket_path.parent.stat().st_mode) == 0o700
        assert server.tcp_port
        async with grpc.aio.insecure_channel(f"unix:{server.socket_path}") as channel:
            echo = channel.unary_unary("/test.Echo/Echo")
            assert await echo(b"hi") == b"hi"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.tcp_port}") as channel:
            envoy = FakeEnvoy(channel, "tcp")
            await envoy.request(CDS)
            assert (await envoy.read()).type_url == CDS
            envoy.close()
    finally:
        await server.stop(0.5)
    assert not server.socket_path.exists()
    assert calls == [b"hi"]
