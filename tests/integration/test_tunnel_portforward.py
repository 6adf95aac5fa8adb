"""The reverse tunnel through the project's port-forwarder against the sandbox cluster.

The sandbox does not run localmesh's image yet, so the shadow agent runs as a subprocess
bound to the loopback IP the sandbox gave a pod whose image runs nothing: the API server's
port-forward to that pod's tunnel port then reaches the real agent, as a kubelet would.
Clients connect to the agent's exposed port on the pod IP, as the router would.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from localmesh.clustermesh import tunnel_wire
from localmesh.clustermesh.tunnel_laptop import PortForwardDialer
from localmesh.forward import Connector
from localmesh.kube import load_access
from localmesh.sandbox import Sandbox, Scenario
from tests import sandbox_fixtures
from tests.integration.backends import GrpcBackend, HttpBackend, grpc_health_check
from tests.integration.tunnel_helpers import (
    LOOPBACK,
    ShadowFactory,
    TunnelFactory,
    curl_at,
    raw_exchange,
    shadows,
    tcp_server,
    tunnels,
    wait_until,
)

pytestmark = pytest.mark.integration
sandbox_factory = sandbox_fixtures.sandbox_factory
__all__ = ["sandbox_factory", "shadows", "tunnels"]

NAMESPACE = "billing"
POD = "billing-api-lm-shadow-dev"
REMOTE = 8080
TUNNEL = tunnel_wire.DEFAULT_TUNNEL_PORT
BIG = 20 * 1024 * 1024

SCENARIO: dict[str, Any] = {
    "namespaces": [NAMESPACE],
    "objects": [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": POD, "namespace": NAMESPACE, "labels": {"app": "shadow"}},
            # An image the sandbox runs nothing for: the agent is the subprocess below.
            "spec": {"containers": [{"name": "shadow", "image": "localmesh.dev/localmesh:dev"}]},
        }
    ],
}


@pytest.fixture
async def cluster(sandbox_factory: sandbox_fixtures.SandboxFactory) -> Sandbox:
    return await sandbox_factory(Scenario.from_dict(SCENARIO))


@pytest.fixture
async def connector(cluster: Sandbox) -> AsyncIterator[Connector]:
    access = load_access(str(cluster.kubeconfig_path))
    async with aiohttp.ClientSession() as session:
        yield Connector(access, session)


async def pod_ip(cluster: Sandbox) -> str:
    def running_ip() -> str | None:
        found = [p for p in cluster.pods(NAMESPACE) if p["metadata"]["name"] == POD]
        status = found[0].get("status", {}) if found else {}
        return str(status["podIP"]) if status.get("phase") == "Running" else None

    return str(await cluster.wait_for(running_ip, seconds=20, what="the shadow pod running"))


async def test_http_grpc_and_large_bodies_through_the_port_forward(
    cluster: Sandbox, connector: Connector, shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    ip = await pod_ip(cluster)
    secret = tunnel_wire.new_secret()
    grpc_remote = REMOTE + 1
    await shadows(secret, [REMOTE, grpc_remote], bind=ip, tunnel_bind=ip, tunnel_port=TUNNEL)
    async with HttpBackend("laptop") as web_backend, GrpcBackend("laptop") as grpc_backend:
        dialer = PortForwardDialer(connector, NAMESPACE, POD, TUNNEL)
        client = await tunnels(
            dialer, secret, {REMOTE: web_backend.port, grpc_remote: grpc_backend.port}
        )
        status, body = await curl_ip(ip, REMOTE, "/hello")
        assert status == 200 and b'"backend": "laptop"' in body
        async with grpc.aio.insecure_channel(f"{ip}:{grpc_remote}") as channel:
            assert await grpc_health_check(channel, grpc_backend.service) == "SERVING"
        assert dialer.forwarder.stats.connections >= 1  # the port-forwarder carried them
        assert client.stats.served == 2


async def test_large_bodies_both_ways_through_the_port_forward(
    cluster: Sandbox, connector: Connector, shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    ip = await pod_ip(cluster)
    secret = tunnel_wire.new_secret()
    await shadows(secret, [REMOTE], bind=ip, tunnel_bind=ip, tunnel_port=TUNNEL)

    async def digest_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Reads exactly BIG bytes (no half-close: the port-forwarder ends a connection whose
        # pod side sends FIN first, so the client keeps its side open here).
        body = await reader.readexactly(BIG)
        digest = hashlib.sha256(body).digest()
        writer.write(digest + digest * (BIG // 32))
        await writer.drain()
        writer.close()

    async with tcp_server(digest_then_reply) as local_port:
        dialer = PortForwardDialer(connector, NAMESPACE, POD, TUNNEL)
        client = await tunnels(dialer, secret, {REMOTE: local_port})
        payload = os.urandom(BIG)
        answer, was_reset = await raw_exchange((ip, REMOTE), payload, half_close=False)
    digest = hashlib.sha256(payload).digest()
    assert not was_reset
    assert answer == digest + digest * (BIG // 32)
    assert client.stats.bytes_in == BIG and client.stats.bytes_out == len(answer)


async def test_broken_port_forward_recovers_by_itself(
    cluster: Sandbox, connector: Connector, shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    ip = await pod_ip(cluster)
    secret = tunnel_wire.new_secret()
    await shadows(secret, [REMOTE], bind=ip, tunnel_bind=ip, tunnel_port=TUNNEL)
    async with HttpBackend("laptop") as backend:
        dialer = PortForwardDialer(connector, NAMESPACE, POD, TUNNEL)
        client = await tunnels(dialer, secret, {REMOTE: backend.port})
        stats = client.stats
        assert (await curl_ip(ip, REMOTE))[0] == 200
        opened = stats.opened
        # Every port-forward connection drops; the API server is back after a moment.
        await cluster.faults.restart_apiserver(downtime=1.0)
        await wait_until(lambda: stats.lost_idle >= 1, "idle tunnel connections lost")
        await wait_until(
            lambda: client.ready and stats.opened > opened, "the pool refilled", seconds=30
        )
        status, body = await curl_ip(ip, REMOTE, "/after")
        assert status == 200 and b'"/after"' in body
        assert backend.requests == 2


async def test_one_websocket_per_connection_mode(
    cluster: Sandbox, connector: Connector, shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    """API servers without the multiplexed port-forward: one websocket per tunnel
    connection (no half-close there, so plain request/response only)."""
    ip = await pod_ip(cluster)
    secret = tunnel_wire.new_secret()
    await shadows(secret, [REMOTE], bind=ip, tunnel_bind=ip, tunnel_port=TUNNEL)
    async with HttpBackend("laptop") as backend:
        dialer = PortForwardDialer(connector, NAMESPACE, POD, TUNNEL, multiplex=False)
        await tunnels(dialer, secret, {REMOTE: backend.port})
        for i in range(5):
            status, body = await curl_ip(ip, REMOTE, f"/v4/{i}")
            assert status == 200 and f'"/v4/{i}"'.encode() in body
        assert dialer.forwarder.stats.tunnels >= 5  # websockets, not one session


async def curl_ip(ip: str, port: int, path: str = "/") -> tuple[int, bytes]:
    return await curl_at(ip, port, "billing-api", path)


async def test_websocket_and_concurrent_connections_through_the_port_forward(
    cluster: Sandbox, connector: Connector, shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    ip = await pod_ip(cluster)
    secret = tunnel_wire.new_secret()
    await shadows(secret, [REMOTE], bind=ip, tunnel_bind=ip, tunnel_port=TUNNEL)

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await ws.send_str(msg.data[::-1])
            return ws
        await asyncio.sleep(0.2)  # slow answers: many connections open at once
        return web.Response(text=request.path)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.SockSite(runner, socket.create_server((LOOPBACK, 0)))
    await site.start()
    local_port = runner.addresses[0][1]
    try:
        client = await tunnels(
            PortForwardDialer(connector, NAMESPACE, POD, TUNNEL), secret, {REMOTE: local_port}
        )
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"http://{ip}:{REMOTE}/ws") as ws,
        ):
            for word in ("marked", "request"):
                await ws.send_str(word)
                assert await ws.receive_str() == word[::-1]
        connector_ = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector_) as http:

            async def one(i: int) -> str:
                async with http.get(f"http://{ip}:{REMOTE}/c/{i}") as r:
                    assert r.status == 200
                    return await r.text()

            answers = await asyncio.gather(*(one(i) for i in range(100)))
        assert sorted(answers) == sorted(f"/c/{i}" for i in range(100))
        assert client.stats.served == 101 and client.stats.open_failures == 0
    finally:
        await runner.cleanup()


async def test_tunnel_started_before_the_agent_says_why_then_connects(
    cluster: Sandbox, connector: Connector, shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    """The pod runs but its agent is not listening yet: the pool reports the pod side's
    refusal, backs off, and connects once the agent is up."""
    ip = await pod_ip(cluster)
    secret = tunnel_wire.new_secret()
    async with HttpBackend("laptop") as backend:
        dialer = PortForwardDialer(connector, NAMESPACE, POD, TUNNEL)
        client = await tunnels(dialer, secret, {REMOTE: backend.port}, ready=False)
        await wait_until(lambda: client.stats.open_failures >= 2, "refused opens")
        state = client.state
        assert state.startswith(f"reconnecting (no answer from the shadow at {NAMESPACE}/{POD}:")
        assert str(TUNNEL) in state and "refused" in state, state
        await shadows(secret, [REMOTE], bind=ip, tunnel_bind=ip, tunnel_port=TUNNEL)
        await wait_until(lambda: client.ready, "the pool connected", seconds=30)
        status, body = await curl_ip(ip, REMOTE, "/late")
        assert status == 200 and b'"/late"' in body
