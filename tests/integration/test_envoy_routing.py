"""Routing through a real, supervised Envoy fed by localmesh's own xDS server.

Real clients only: curl for HTTP/1.1, a grpcio channel for gRPC (h2c), and one kept-alive
HTTP/1.1 connection that must survive every configuration change.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
import pytest

from localmesh.bootstrap import AdsMode
from localmesh.desired import Protocol
from localmesh.envoy import cluster_traffic
from localmesh.errors import ListenerBindError, NackedError
from localmesh.xds import resources as rs
from localmesh.xds.snapshot import build_snapshot
from tests.integration.backends import (
    GrpcBackend,
    HttpBackend,
    KeepAliveClient,
    curl,
    curl_json,
    eventually,
    grpc_health_check,
    grpc_list_services,
)
from tests.integration.conftest import ACK_WITHIN, SupervisedMesh, mesh_service, process_exists

pytestmark = pytest.mark.integration

HttpBackends = Callable[[str], Awaitable[HttpBackend]]
GrpcBackends = Callable[[str], Awaitable[GrpcBackend]]
BOTH_MODES = pytest.mark.parametrize(
    "supervised_mesh", list(AdsMode), ids=lambda m: m.value, indirect=True
)


@asynccontextmanager
async def grpc_channel(port: int, authority: str) -> AsyncIterator[grpc.aio.Channel]:
    """A gRPC channel to Envoy's listener that names `authority` as the service host."""
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.default_authority", authority)]
    )
    try:
        yield channel
    finally:
        await channel.close()


async def listener_connections(mesh: SupervisedMesh) -> int:
    """Downstream connections Envoy's mesh listener has accepted so far."""
    port = mesh.listener_port
    stats = await mesh.supervisor.stats(rf"^listener\.127\.0\.0\.1_{port}\.downstream_cx_total$")
    return int(stats.get(f"listener.127.0.0.1_{port}.downstream_cx_total", 0))


@BOTH_MODES
async def test_http_and_grpc_are_routed_by_host_and_authority(
    supervised_mesh: SupervisedMesh, http_backends: HttpBackends, grpc_backends: GrpcBackends
) -> None:
    mesh = supervised_mesh
    alpha, beta = await http_backends("alpha"), await http_backends("beta")
    ledger = await grpc_backends("ledger")
    await mesh.push(
        mesh_service("alpha", alpha.port),
        mesh_service("beta", beta.port),
        mesh_service("ledger", ledger.port, protocol=Protocol.GRPC),
    )
    await mesh.supervisor.wait_listening(mesh.listener_port)
    port = mesh.listener_port

    reply = await eventually(lambda: curl_json(port, "alpha.localhost", "/v1/items?x=1"))
    assert reply == {
        "backend": "alpha",
        "host": "alpha.localhost",
        "method": "GET",
        "path": "/v1/items?x=1",
    }
    assert (await curl_json(port, "beta.localhost"))["backend"] == "beta"
    # Like a browser: the name resolves to loopback and Host carries the port.
    via_resolve = await curl_json(port, "beta.localhost", resolve=True)
    assert via_resolve["backend"] == "beta"
    assert via_resolve["host"] == f"beta.localhost:{port}"
    status, _ = await curl(port, "nobody.localhost")
    assert status == 404

    async with grpc_channel(port, "ledger.localhost") as channel:
        assert await grpc_health_check(channel, ledger.service) == "SERVING"
        assert await grpc_list_services(channel) == sorted(
            ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", ledger.service]
        )
    async with grpc_channel(port, "alpha.localhost") as wrong_host:
        # The HTTP/1.1 backend cannot speak gRPC: the authority decides where a call goes.
        with pytest.raises(grpc.aio.AioRpcError):
            await grpc_health_check(wrong_host, ledger.service)

    traffic = cluster_traffic(await mesh.supervisor.stats())
    assert traffic["http.test.alpha.80"].requests == 2  # curl, and the misdirected call
    assert traffic["http.test.beta.80"].requests == 2
    assert traffic["grpc.test.ledger.80"].responses_2xx == 2


