"""The router's per-port mode on a real Envoy, driven over ADS as the router pod drives it
(same supervisor settings: drain time 1 s, immediate drain): a port switches between TCP
pass-through and HTTP by an in-place listener update as a session comes and goes, without
restarting Envoy.

What open connections do on a switch (observed, and held here):
- a pass-through connection opened before the port turned HTTP stays on the pass-through
  (its bytes keep going to the pods, a mark in them routes nothing) until Envoy closes it
  when the old filter chain's drain ends, about a second later;
- an HTTP keep-alive connection opened before the port turned TCP is drained gracefully:
  its next unmarked request is still served by the pods, the response carrying
  `connection: close`, and Envoy closes it (a marked request there would get a bare 503
  during that second: the draining chain keeps its old routes, whose shadow cluster is
  gone with the session).
A port whose own mode did not change keeps its open connections untouched.

Loopback stands in for the pod network: the router listens on 127.0.0.1, the origin pod
serves on 127.0.0.2 and the shadow pod on 127.0.0.3, each at the router's port number."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from localmesh.bootstrap import BootstrapOptions, build_bootstrap
from localmesh.clustermesh import router_plan as rp
from localmesh.envoy import EnvoySupervisor
from localmesh.xds.cache import SnapshotCache
from localmesh.xds.server import start_server
from tests.integration.xds_helpers import free_port, wait_until
from tests.unit.test_clustermesh_router_plan import NOW, endpoint_slice, lease, pod

ROUTER, ORIGIN, SHADOW = "127.0.0.1", "127.0.0.2", "127.0.0.3"
BINARY = b"\x16\x03\x01\x00\x02\x00\xff\r\n"


@asynccontextmanager
async def http_server(host: str, port: int, body: bytes) -> AsyncIterator[None]:
    """HTTP/1.1 keep-alive: every request answered with `body`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    async with server:
        yield


@asynccontextmanager
async def banner_server(host: str, port: int) -> AsyncIterator[None]:
    """Speaks first, then echoes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"banner\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    async with server:
        yield


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection(ROUTER, port))

    async def get(self, mark: bool = False) -> tuple[dict[str, str], bytes]:
        """One GET on this connection: (lower-cased response headers, body)."""
        extra = b"x-version: dev\r\n" if mark else b""  # the mark of lease()
        self.writer.write(b"GET / HTTP/1.1\r\nhost: kv\r\n" + extra + b"\r\n")
        async with asyncio.timeout(5):
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode()
            headers = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)
            )
            body = await self.reader.readexactly(int(headers["content-length"]))
        return headers, body

    async def closed_by_envoy(self) -> bool:
        async with asyncio.timeout(10):
            return await self.reader.read(1) == b""

    def close(self) -> None:
        self.writer.close()


async def one_get(port: int, mark: bool = False) -> bytes:
    conn = await Conn.open(port)
    try:
        return (await conn.get(mark))[1]
    finally:
        conn.close()


async def banner_and_echo(conn: Conn, greet: bool = True) -> None:
    async with asyncio.timeout(5):
        if greet:
            assert await conn.reader.readline() == b"banner\n"
        conn.writer.write(BINARY)
        assert await conn.reader.readexactly(len(BINARY)) == BINARY


async def test_a_port_switches_mode_in_place_as_a_session_comes_and_goes(tmp_path: Path) -> None:
    http, tcp = free_port(), free_port()
    slices = [endpoint_slice(ORIGIN, port=http), endpoint_slice(ORIGIN, port=tcp)]
    shadow = [pod("s1", SHADOW)]

    def plan(*leases: dict[str, object]) -> rp.RouterPlan:
        pods = {p["metadata"]["name"]: p for p in shadow}
        return rp.plan(ROUTER, [http, tcp], leases=leases, pods=pods, slices=slices, now=NOW)

    nobody, meshing = plan(), plan(lease("s1", ports=f"9090:8080:{http}"))
    assert (nobody.http_ports, meshing.http_ports) == (frozenset(), frozenset({http}))
    cache = SnapshotCache()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(http_server(ORIGIN, http, b"pods"))
        await stack.enter_async_context(http_server(SHADOW, http, b"local"))
        await stack.enter_async_context(banner_server(ORIGIN, tcp))
        server = await start_server(cache, tmp_path / "xds.sock")
        stack.push_async_callback(server.stop, 1.0)
        bootstrap = build_bootstrap(BootstrapOptions(xds_socket_path=str(tmp_path / "xds.sock")))
        envoy = EnvoySupervisor(bootstrap, runtime_dir=tmp_path / "envoy")
        stack.push_async_callback(envoy.stop)

        async def serve(router: rp.RouterPlan) -> None:
            snapshot = rp.build_router_snapshot(router)
            cache.set_snapshot(snapshot)
            async with asyncio.timeout(20):
                await cache.wait_for_ack(snapshot.version)

        cache.set_snapshot(rp.build_router_snapshot(nobody))
        await envoy.start()
        pid = envoy.pid
        await serve(nobody)
        for port in (http, tcp):
            await envoy.wait_listening(port)

        # Nobody meshes: both ports pass bytes through; a mark routes nothing.
        assert await one_get(http, mark=True) == b"pods"
        passed = await Conn.open(http)
        assert await passed.get(mark=True) == ({"content-length": "4"}, b"pods")
        other = await Conn.open(tcp)
        await banner_and_echo(other)

        # A session exposes the HTTP port: new connections get marked routes.
        await serve(meshing)

        async def routed() -> bool:
            return await one_get(http, mark=True) == b"local"

        await wait_until(routed, within=10, what="marked requests served by the shadow")
        assert await one_get(http) == b"pods"
        # The pass-through connection opened before stays one (to the pods) until its
        # filter chain's drain ends, then Envoy closes it.
        try:
            headers, body = await passed.get(mark=True)
            assert body == b"pods"
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the drain already ended
        assert await passed.closed_by_envoy()
        passed.close()
        # The TCP port's own listener did not change: its open connection is untouched.
        await banner_and_echo(other, greet=False)

        # The session goes: an open HTTP connection is drained gracefully.
        kept = await Conn.open(http)
        assert (await kept.get(mark=True))[1] == b"local"
        await serve(nobody)

        async def passes_through() -> bool:
            return await one_get(http, mark=True) == b"pods"

        await wait_until(passes_through, within=10, what="the port a pass-through again")
        try:
            headers, body = await kept.get()
            assert (headers.get("connection"), body) == ("close", b"pods")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # closed before the request: the drain already ended
        assert await kept.closed_by_envoy()
        kept.close()
        await banner_and_echo(other, greet=False)
        other.close()
        assert envoy.pid == pid  # every change went over LDS, Envoy never restarted
