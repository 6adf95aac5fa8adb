"""Many TCP connections to one pod over one websocket: SPDY/3.1 stream pairs (KEP-4006).

A `SpdySession` owns one websocket; each local connection gets an error stream (half-closed
by us at once, the server writes failure text to it) and a data stream, tied by a
`requestid` header, as kubectl does. Opening a connection costs two SYN_STREAM frames in
one websocket message, no round trip: data follows at once. Unlike `v4.channel.k8s.io`,
SPDY can half-close, so a client that shuts down its sending side still gets the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp
import structlog

from localmesh import spdy_wire
from localmesh.errors import TunnelError
from localmesh.forward import spdy
from localmesh.forward.tunnel import (
    CLOSE_TIMEOUT,
    WRITE_HIGH_WATER,
    Connector,
    ForwardStats,
)

log = structlog.get_logger(__name__)

# DATA frames of 64 KiB: the server relays frame by frame, so smaller frames pipeline
# (measured: 256 KiB frames gave ~15% less bulk throughput through the sandbox).
READ_SIZE = 64 * 1024
WINDOW_STEP = 256 * 1024  # received bytes acknowledged per WINDOW_UPDATE
LINGER_SECONDS = 60.0  # after the client's FIN, how long the pod side may keep answering
STALL_SECONDS = 10.0  # how long a local client that reads nothing may hold up its session


class SpdySession:
    """One SPDY-in-websocket session to one pod; `open(port)` starts a connection."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, label: str, stats: ForwardStats
    ) -> None:
        self._ws = ws
        self.label = label
        self._stats = stats
        self._compressor = spdy.Compressor()
        self._frames = spdy.FrameReader()
        self._next_stream = 1
        self._next_request = 0
        self._streams: dict[int, SpdyConnection] = {}
        self._unacked: dict[int, int] = {}
        self._going_away = False
        self._sending: set[asyncio.Task[None]] = set()
        self._reader = asyncio.create_task(self._read(), name=f"spdy {label}")

    @property
    def usable(self) -> bool:
        return not self._going_away and not self._reader.done() and not self._ws.closed

    @property
    def idle(self) -> bool:
        """No connection uses this session."""
        return not self._streams

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the session has ended."""
        self._reader.add_done_callback(lambda _task: callback())

    async def close(self) -> None:
        for task in list(self._sending):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._ws.close()
        if not self._reader.done():
            self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader

    async def open(self, port: int) -> SpdyConnection:
        error_id, data_id = self._next_stream, self._next_stream + 2
        self._next_stream += 4
        request = str(self._next_request)
        self._next_request += 1
        connection = SpdyConnection(self, data_id, error_id, f"{self.label}:{port}", self._stats)
        self._streams[error_id] = connection
        self._streams[data_id] = connection
        headers = {"port": str(port), "requestid": request}
        frames = spdy.syn_stream(
            self._compressor, error_id, {"streamtype": "error", **headers}, fin=True
        ) + spdy.syn_stream(self._compressor, data_id, {"streamtype": "data", **headers}, fin=False)
        await self.send(frames)
        return connection

    async def send(self, frame: bytes) -> None:
        await self._ws.send_bytes(frame)

    def _send_soon(self, frame: bytes) -> None:
        """Send without waiting: the reading task must never wait on the writing side, or
        a server that stops reading while it waits on us deadlocks the session."""
        task = asyncio.create_task(self.send(frame), name=f"spdy-send {self.label}")
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("port-forward session write failed", target=self.label)

    def forget(self, connection: SpdyConnection) -> None:
        for stream_id in (connection.data_id, connection.error_id):
            self._streams.pop(stream_id, None)
            self._unacked.pop(stream_id, None)

    async def _read(self) -> None:
        try:
            while True:
                msg = await self._ws.receive()
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        continue
                    return  # CLOSE, CLOSING, CLOSED, ERROR
                for frame in self._frames.feed(msg.data):
                    if frame.kind == 0:
                        await self._data(frame)
                    else:
                        await self._dispatch(frame)
        except spdy.SpdyProtocolError as exc:
            log.warning("port-forward session failed", target=self.label, error=str(exc))
        except (ConnectionError, aiohttp.ClientError) as exc:
            log.debug("port-forward session ended", target=self.label, error=str(exc))
        finally:
            for connection in set(self._streams.values()):
                connection.on_reset()
            self._streams.clear()

    async def _data(self, frame: spdy.Frame) -> None:
        """The hot path: one DATA frame; awaits only when a buffer asks for it."""
        stream_id, payload = frame.stream_id, frame.payload
        if payload:
            updates = self._acknowledge(stream_id, len(payload))
            if updates:
                self._send_soon(updates)
        connection = self._streams.get(stream_id)
        if connection is not None:
            writer = connection.on_data(stream_id, payload, frame.fin)
            if writer is not None:
                await self._drain(connection, writer)

    async def _drain(self, connection: SpdyConnection, writer: asyncio.StreamWriter) -> None:
        """Wait for a slow local client; one that stops reading is cut off, not waited for:
        while this waits, every connection of the session waits."""
        try:
            async with asyncio.timeout(STALL_SECONDS):
                await writer.drain()
        except ConnectionError:
            pass
        except TimeoutError:
            log.warning(
                "local client stopped reading; connection reset",
                target=connection.label,
                seconds=STALL_SECONDS,
            )
            self._stats.stalled += 1
            self.forget(connection)
            self._send_soon(spdy.rst_stream(connection.data_id))
            writer.transport.abort()
            connection.on_reset()

    async def _dispatch(self, frame: spdy.Frame) -> None:
        kind = frame.kind
        if kind in (spdy_wire.SYN_REPLY, spdy_wire.HEADERS, spdy_wire.SYN_STREAM):
            # The header blocks are not inflated: nothing here reads the server's headers,
            # and a zlib context spanning the session costs ~40 KiB per pod once used.
            if kind == spdy_wire.SYN_STREAM:  # server push: not part of port-forward
                self._send_soon(spdy.rst_stream(frame.stream_id))
            elif frame.fin and (connection := self._streams.get(frame.stream_id)) is not None:
                connection.on_data(frame.stream_id, b"", True)
        elif kind == spdy_wire.RST_STREAM:
            connection = self._streams.get(frame.stream_id)
            if connection is not None:
                connection.on_reset()
        elif kind == spdy_wire.PING:
            ping_id = int.from_bytes(frame.payload[:4], "big")
            if ping_id % 2 == 0:  # the server's: echo it
                self._send_soon(spdy.ping(ping_id))
        elif kind == spdy_wire.GOAWAY:
            self._going_away = True

    def _acknowledge(self, stream_id: int, size: int) -> bytes:
        # Servers that enforce SPDY/3.1 flow control need window updates to keep sending.
        pending = self._unacked.get(stream_id, 0) + size
        session = self._unacked.get(0, 0) + size
        updates = b""
        if pending >= WINDOW_STEP:
            updates += spdy.window_update(stream_id, pending)
            pending = 0
        if session >= WINDOW_STEP:
            updates += spdy.window_update(0, session)
            session = 0
        self._unacked[stream_id] = pending
        self._unacked[0] = session
        return updates


class SpdyConnection:
    """One local connection carried by a stream pair of a `SpdySession`."""

    def __init__(
        self, session: SpdySession, data_id: int, error_id: int, label: str, stats: ForwardStats
    ) -> None:
        self._session = session
        self.data_id = data_id
        self.error_id = error_id
        self.label = label
        self._stats = stats
        self._writer: asyncio.StreamWriter | None = None
        self._pending: list[bytes] = []
        self._remote_done = asyncio.Event()
        self._local_fin = False
        self._remote_fin = False
        self.error: str | None = None

    def on_data(self, stream_id: int, payload: bytes, fin: bool) -> asyncio.StreamWriter | None:
        """Deliver what the pod side sent; returns the writer when it must be drained."""
        drain: asyncio.StreamWriter | None = None
        if stream_id == self.error_id:
            text = payload.decode("utf-8", "replace").strip()
            if text:
                self.error = text
                self._stats.errors += 1
                self._stats.last_error = text
                log.warning("port-forward error from the pod side", target=self.label, error=text)
            return None
        if payload:
            self._stats.bytes_down += len(payload)
            writer = self._writer
            if writer is None:
                self._pending.append(payload)
            elif not writer.is_closing():
                writer.write(payload)
                if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    drain = writer
        if fin:
            self._remote_fin = True
            self._remote_done.set()
        return drain

    def on_reset(self) -> None:
        self._remote_done.set()

    async def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        for chunk in self._pending:
            writer.write(chunk)
        self._pending.clear()
        up = asyncio.create_task(self._pump_up(reader), name=f"spdy-up {self.label}")
        remote = asyncio.create_task(self._remote_done.wait(), name=f"spdy-down {self.label}")
        try:
            await asyncio.wait((up, remote), return_when=asyncio.FIRST_COMPLETED)
            if up.done() and not remote.done() and self._local_fin:
                # The client half-closed: the pod side may still be answering.
                await asyncio.wait((remote,), timeout=LINGER_SECONDS)
        finally:
            for task in (up, remote):
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(up, remote, return_exceptions=True)
            if not (self._local_fin and self._remote_fin) and self._session.usable:
                with contextlib.suppress(Exception):
                    await self._session.send(spdy.rst_stream(self.data_id))
            self._session.forget(self)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await writer.wait_closed()

    async def _pump_up(self, reader: asyncio.StreamReader) -> None:
        session = self._session
        stats = self._stats
        data_id = self.data_id
        try:
            while True:
                chunk = await reader.read(READ_SIZE)
                if not chunk:
                    break
                stats.bytes_up += len(chunk)
                await session.send(spdy.data(data_id, chunk))
        except ConnectionError:
            return
        if not self._remote_done.is_set():
            await session.send(spdy.data(data_id, b"", fin=True))
            self._local_fin = True


async def open_session(
    connector: Connector, namespace: str, pod: str, stats: ForwardStats
) -> SpdySession | None:
    """A multiplexed session to `pod`, or None when the API server does not offer one
    (before Kubernetes 1.30, or the feature is off): then use one websocket per connection.
    Raises TunnelError when the server cannot be reached at all."""
    label = f"{namespace}/{pod}"
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward"
    try:
        ws = await connector.websocket(path, spdy.SUBPROTOCOL, label, stats)
    except TunnelError as exc:
        if exc.status is not None and exc.status not in (401, 403, 404):
            stats.open_failures -= 1  # not a failure: the answer to "can you multiplex?"
            return None
        raise
    if ws.protocol != spdy.SUBPROTOCOL:
        await ws.close()
        return None
    return SpdySession(ws, label, stats)
