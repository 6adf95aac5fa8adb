"""`handle_portforward` on a minimal API server, driven by real clients.

WebSocket `v4.channel.k8s.io` with aiohttp's client and the official Python client;
plain SPDY/3.1 with a hand-rolled client built on localmesh.sandbox.spdy (kubectl runs
are in test_sandbox_portforward_kubectl.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from kubernetes import client
from kubernetes.stream import portforward

from localmesh import spdy_wire
from localmesh.sandbox.spdy import (
    DataFrame,
    Frame,
    FrameReader,
    HeaderCompressor,
    Ping,
    SynReply,
    SynStream,
    encode_frame,
)
from tests.integration.test_sandbox_portforward_helpers import (
    POD_IP,
    echo_backend,
    free_port,
    http_backend,
    mini_api,
    wait_until,
)

pytestmark = pytest.mark.integration

PF_PATH = "/api/v1/namespaces/default/pods/billing-api-0/portforward"


def pf_url(api_url: str, *ports: int) -> str:
    query = ",".join(str(p) for p in ports)
    return f"{api_url}{PF_PATH}?ports={query}".replace("http://", "ws://")


def prefix(channel: int, port: int) -> bytes:
    return bytes((channel,)) + port.to_bytes(2, "little")


@contextlib.asynccontextmanager
async def closing_backend(greeting: bytes) -> AsyncIterator[int]:
    """A pod server that sends `greeting` and closes at once."""

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, POD_IP, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# --- websocket v4.channel.k8s.io ------------------------------------------------


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", None], ids=["v4", "no-subprotocol"])
async def test_v4_announces_ports_dials_on_open_and_echoes(
    tmp_path: Path, protocol: str | None
) -> None:
    async with (
        echo_backend() as backend,
        mini_api(tmp_path) as api,
        aiohttp.ClientSession() as http,
        http.ws_connect(
            pf_url(api.url, backend.port), protocols=[protocol] if protocol else ()
        ) as ws,
    ):
        assert ws.protocol == protocol
        assert await ws.receive_bytes() == prefix(0, backend.port)
        assert await ws.receive_bytes() == prefix(1, backend.port)
        # Dialled when the websocket opened, before any data (kubelet behaviour).
        await wait_until(lambda: backend.accepted == 1)
        await ws.send_bytes(b"\x00hello pod")
        assert await ws.receive_bytes() == b"\x00hello pod"
        await ws.close()
        await wait_until(lambda: backend.open_connections == 0)


async def test_v4_bulk_transfer_both_ways_is_intact(tmp_path: Path) -> None:
    payload = os.urandom(6 * 1024 * 1024)
    async with (
        echo_backend() as backend,
        mini_api(tmp_path) as api,
        aiohttp.ClientSession() as http,
        http.ws_connect(pf_url(api.url, backend.port), protocols=["v4.channel.k8s.io"]) as ws,
    ):
        await ws.receive_bytes()
        await ws.receive_bytes()

        async def upload() -> None:
            for i in range(0, len(payload), 65536):
                await ws.send_bytes(b"\x00" + payload[i : i + 65536])

        sender = asyncio.create_task(upload(), name="v4-upload")
        received = hashlib.sha256()
        total = 0
        async with asyncio.timeout(30):
            while total < len(payload):
                message = await ws.receive_bytes()
                assert message[0] == 0
                received.update(message[1:])
                total += len(message) - 1
        await sender
        assert total == len(payload)
        assert received.digest() == hashlib.sha256(payload).digest()


async def test_v4_backend_close_closes_the_websocket(tmp_path: Path) -> None:
    async with (
        closing_backend(b"bye") as port,
        mini_api(tmp_path) as api,
        aiohttp.ClientSession() as http,
        http.ws_connect(pf_url(api.url, port), protocols=["v4.channel.k8s.io"]) as ws,
    ):
        messages = [await ws.receive_bytes(), await ws.receive_bytes(), await ws.receive_bytes()]
        assert messages == [prefix(0, port), prefix(1, port), b"\x00bye"]
        msg = await ws.receive(timeout=30)
        assert msg.type is aiohttp.WSMsgType.CLOSE


async def test_v4_refused_port_reports_on_the_error_channel(tmp_path: Path) -> None:
    dead = free_port(POD_IP)
    async with (
        echo_backend() as backend,
        mini_api(tmp_path) as api,
        aiohttp.ClientSession() as http,
        http.ws_connect(pf_url(api.url, backend.port, dead), protocols=["v4.channel.k8s.io"]) as ws,
    ):
        first = [await ws.receive_bytes() for _ in range(4)]
        assert first == [
            prefix(0, backend.port),
            prefix(1, backend.port),
            prefix(2, dead),
            prefix(3, dead),
        ]
        error = await ws.receive_bytes(timeout=30)
        assert error[0] == 3
        text = error[1:].decode()
        assert f"error forwarding port {dead} to pod billing-api-0" in text
        assert "connection refused" in text
        # The working port keeps forwarding.
        await ws.send_bytes(b"\x00still here")
        assert await ws.receive_bytes() == b"\x00still here"


async def test_v4_base64_protocol(tmp_path: Path) -> None:
    async with (
        echo_backend() as backend,
        mini_api(tmp_path) as api,
        aiohttp.ClientSession() as http,
        http.ws_connect(
            pf_url(api.url, backend.port), protocols=["v4.base64.channel.k8s.io"]
        ) as ws,
    ):
        assert ws.protocol == "v4.base64.channel.k8s.io"
        port_b64 = base64.b64encode(backend.port.to_bytes(2, "little")).decode()
        assert await ws.receive_str() == "0" + port_b64
        assert await ws.receive_str() == "1" + port_b64
        await ws.send_str("0" + base64.b64encode(b"\x00\xffbinary").decode())
        assert await ws.receive_str() == "0" + base64.b64encode(b"\x00\xffbinary").decode()


async def test_requests_without_ports_or_upgrade_get_status_400(tmp_path: Path) -> None:
    async with mini_api(tmp_path) as api, aiohttp.ClientSession() as http:
        async with http.get(api.url + PF_PATH) as plain:
            assert plain.status == 400
            assert (await plain.json())["kind"] == "Status"
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"{api.url}{PF_PATH}", protocols=["v4.channel.k8s.io"])
        assert err.value.status == 400


# --- idle timeout -----------------------------------------------------------------

# Client and server share one event loop: a keepalive every IDLE/4 keeps a session open as
# long as the loop is never stalled for 3/4 of IDLE, which a busy machine can do to 0.3 s.
IDLE = 1.0


async def test_v4_idle_forward_is_closed(tmp_path: Path) -> None:
    async with (
        echo_backend() as backend,
        mini_api(tmp_path, idle_timeout=IDLE) as api,
        aiohttp.ClientSession() as http,
        http.ws_connect(pf_url(api.url, backend.port), protocols=["v4.channel.k8s.io"]) as ws,
    ):
        await ws.receive_bytes()
        await ws.receive_bytes()
        started = asyncio.get_running_loop().time()
        msg = await ws.receive(timeout=30)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert asyncio.get_running_loop().time() - started >= IDLE * 0.9
        await wait_until(lambda: backend.open_connections == 0)


async def test_v4_client_pings_keep_an_idle_forward_open(tmp_path: Path) -> None:
    async with (
        echo_backend() as backend,
        mini_api(tmp_path, idle_timeout=IDLE) as api,
        aiohttp.ClientSession() as http,
        http.ws_connect(
            pf_url(api.url, backend.port), protocols=["v4.channel.k8s.io"], autoping=True
        ) as ws,
    ):
        await ws.receive_bytes()
        await ws.receive_bytes()
        # Keepalive pings (pacing, not synchronisation) for three idle periods.
        for _ in range(12):
            await ws.ping()
            await asyncio.sleep(IDLE / 4)
        await ws.send_bytes(b"\x00alive")
        assert await ws.receive_bytes(timeout=30) == b"\x00alive"
        assert backend.accepted == 1


# --- plain SPDY/3.1 upgrade with a minimal client ----------------------------------------


@dataclass
class SpdyClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    frames: FrameReader
    compressor: HeaderCompressor
    head: bytes
    pending: list[Frame]

    def send(self, *frames: Frame) -> None:
        self.writer.write(b"".join(encode_frame(f, self.compressor) for f in frames))

    async def next_frame(self, deadline: float = 30.0) -> Frame | None:
        async with asyncio.timeout(deadline):
            while not self.pending:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.pending += self.frames.feed(data)
        return self.pending.pop(0)

    def open_pair(self, request_id: int, port: int) -> tuple[int, int]:
        error_id, data_id = 4 * request_id + 1, 4 * request_id + 3
        common = {"port": [str(port)], "requestid": [str(request_id)]}
        self.send(
            SynStream(error_id, {"streamtype": ["error"], **common}, flags=spdy_wire.FLAG_FIN),
            SynStream(data_id, {"streamtype": ["data"], **common}),
        )
        return error_id, data_id


@contextlib.asynccontextmanager
async def spdy_client(api_url: str) -> AsyncIterator[SpdyClient]:
    host, port = api_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {PF_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
        "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    try:
        yield SpdyClient(reader, writer, FrameReader(), HeaderCompressor(), head, [])
    finally:
        writer.close()


async def test_spdy_upgrade_echoes_protocol_and_forwards(tmp_path: Path) -> None:
    async with echo_backend() as backend, mini_api(tmp_path) as api:
        async with spdy_client(api.url) as client:
            head = client.head.decode().lower()
            assert head.startswith("http/1.1 101")
            assert "upgrade: spdy/3.1" in head
            assert "x-stream-protocol-version: portforward.k8s.io" in head
            error_id, data_id = client.open_pair(0, backend.port)
            client.send(DataFrame(data_id, b"over spdy"), Ping(1))
            seen = [await client.next_frame() for _ in range(4)]
            assert seen == [
                SynReply(error_id, {}),
                SynReply(data_id, {}),
                DataFrame(data_id, b"over spdy"),
                Ping(1),
            ] or seen == [
                SynReply(error_id, {}),
                SynReply(data_id, {}),
                Ping(1),
                DataFrame(data_id, b"over spdy"),
            ]
            # Client FIN: the backend sees EOF, closes, and both streams get FIN.
            client.send(DataFrame(data_id, b"", spdy_wire.FLAG_FIN))
            fins = {await client.next_frame(), await client.next_frame()}
            assert fins == {
                DataFrame(data_id, b"", spdy_wire.FLAG_FIN),
                DataFrame(error_id, b"", spdy_wire.FLAG_FIN),
            }
        await wait_until(lambda: backend.open_connections == 0)
        # aiohttp got the connection back and still serves requests.
        async with aiohttp.ClientSession() as http, http.get(api.url + "/version") as r:
            assert r.status == 200


async def test_spdy_refused_port_writes_the_error_stream(tmp_path: Path) -> None:
    dead = free_port(POD_IP)
    async with mini_api(tmp_path) as api, spdy_client(api.url) as client:
        error_id, data_id = client.open_pair(7, dead)
        frames = [await client.next_frame() for _ in range(5)]
        errors = [f for f in frames if isinstance(f, DataFrame) and f.stream_id == error_id]
        assert errors[0].data.decode().startswith(f"error forwarding port {dead} to pod")
        assert "connection refused" in errors[0].data.decode()
        assert DataFrame(error_id, b"", spdy_wire.FLAG_FIN) in frames
        assert DataFrame(data_id, b"", spdy_wire.FLAG_FIN) in frames


async def test_spdy_many_concurrent_pairs_on_one_session(tmp_path: Path) -> None:
    async with echo_backend() as backend, mini_api(tmp_path) as api:
        async with spdy_client(api.url) as client:
            ids = [client.open_pair(n, backend.port)[1] for n in range(20)]
            client.send(*(DataFrame(sid, f"conn {sid}".encode()) for sid in ids))
            got: dict[int, bytes] = {}
            async with asyncio.timeout(30):
                while len(got) < len(ids):
                    frame = await client.next_frame()
                    if isinstance(frame, DataFrame) and frame.data:
                        got[frame.stream_id] = got.get(frame.stream_id, b"") + frame.data
            assert got == {sid: f"conn {sid}".encode() for sid in ids}
            assert backend.accepted == 20
        await wait_until(lambda: backend.open_connections == 0)


async def test_spdy_idle_session_closes_unless_pinged(tmp_path: Path) -> None:
    async with echo_backend() as backend, mini_api(tmp_path, idle_timeout=IDLE) as api:
        async with spdy_client(api.url) as pinging:
            _, data_id = pinging.open_pair(0, backend.port)
            for n in range(12):
                pinging.send(Ping(2 * n + 1))
                await asyncio.sleep(IDLE / 4)  # keepalive pacing
            pinging.send(DataFrame(data_id, b"ping kept me"))
            async with asyncio.timeout(30):
                while (frame := await pinging.next_frame()) != DataFrame(data_id, b"ping kept me"):
                    assert frame is not None
        async with spdy_client(api.url) as silent:
            silent.open_pair(0, backend.port)
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(30):
                while await silent.next_frame() is not None:
                    pass
            assert asyncio.get_running_loop().time() - started >= IDLE * 0.9
        await wait_until(lambda: backend.open_connections == 0)


# --- the official Python client ------------------------------------------------------


def _python_client_get(api_url: str, port: int) -> tuple[bytes, str | None]:
    config = client.Configuration()
    config.host = api_url
    api = client.CoreV1Api(client.ApiClient(config))
    forward = portforward(
        api.connect_get_namespaced_pod_portforward, "billing-api-0", "default", ports=str(port)
    )
    try:
        sock = forward.socket(port)
        sock.setblocking(True)
        sock.settimeout(10)
        data = b""
        # The client resets its socket when the error channel speaks.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(b"GET / HTTP/1.0\r\nHost: billing-api\r\n\r\n")
            while chunk := sock.recv(65536):
                data += chunk
        sock.close()
        error: str | None = forward.error(port)
        return data, error
    finally:
        forward.close()


async def test_python_client_portforward(tmp_path: Path) -> None:
    async with http_backend() as port, mini_api(tmp_path) as api:
        data, error = await asyncio.to_thread(_python_client_get, api.url, port)
        assert data.startswith(b"HTTP/1.0 200") or data.startswith(b"HTTP/1.1 200")
        assert b'"pod": "billing-api-0"' in data
        assert error is None


async def test_python_client_sees_refused_port_error(tmp_path: Path) -> None:
    dead = free_port(POD_IP)
    async with mini_api(tmp_path) as api:
        data, error = await asyncio.to_thread(_python_client_get, api.url, dead)
        assert data == b""
        assert error is not None and "connection refused" in error


# --- API server shutdown ------------------------------------------------------------


async def test_server_shutdown_ends_open_forwards_promptly(tmp_path: Path) -> None:
    async with echo_backend() as backend, aiohttp.ClientSession() as http:
        server = mini_api(tmp_path)
        api = await server.__aenter__()
        try:
            ws = await http.ws_connect(
                pf_url(api.url, backend.port), protocols=["v4.channel.k8s.io"]
            )
            await ws.receive_bytes()
            await ws.receive_bytes()
            ws_end = asyncio.create_task(ws.receive(timeout=30), name="ws-end")
            async with spdy_client(api.url) as client:
                _, data_id = client.open_pair(0, backend.port)
                client.send(DataFrame(data_id, b"up"))
                while await client.next_frame() != DataFrame(data_id, b"up"):
                    pass
                await wait_until(lambda: backend.open_connections == 2)
                # Without close_portforwards aiohttp would wait its 60 s shutdown timeout.
                async with asyncio.timeout(30):
                    await server.__aexit__(None, None, None)
                async with asyncio.timeout(30):
                    while await client.next_frame() is not None:
                        pass
            assert (await ws_end).type is aiohttp.WSMsgType.CLOSE
            await wait_until(lambda: backend.open_connections == 0)
        finally:
            await server.__aexit__(None, None, None)


# --- SPDY tunnelled in websocket with a minimal client -----------------------------------


async def test_spdy_tunnel_forwards_and_websocket_pings_keep_it_alive(tmp_path: Path) -> None:
    async with (
        echo_backend() as backend,
        mini_api(tmp_path, idle_timeout=IDLE) as api,
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{api.url}{PF_PATH}".replace("http://", "ws://"),
            protocols=["SPDY/3.1+portforward.k8s.io"],
        ) as ws,
    ):
        assert ws.protocol == "SPDY/3.1+portforward.k8s.io"
        compressor, reader = HeaderCompressor(), FrameReader()
        pending: list[Frame] = []

        async def next_frame() -> Frame:
            while not pending:
                pending.extend(reader.feed(await ws.receive_bytes(timeout=30)))
            return pending.pop(0)

        common = {"port": [str(backend.port)], "requestid": ["0"]}
        await ws.send_bytes(
            encode_frame(SynStream(1, {"streamtype": ["error"], **common}), compressor)
            + encode_frame(SynStream(3, {"streamtype": ["data"], **common}), compressor)
        )
        assert [await next_frame(), await next_frame()] == [SynReply(1, {}), SynReply(3, {})]
        for _ in range(12):  # websocket keepalives (pacing) over three idle periods
            await ws.ping()
            await asyncio.sleep(IDLE / 4)
        await ws.send_bytes(encode_frame(DataFrame(3, b"tunnelled")))
        assert await next_frame() == DataFrame(3, b"tunnelled")
        assert backend.accepted == 1
        # Silence now: the idle timeout closes the websocket and the backend connection.
        msg = await ws.receive(timeout=30)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        await wait_until(lambda: backend.open_connections == 0)
