"""The reverse tunnel end to end on loopback: the real `localmesh agent shadow` process, this
machine's TunnelClient dialing its tunnel port over plain TCP, real clients (curl, grpcio,
aiohttp websockets) on the shadow's exposed port, real servers as "the local process"."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web

from localmesh.clustermesh import tunnel_wire
from localmesh.clustermesh.tunnel_laptop import DEFAULT_POOL, TcpDialer, TunnelClient
from tests.integration.backends import (
    GrpcBackend,
    HttpBackend,
    curl_json,
    grpc_health_check,
    grpc_list_services,
)
from tests.integration.conftest import free_port
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
__all__ = ["shadows", "tunnels"]

BIG = 20 * 1024 * 1024


async def start_pair(
    shadows: ShadowFactory,
    tunnels: TunnelFactory,
    local_port: int,
    *,
    wait: float = 30.0,
    pool: int = DEFAULT_POOL,
) -> tuple[int, TunnelClient]:
    """A shadow exposing one port, and a ready tunnel carrying it to `local_port`."""
    secret = tunnel_wire.new_secret()
    remote, tunnel_port = free_port(), free_port()
    await shadows(secret, [remote], tunnel_port=tunnel_port, wait=wait)
    client = await tunnels(
        TcpDialer(LOOPBACK, tunnel_port), secret, {remote: local_port}, pool=pool
    )
    return remote, client


async def test_http_requests_reach_the_local_process(
    shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    async with HttpBackend("laptop") as backend:
        remote, client = await start_pair(shadows, tunnels, backend.port)
        for i in range(3):
            answer = await curl_json(remote, "billing-api.billing", f"/n/{i}")
            assert answer["backend"] == "laptop"
            assert answer["host"] == "billing-api.billing"  # Host kept end to end
            assert answer["path"] == f"/n/{i}"
    stats = client.stats
    assert stats.served == 3 and stats.per_port == {remote: 3}
    assert stats.local_failures == 0 and stats.bytes_in > 0 and stats.bytes_out > 0


async def test_keep_alive_connection_stays_one_tunnel_connection(
    shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    async with HttpBackend("laptop") as backend:
        remote, client = await start_pair(shadows, tunnels, backend.port)
        async with aiohttp.ClientSession() as http:
            for _ in range(20):
                async with http.get(f"http://{LOOPBACK}:{remote}/") as r:
                    assert r.status == 200
        assert backend.requests == 20
        assert client.stats.served == 1


async def test_grpc_over_h2c_unary_and_streaming(
    shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    async with GrpcBackend("laptop") as backend:
        remote, _ = await start_pair(shadows, tunnels, backend.port)
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{remote}") as channel:
            assert await grpc_health_check(channel, backend.service) == "SERVING"
            # Server reflection is a bidirectional stream.
            assert backend.service in await grpc_list_services(channel)
        assert backend.requests == 2


async def test_websocket_both_ways(shadows: ShadowFactory, tunnels: TunnelFactory) -> None:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello from the laptop")  # the server speaks first
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data.upper())
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(hashlib.sha256(msg.data).digest())
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    local_port = free_port()
    await web.TCPSite(runner, LOOPBACK, local_port).start()
    try:
        remote, _ = await start_pair(shadows, tunnels, local_port)
        blob = os.urandom(3 * 1024 * 1024)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"http://{LOOPBACK}:{remote}/ws", max_msg_size=0) as ws,
        ):
            assert await ws.receive_str() == "hello from the laptop"
            for word in ("mark", "dev"):
                await ws.send_str(word)
                assert await ws.receive_str() == word.upper()
            await ws.send_bytes(blob)
            assert await ws.receive_bytes() == hashlib.sha256(blob).digest()
    finally:
        await runner.cleanup()


async def test_large_bodies_both_ways_with_curl(
    shadows: ShadowFactory, tunnels: TunnelFactory, tmp_path: Path
) -> None:
    async def upload(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        digest = hashlib.sha256(body).hexdigest()
        # Answer with a different 20 MB: its hash comes in a header.
        reply = hashlib.sha256(body).digest() * (BIG // 32)
        return web.Response(body=reply, headers={"x-upload-sha256": digest})

    app = web.Application(client_max_size=BIG + 1)
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app)
    await runner.setup()
    local_port = free_port()
    await web.TCPSite(runner, LOOPBACK, local_port).start()
    try:
        remote, client = await start_pair(shadows, tunnels, local_port)
        sent = tmp_path / "sent"
        sent.write_bytes(os.urandom(BIG))
        received = tmp_path / "received"
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--max-time", "60", "-D", "-", "-o", str(received),
            "--data-binary", f"@{sent}", f"http://{LOOPBACK}:{remote}/upload",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        sent_digest = hashlib.sha256(sent.read_bytes()).digest()
        assert f"x-upload-sha256: {sent_digest.hex()}" in out.decode().lower()
        assert received.read_bytes() == sent_digest * (BIG // 32)
        stats = client.stats
        assert stats.bytes_in > BIG and stats.bytes_out > BIG
    finally:
        await runner.cleanup()


async def test_half_close_carries_the_answer_back(
    shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    """The client sends 20 MB and shuts down its sending side; the local process reads to
    the end and only then answers (20 MB): the FIN went through, the way back stayed open."""

    async def digest_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await reader.read()  # until the client's FIN
        digest = hashlib.sha256(body).digest()
        writer.write(digest + digest * (BIG // 32))
        await writer.drain()
        writer.close()

    async with tcp_server(digest_then_reply) as local_port:
        remote, _ = await start_pair(shadows, tunnels, local_port)
        payload = os.urandom(BIG)
        answer, was_reset = await raw_exchange((LOOPBACK, remote), payload)
    digest = hashlib.sha256(payload).digest()
    assert not was_reset
    assert answer == digest + digest * (BIG // 32)


async def test_many_concurrent_connections_grow_the_pool(
    shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    count = 300
    async with HttpBackend("laptop") as backend:
        remote, client = await start_pair(shadows, tunnels, backend.port)
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def one(i: int) -> str:
                # Slow answers keep many connections open at the same time.
                url = f"http://{LOOPBACK}:{remote}/r/{i}?delay=0.3"
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=60)) as r:
                    assert r.status == 200
                    return str((await r.json())["path"])

            paths = await asyncio.gather(*(one(i) for i in range(count)))
        assert sorted(paths) == sorted(f"/r/{i}?delay=0.3" for i in range(count))
    stats = client.stats
    assert stats.served == count
    assert client.pool_target > DEFAULT_POOL
    assert stats.open_failures == 0 and stats.local_failures == 0


async def test_local_process_down_resets_promptly_and_is_recorded(
    shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    local_port = free_port()  # nothing listens here yet
    # The shadow would wait 120 s for a tunnel: a prompt reset comes from the local refusal.
    remote, client = await start_pair(shadows, tunnels, local_port, wait=120.0)
    request = b"GET / HTTP/1.1\r\nHost: billing-api\r\n\r\n"
    async with asyncio.timeout(30):
        answer, was_reset = await raw_exchange((LOOPBACK, remote), request, half_close=False)
    assert (answer, was_reset) == (b"", True)  # reset before any response byte
    stats = client.stats
    assert stats.local_failures == 1 and stats.local_down == {local_port}
    assert f"local port {local_port}" in (stats.last_local_error or "")
    assert client.state == (
        f"connected; local port {local_port} not answering (marked requests get 503)"
    )

    # The process comes back: served again, and no longer reported down.
    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nup")
        await writer.drain()
        writer.close()

    async with tcp_server(hello, local_port):
        answer, was_reset = await raw_exchange((LOOPBACK, remote), request, half_close=False)
    assert not was_reset and answer.endswith(b"\r\n\r\nup")
    assert stats.local_down == set() and stats.served == 1
    assert client.state == "connected"


async def test_no_tunnel_connection_resets_after_wait(shadows: ShadowFactory) -> None:
    remote = free_port()
    shadow = await shadows(tunnel_wire.new_secret(), [remote], tunnel_port=free_port(), wait=0.5)
    answer, was_reset = await raw_exchange((LOOPBACK, remote), b"GET / HTTP/1.1\r\n\r\n")
    assert (answer, was_reset) == (b"", True)
    reset_line = "no tunnel from the developer's machine; connection reset"
    await wait_until(lambda: shadow.events(reset_line), "the shadow's log line")


async def test_wrong_secret_takes_no_traffic(
    shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    remote, tunnel_port = free_port(), free_port()
    secret = tunnel_wire.new_secret()
    await shadows(secret, [remote], tunnel_port=tunnel_port, wait=1.0)
    async with HttpBackend("intruder") as intruder, HttpBackend("owner") as owner:
        bad = await tunnels(
            TcpDialer(LOOPBACK, tunnel_port), tunnel_wire.new_secret(), {remote: intruder.port},
            ready=False,
        )  # fmt: skip
        await wait_until(lambda: bad.stats.open_failures >= 2, "refused handshakes")
        assert "refused this session's secret" in (bad.stats.last_tunnel_error or "")
        assert not bad.ready
        answer, was_reset = await raw_exchange((LOOPBACK, remote), b"GET / HTTP/1.1\r\n\r\n")
        assert (answer, was_reset) == (b"", True)
        # The session's own machine is served; the other one still gets nothing.
        await tunnels(TcpDialer(LOOPBACK, tunnel_port), secret, {remote: owner.port})
        assert (await curl_json(remote, "billing-api"))["backend"] == "owner"
        assert intruder.requests == 0 and bad.stats.served == 0


async def test_shadow_restart_reconnects_with_backoff(
    shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    secret = tunnel_wire.new_secret()
    remote, tunnel_port = free_port(), free_port()
    first = await shadows(secret, [remote], tunnel_port=tunnel_port)
    async with HttpBackend("laptop") as backend:
        client = await tunnels(TcpDialer(LOOPBACK, tunnel_port), secret, {remote: backend.port})
        stats = client.stats
        assert (await curl_json(remote, "billing-api"))["backend"] == "laptop"
        await first.kill()  # the tunnel breaks: idle connections close, dials are refused
        await wait_until(lambda: stats.lost_idle >= 1 and not client.ready, "the loss noticed")
        await wait_until(lambda: stats.open_failures >= 2, "failed reconnects")
        # Dials refused, or (for the ones under way at the kill) closed mid-handshake.
        assert client.state.startswith("reconnecting (")
        assert f"the shadow at {LOOPBACK}:{tunnel_port}" in client.state
        opened = stats.opened
        await shadows(secret, [remote], tunnel_port=tunnel_port)
        await wait_until(lambda: client.ready and stats.opened > opened, "the pool refilled")
        assert (await curl_json(remote, "billing-api"))["backend"] == "laptop"
        assert client.state == "connected"


async def test_local_process_listening_on_ipv6_loopback_only(
    shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    """A local server bound to ::1 only (what `localhost` often means on macOS) is found."""

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nv6!")
        await writer.drain()
        writer.close()

    async with tcp_server(hello, host="::1") as local_port:
        remote, client = await start_pair(shadows, tunnels, local_port)
        for _ in range(2):  # the second goes to ::1 first (remembered)
            answer, was_reset = await raw_exchange(
                (LOOPBACK, remote), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", half_close=False
            )
            assert not was_reset and answer.endswith(b"\r\n\r\nv6!")
    assert client.stats.served == 2 and client.stats.local_failures == 0


async def test_readiness_follows_the_tunnel(shadows: ShadowFactory, tunnels: TunnelFactory) -> None:
    """/readyz is 503 until this machine's tunnel is there and again once it has gone, so
    a readiness probe takes the shadow out of the router's endpoints meanwhile."""
    secret = tunnel_wire.new_secret()
    remote, tunnel_port, health = free_port(), free_port(), free_port()
    await shadows(secret, [remote], tunnel_port=tunnel_port, health_port=health)

    async def probe(path: str) -> tuple[int, bytes]:
        return await curl_at(LOOPBACK, health, "shadow", path)

    assert await probe("/healthz") == (200, b"ok\n")
    assert await probe("/readyz") == (503, b"no tunnel from the developer's machine\n")
    assert (await probe("/other"))[0] == 404
    async with HttpBackend("laptop") as backend:
        client = await tunnels(TcpDialer(LOOPBACK, tunnel_port), secret, {remote: backend.port})
        assert await probe("/readyz") == (200, b"developer's machine connected\n")
        await client.stop()
    deadline = time.monotonic() + 20
    while (await probe("/readyz"))[0] != 503:  # the closes reach the shadow
        assert time.monotonic() < deadline, "/readyz still 200 after the tunnel closed"