@BOTH_MODES
async def test_live_changes_keep_envoy_and_one_connection(
    supervised_mesh: SupervisedMesh, http_backends: HttpBackends, grpc_backends: GrpcBackends
) -> None:
    """Endpoint swaps, services added and removed: same Envoy, same client connections."""
    mesh = supervised_mesh
    a1, a2, gamma = [await http_backends(n) for n in ("a1", "a2", "gamma")]
    g1, g2 = await grpc_backends("g1"), await grpc_backends("g2")
    alpha_1 = mesh_service("alpha", a1.port)
    ledger_1 = mesh_service("ledger", g1.port, protocol=Protocol.GRPC)
    await mesh.push(alpha_1, ledger_1)
    await mesh.supervisor.wait_listening(mesh.listener_port)
    pid = mesh.supervisor.pid

    client = KeepAliveClient(mesh.listener_port)
    try:
        async with grpc_channel(mesh.listener_port, "ledger.localhost") as channel:
            # Envoy ACKs once its main thread took the change; workers follow a moment
            # later, so each step waits (bounded) for the traffic to show it.
            async def first() -> None:
                assert (await client.get("alpha.localhost"))["backend"] == "a1"
                assert await grpc_health_check(channel, g1.service) == "SERVING"

            await eventually(first)
            local_address = client.local_address

            # Endpoint swap (EDS only) for both protocols.
            alpha_2 = mesh_service("alpha", a2.port)
            ledger_2 = mesh_service("ledger", g2.port, protocol=Protocol.GRPC)
            await mesh.push(alpha_2, ledger_2)

            async def swapped() -> None:
                assert (await client.get("alpha.localhost"))["backend"] == "a2"
                assert await grpc_health_check(channel, g2.service) == "SERVING"

            await eventually(swapped)
            old_requests = (a1.requests, g1.requests)

            # A service added (CDS + EDS + RDS).
            gamma_svc = mesh_service("gamma", gamma.port)
            await mesh.push(alpha_2, ledger_2, gamma_svc)

            async def added() -> None:
                assert (await client.get("gamma.localhost"))["backend"] == "gamma"

            await eventually(added)

            # A service removed: its host is unknown again, on the same connection.
            await mesh.push(ledger_2, gamma_svc)

            async def removed() -> None:
                assert await client.status("alpha.localhost") == 404

            await eventually(removed)
            assert (await client.get("gamma.localhost"))["backend"] == "gamma"
            assert await grpc_health_check(channel, g2.service) == "SERVING"

            # Back again, and everything still on the first connections.
            await mesh.push(alpha_2, ledger_2, gamma_svc)

            async def back() -> None:
                assert (await client.get("alpha.localhost"))["backend"] == "a2"

            await eventually(back)
            assert client.local_address == local_address
            assert await listener_connections(mesh) == 2  # this client and the gRPC channel
    finally:
        client.close()
    assert mesh.supervisor.pid == pid
    assert mesh.supervisor.restart_count == 0
    assert (a1.requests, g1.requests) == old_requests  # the old endpoints got nothing more


async def test_invalid_resource_is_nacked_and_the_old_config_keeps_serving(
    supervised_mesh: SupervisedMesh, http_backends: HttpBackends
) -> None:
    mesh = supervised_mesh
    alpha = await http_backends("alpha")
    good = mesh_service("alpha", alpha.port)
    await mesh.push(good)
    await mesh.supervisor.wait_listening(mesh.listener_port)
    client = KeepAliveClient(mesh.listener_port)
    try:
        assert (await client.get("alpha.localhost"))["backend"] == "alpha"
        # A second virtual host with the same domain: well-formed, but Envoy refuses it.
        cluster, vhost = good
        clash = (cluster, type(vhost).to_cluster(vhost.host, cluster.name, Protocol.GRPC))
        bad = build_snapshot(mesh.mesh(good, clash), mesh.cache.snapshot)
        mesh.cache.set_snapshot(bad)
        with pytest.raises(NackedError, match=r"alpha\.localhost"):
            async with asyncio.timeout(ACK_WITHIN):
                await mesh.cache.wait_for_ack(bad.version)
        (stream,) = mesh.cache.status()
        routes = next(t for t in stream.types if t.type_url == rs.ROUTE_TYPE)
        assert routes.nack_count == 1
        assert routes.last_error is not None and "alpha.localhost" in routes.last_error

        # The last good config keeps serving, on the same connection and over new ones.
        assert (await client.get("alpha.localhost"))["backend"] == "alpha"
        assert (await curl_json(mesh.listener_port, "alpha.localhost"))["backend"] == "alpha"
        assert mesh.supervisor.restart_count == 0
        assert await listener_connections(mesh) == 2  # the kept-alive one and curl's
    finally:
        client.close()


