"""`localmesh agent shadow`: the process in a developer's shadow pod.

It listens on the exposed (remote) ports on the pod IP, where the router sends marked
requests, and on the tunnel port, where this developer's machine keeps idle, authenticated
tunnel connections open (wire format: tunnel_wire). Each inbound connection takes the
oldest idle tunnel connection, is announced by its port, and is spliced to it. When no
tunnel connection comes within `wait` seconds, or the machine reports that its local port
refused, the inbound connection is reset before any response byte: the router's Envoy then
answers 503 and says why.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from localmesh.clustermesh import tunnel_wire as wire

log = structlog.get_logger(__name__)

DEFAULT_WAIT = 5.0
# Where port-forwards arrive when the pods share one loopback (the sandbox sets it).
TUNNEL_BIND_ENV = "LOCALMESH_TUNNEL_BIND"
MAX_IDLE = 512  # idle tunnel connections held at most; the oldest go first
LISTEN_BACKLOG = 1024


@dataclass
class ShadowStats:
    inbound: int = 0  # connections accepted on the exposed ports
    served: int = 0  # carried to the machine's local port
    no_tunnel: int = 0  # reset: no tunnel connection within `wait`
    local_failed: int = 0  # reset: the machine's local port refused
    refused_tunnels: int = 0  # tunnel connections with a wrong secret or protocol
    tunnels: int = 0  # tunnel connections accepted
    bytes_in: int = 0  # inbound client -> machine
    bytes_out: int = 0  # machine -> inbound client
    active: int = 0
    tunnelled: int = 0  # active ones carried over a tunnel connection (not waiting for one)
    per_port: dict[int, int] = field(default_factory=dict)


class ShadowAgent:
    """Exposed ports on `bind`, the tunnel port on `tunnel_bind`; `start`, then `stop`."""

    def __init__(
        self,
        secret: bytes,
        ports: Iterable[int],
        *,
        bind: str = "127.0.0.1",
        tunnel_bind: str = "127.0.0.1",
        tunnel_port: int = wire.DEFAULT_TUNNEL_PORT,
        wait: float = DEFAULT_WAIT,
        health_port: int | None = None,
    ) -> None:
        self.ports = tuple(ports)
        if tunnel_port in self.ports and tunnel_port != 0:
            raise ValueError(f"the tunnel port {tunnel_port} is also an exposed port")
        self.stats = ShadowStats()
        self._secret = secret
        self._bind = bind
        self._tunnel_bind = tunnel_bind
        self._tunnel_port = tunnel_port
        self._wait = wait
        self._health_port = health_port
        self.health_address: tuple[str, int] | None = None
        self._idle: collections.deque[wire.Stream] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[wire.Stream]] = collections.deque()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.tunnel_address: tuple[str, int] = (tunnel_bind, tunnel_port)
        self.addresses: dict[int, tuple[str, int]] = {}

    async def start(self) -> None:
        """Bind every port (an OSError names the one that failed); nothing is left bound
        when one fails."""
        try:
            server = await asyncio.start_server(
                self._tunnel,
                self._tunnel_bind,
                self._tunnel_port,
                backlog=LISTEN_BACKLOG,
                limit=wire.STREAM_LIMIT,
            )
            self._servers.append(server)
            self.tunnel_address = _address(server)
            for port in self.ports:
                server = await asyncio.start_server(
                    functools.partial(self._inbound, port=port),
                    self._bind,
                    port,
                    backlog=LISTEN_BACKLOG,
                    limit=wire.STREAM_LIMIT,
                )
                self._servers.append(server)
                self.addresses[port] = _address(server)
            if self._health_port is not None:
                server = await asyncio.start_server(self._health, self._bind, self._health_port)
                self._servers.append(server)
                self.health_address = _address(server)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "shadow agent ready",
            ports=[f"{host}:{port}" for host, port in self.addresses.values()],
            tunnel=f"{self.tunnel_address[0]}:{self.tunnel_address[1]}",
        )

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for waiter in self._waiters:
            waiter.cancel()
        while self._idle:
            _, writer = self._idle.popleft()
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        self._servers.clear()

    @property
    def connected(self) -> bool:
        """The developer's machine has a tunnel connection here (idle or in use). An inbound
        connection still waiting for one does not count: with the machine gone, steady marked
        requests would keep the shadow Ready, and the mark off the pods, until its Lease
        expires."""
        return self.stats.tunnelled > 0 or any(_usable(stream) for stream in self._idle)

    async def _health(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """`GET /readyz`: 200 while the machine is connected, else 503 (a readiness probe
        takes the shadow out of the router's endpoints while nobody is at the other end);
        `GET /healthz`: 200 while the agent runs. Probes only: nothing else is served."""
        try:
            async with asyncio.timeout(wire.HANDSHAKE_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        parts = head.split(b" ", 2)
        path = parts[1].decode("latin-1") if len(parts) > 2 else ""
        if path == "/healthz":
            status, body = "200 OK", "ok\n"
        elif path == "/readyz" and self.connected:
            status, body = "200 OK", "developer's machine connected\n"
        elif path == "/readyz":
            status, body = "503 Service Unavailable", "no tunnel from the developer's machine\n"
        else:
            status, body = "404 Not Found", "try /readyz or /healthz\n"
        writer.write(
            f"HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}"
            f"\r\nconnection: close\r\n\r\n{body}".encode()
        )
        await wire.close(writer)

    # -- tunnel connections from the machine ------------------------------------------------
    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout(wire.HANDSHAKE_TIMEOUT):
                greeting = await reader.readexactly(wire.HELLO_SIZE)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            self.stats.refused_tunnels += 1
            writer.close()
            return
        magic, secret = greeting[: len(wire.MAGIC)], greeting[len(wire.MAGIC) :]
        # Compare in constant time: the answer must not tell how much of a guess was right.
        if magic != wire.MAGIC or not hmac.compare_digest(secret, self._secret):
            self.stats.refused_tunnels += 1
            log.warning("tunnel connection refused: wrong secret or protocol", peer=str(peer))
            with contextlib.suppress(ConnectionError):
                writer.write(wire.REFUSED)
            await wire.close(writer)
            return
        writer.write(wire.ACCEPTED)
        self.stats.tunnels += 1
        self._offer((reader, writer))

    def _offer(self, stream: wire.Stream) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(stream)
                return
        self._prune()
        self._idle.append(stream)
        if len(self._idle) > MAX_IDLE:
            self._idle.popleft()[1].close()

    def _prune(self) -> None:
        # Idle connections the machine has closed (a port-forward gone) are dropped here and
        # when taken, so they do not pile up while nothing arrives.
        if self._idle and not _usable(self._idle[0]):
            self._idle = collections.deque(s for s in self._idle if _usable(s))

    async def _take(self) -> wire.Stream | None:
        while self._idle:
            stream = self._idle.popleft()
            if _usable(stream):
                return stream
            stream[1].close()
        waiter: asyncio.Future[wire.Stream] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._wait):
                return await waiter
        except TimeoutError:
            # A connection offered as the timeout fired is still this one's to use.
            return waiter.result() if waiter.done() and not waiter.cancelled() else None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                waiter.result()[1].close()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    # -- inbound connections from the router ----------------------------------------------
    async def _inbound(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        stats = self.stats
        stats.inbound += 1
        stats.active += 1
        try:
            await self._carry((reader, writer), port)
        except asyncio.CancelledError:
            wire.reset(writer)
        finally:
            stats.active -= 1
            self._tasks.discard(task)

    async def _carry(self, inbound: wire.Stream, port: int) -> None:
        stats = self.stats
        tunnel = await self._take()
        if tunnel is None:
            stats.no_tunnel += 1
            log.warning("no tunnel from the developer's machine; connection reset", port=port)
            wire.reset(inbound[1])
            return
        stats.tunnelled += 1
        try:
            await self._carry_over(inbound, tunnel, port)
        finally:
            stats.tunnelled -= 1

    async def _carry_over(self, inbound: wire.Stream, tunnel: wire.Stream, port: int) -> None:
        stats = self.stats
        t_reader, t_writer = tunnel
        t_writer.write(wire.PORT_HEADER.pack(port))
        # The request goes out at once; the machine's answer byte comes back with (before)
        # the response.
        up_result = wire.PumpResult(self._count_in)
        up = asyncio.ensure_future(wire.pump(inbound[0], t_writer, up_result))
        try:
            # Bounded: a tunnel connection that died silently must not hold the client.
            async with asyncio.timeout(wire.STATUS_TIMEOUT):
                status = await t_reader.readexactly(1)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            status = b""
        except asyncio.CancelledError:
            up.cancel()
            wire.reset(t_writer)
            raise
        if status != wire.LOCAL_OK:
            up.cancel()
            with contextlib.suppress(BaseException):
                await up
            stats.local_failed += 1
            why = "its local port refused" if status else "no answer on the tunnel"
            log.warning("developer's machine did not connect; connection reset", port=port, why=why)
            wire.reset(inbound[1])
            wire.reset(t_writer)
            return
        stats.served += 1
        stats.per_port[port] = stats.per_port.get(port, 0) + 1
        down_result = wire.PumpResult(self._count_out)
        await wire.splice(inbound, tunnel, up_result, down_result, up=up)

    def _count_in(self, size: int) -> None:
        self.stats.bytes_in += size

    def _count_out(self, size: int) -> None:
        self.stats.bytes_out += size


def _usable(stream: wire.Stream) -> bool:
    reader, writer = stream
    return not (writer.is_closing() or reader.at_eof() or reader.exception() is not None)


def _address(server: asyncio.Server) -> tuple[str, int]:
    host, port = server.sockets[0].getsockname()[:2]
    return str(host), int(port)