@pytest.mark.parametrize("holder_reuses_port", [False, True], ids=["plain", "reuseport"])
async def test_taken_listener_port_is_nacked_and_reported(
    supervised_mesh: SupervisedMesh, http_backends: HttpBackends, holder_reuses_port: bool
) -> None:
    """Also when the holder binds with SO_REUSEPORT, as another Envoy (a second mesh) does:
    sharing the port would silently split connections between the two."""
    mesh = supervised_mesh
    alpha = await http_backends("alpha")
    with socket.socket() as holder:
        if holder_reuses_port:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        snapshot = mesh.set(mesh_service("alpha", alpha.port), listener_port=taken)
        with pytest.raises(NackedError, match="Address already in use"):
            async with asyncio.timeout(ACK_WITHIN):
                await mesh.cache.wait_for_ack(snapshot.version)
        with pytest.raises(ListenerBindError) as info:
            await mesh.supervisor.wait_listening(taken, within=ACK_WITHIN)
    error = info.value
    assert error.port == taken
    assert f"127.0.0.1:{taken}: Address already in use" in str(error)
    assert "listener_port" in str(error) and "--bind" in str(error)
    assert mesh.supervisor.running  # Envoy stays up, without the listener
    (stream,) = mesh.cache.status()
    listeners = next(t for t in stream.types if t.type_url == rs.LISTENER_TYPE)
    assert listeners.last_error is not None and "cannot bind" in listeners.last_error

    # Pointed at a free port, the same services are accepted and served.
    await mesh.push(mesh_service("alpha", alpha.port))
    await mesh.supervisor.wait_listening(mesh.listener_port)
    reply = await eventually(lambda: curl_json(mesh.listener_port, "alpha.localhost"))
    assert reply["backend"] == "alpha"


async def test_killed_envoy_is_restarted_and_resyncs_from_the_cache(
    supervised_mesh: SupervisedMesh, http_backends: HttpBackends, grpc_backends: GrpcBackends
) -> None:
    mesh = supervised_mesh
    alpha = await http_backends("alpha")
    ledger = await grpc_backends("ledger")
    await mesh.push(
        mesh_service("alpha", alpha.port),
        mesh_service("ledger", ledger.port, protocol=Protocol.GRPC),
    )
    await mesh.supervisor.wait_listening(mesh.listener_port)
    reply = await eventually(lambda: curl_json(mesh.listener_port, "alpha.localhost"))
    assert reply["backend"] == "alpha"
    first = mesh.supervisor.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    async def restarted() -> None:
        assert mesh.supervisor.restart_count == 1
        assert mesh.supervisor.pid not in (None, first)

    await eventually(restarted, within=10)
    await mesh.supervisor.wait_ready(within=ACK_WITHIN)
    async with asyncio.timeout(ACK_WITHIN):
        await mesh.cache.wait_for_ack()
    await mesh.supervisor.wait_listening(mesh.listener_port)
    reply = await eventually(lambda: curl_json(mesh.listener_port, "alpha.localhost"))
    assert reply["backend"] == "alpha"
    async with grpc_channel(mesh.listener_port, "ledger.localhost") as channel:
        assert await grpc_health_check(channel, ledger.service) == "SERVING"
    assert mesh.supervisor.last_exit == "killed by SIGKILL"
    assert not process_exists(first)


async def test_stop_ends_envoy_and_its_xds_stream(
    supervised_mesh: SupervisedMesh, http_backends: HttpBackends
) -> None:
    mesh = supervised_mesh
    alpha = await http_backends("alpha")
    await mesh.push(mesh_service("alpha", alpha.port))
    await mesh.supervisor.wait_listening(mesh.listener_port)
    reply = await eventually(lambda: curl_json(mesh.listener_port, "alpha.localhost"))
    assert reply["backend"] == "alpha"
    pid = mesh.supervisor.pid
    assert pid is not None and len(mesh.cache.status()) == 1
    await mesh.supervisor.stop()
    assert not process_exists(pid)
    assert mesh.supervisor.pid is None

    async def stream_closed() -> None:
        assert mesh.cache.status() == []

    await eventually(stream_closed)
    with pytest.raises(AssertionError, match="curl failed"):
        await curl(mesh.listener_port, "alpha.localhost")
