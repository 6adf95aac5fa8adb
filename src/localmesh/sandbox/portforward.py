"""The sandbox's `pods/{pod}/portforward` endpoint, in the three flavours clients speak.

1. WebSocket `v4.channel.k8s.io` (also `""` and `v4.base64.channel.k8s.io`): the
   official Python client and kr8s. Port i gets data channel 2i and error channel
   2i+1; the first server message on each channel is the channel byte plus the port
   (uint16, little-endian); one websocket carries one TCP connection per port, dialled
   when the websocket opens, as the kubelet does.
2. SPDY/3.1 tunnelled in binary websocket messages, subprotocol
   `SPDY/3.1+portforward.k8s.io` (kubectl >= 1.31, KEP-4006).
3. Plain SPDY/3.1 over an HTTP/1.1 upgrade (`Upgrade: SPDY/3.1`,
   `X-Stream-Protocol-Version: portforward.k8s.io`): kubectl <= 1.30 and the fallback.
   aiohttp only hands websocket upgrades over, so this flavour takes the connection's
   transport from aiohttp after the 101 and gives it back, closed, at the end.

In the SPDY flavours kubectl opens, per local connection, an error stream and a data
stream sharing a `requestid`; the backend is dialled when the data stream arrives.

`idle_timeout` is a fault the sandbox can inject: a forward that sees no traffic for
that long is closed, like a real server's stream idle timeout. Websocket pings and
SPDY PINGs count as traffic, so a client that sends keepalives survives it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from localmesh.sandbox.ips import dial
from localmesh.sandbox.spdy import ByteSink, SpdyError, SpdySession, SpdyStream

log = structlog.get_logger(__name__)

CHANNEL_PROTOCOL = "v4.channel.k8s.io"
BASE64_CHANNEL_PROTOCOL = "v4.base64.channel.k8s.io"
SPDY_TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
SPDY_UPGRADE = "SPDY/3.1"
PORTFORWARD_PROTOCOL = "portforward.k8s.io"

READ_SIZE = 64 * 1024
# Received bytes buffered for a slow backend before reading from the client pauses.
BACKEND_HIGH_WATER = 1024 * 1024
MAX_WS_MESSAGE = 16 * 1024 * 1024
# How long closing a websocket waits for the peer's close frame.
CLOSE_TIMEOUT = 2.0
# How long close_portforwards waits for the forwards it ended.
SHUTDOWN_GRACE = 5.0


async def handle_portforward(
    request: web.Request, pod_ip: str, *, idle_timeout: float | None
) -> web.StreamResponse:
    """Serve one port-forward request for a pod whose servers listen on `pod_ip`.

    The caller has authenticated the request and found the pod. Returns the response
    aiohttp should finish (already sent for upgrades) once the forward is over.
    """
    with _registered(request.app) as stop:
        log.debug("portforward.open", path=request.path, upgrade=request.headers.get("Upgrade"))
        try:
            return await _serve(request, pod_ip, idle_timeout, stop)
        finally:
            log.debug("portforward.closed", path=request.path)


async def close_portforwards(app: web.Application) -> None:
    """End every forward `app` is serving, and wait (briefly) until they are over.

    For the API server's `on_shutdown` (a restart fault): upgraded connections are not
    idle requests, so aiohttp alone would wait its whole shutdown timeout for them.
    """
    forwards = list(_ACTIVE.get(app, ()))
    for forward in forwards:
        forward.stop.set()
    if not forwards:
        return
    try:
        async with asyncio.timeout(SHUTDOWN_GRACE):
            for forward in forwards:
                await forward.finished.wait()
    except TimeoutError:
        log.warning(
            "portforward.shutdown_slow", still_open=sum(not f.finished.is_set() for f in forwards)
        )


@dataclass(eq=False)
class _Active:
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


_ACTIVE: weakref.WeakKeyDictionary[web.Application, set[_Active]] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _registered(app: web.Application) -> Iterator[asyncio.Event]:
    active = _Active()
    _ACTIVE.setdefault(app, set()).add(active)
    try:
        yield active.stop
    finally:
        active.finished.set()
        forwards = _ACTIVE.get(app)
        if forwards is not None:
            forwards.discard(active)


async def _serve(
    request: web.Request, pod_ip: str, idle_timeout: float | None, stop: asyncio.Event
) -> web.StreamResponse:
    pod = request.match_info.get("pod") or _pod_from_path(request.path)
    upgrade = request.headers.get("Upgrade", "").strip().lower()
    if upgrade == SPDY_UPGRADE.lower():
        return await _serve_spdy_upgrade(request, pod_ip, pod, idle_timeout, stop)
    if upgrade != "websocket":
        return _status(400, "BadRequest", "Upgrade request required")
    ws = web.WebSocketResponse(
        protocols=(CHANNEL_PROTOCOL, BASE64_CHANNEL_PROTOCOL, SPDY_TUNNEL_PROTOCOL),
        autoping=False,  # pings are traffic for the idle timeout; answered below
        max_msg_size=MAX_WS_MESSAGE,
        compress=False,
        timeout=CLOSE_TIMEOUT,  # a peer that never answers our close frame
    )
    ready = ws.can_prepare(request)
    if not ready.ok:
        return _status(400, "BadRequest", "invalid websocket upgrade")
    if ready.protocol == SPDY_TUNNEL_PROTOCOL:
        await ws.prepare(request)
        await _serve_spdy_tunnel(ws, pod_ip, pod, idle_timeout, stop)
        return ws
    try:
        ports = _query_ports(request)
    except ValueError as exc:
        return _status(400, "BadRequest", str(exc))
    await ws.prepare(request)
    await _serve_channels(
        ws,
        pod_ip=pod_ip,
        pod=pod,
        ports=ports,
        use_base64=ready.protocol == BASE64_CHANNEL_PROTOCOL,
        idle_timeout=idle_timeout,
        stop=stop,
    )
    return ws


def _pod_from_path(path: str) -> str:
    # .../namespaces/{ns}/pods/{pod}/portforward
    parts = path.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 3 and parts[-3] == "pods" else ""


def _query_ports(request: web.Request) -> list[int]:
    ports: list[int] = []
    for value in request.query.getall("ports", []):
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            try:
                port = int(part)
            except ValueError:
                raise ValueError(f"invalid port {part!r}") from None
            if not 0 < port < 65536:
                raise ValueError(f"port {port} must be between 1 and 65535")
            ports.append(port)
    if not ports:
        raise ValueError("query parameter 'ports' is required")
    return ports


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.Response(status=code, text=json.dumps(body), content_type="application/json")


def _dial_error(port: int, pod: str, pod_ip: str, exc: OSError) -> str:
    # Worded like the kubelet's, which kubectl prints after "an error occurred forwarding".
    cause = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
    return (
        f"error forwarding port {port} to pod {pod}, uid : "
        f"dial tcp {pod_ip}:{port}: connect: {cause.lower()}"
    )


# --- idle timeout ---------------------------------------------------------------


class _IdleWatch:
    """Fires `on_idle` once nothing called `touch()` for `timeout` seconds."""

    def __init__(self, timeout: float | None, on_idle: Callable[[], None]) -> None:
        self._timeout = timeout
        self._on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = None
        self.fired = False
        if timeout is not None:
            self._handle = self._loop.call_at(self.last + timeout, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        assert self._timeout is not None
        deadline = self.last + self._timeout
        if self._loop.time() >= deadline:
            self._handle = None
            self.fired = True
            self._on_idle()
        else:
            self._handle = self._loop.call_at(deadline, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


# --- tasks ----------------------------------------------------------------------


class _TaskGroup:
    """Named tasks of one forward: failures are logged, all are cancelled at the end."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{self._name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("portforward.task_failed", task=task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _close_writer(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None and not writer.is_closing():
        writer.close()


async def _write_backend(writer: asyncio.StreamWriter, data: bytes | memoryview) -> None:
    writer.write(data)
    transport = writer.transport
    if transport.get_write_buffer_size() > BACKEND_HIGH_WATER:
        await writer.drain()


# --- websocket v4.channel.k8s.io -----------------------------------------------------


@dataclass(eq=False)
class _ChannelPort:
    index: int
    port: int
    writer: asyncio.StreamWriter | None = None
    dialled: asyncio.Event = field(default_factory=asyncio.Event)


async def _serve_channels(
    ws: web.WebSocketResponse,
    *,
    pod_ip: str,
    pod: str,
    ports: list[int],
    use_base64: bool,
    idle_timeout: float | None,
    stop: asyncio.Event,
) -> None:
    tasks = _TaskGroup(f"portforward-ws:{pod}")
    pending = len(ports)
    all_done = stop

    async def send(channel: int, payload: bytes) -> None:
        if use_base64:
            await ws.send_str(str(channel) + base64.b64encode(payload).decode())
        else:
            await ws.send_bytes(bytes((channel,)) + payload)

    def idle() -> None:
        log.info("portforward.idle_timeout", pod=pod, timeout=idle_timeout)
        all_done.set()

    watch = _IdleWatch(idle_timeout, idle)
    entries = [_ChannelPort(i, p) for i, p in enumerate(ports)]

    async def serve_port(entry: _ChannelPort) -> None:
        nonlocal pending
        data_ch, err_ch = 2 * entry.index, 2 * entry.index + 1
        try:
            try:
                reader, entry.writer = await asyncio.open_connection(*dial(pod_ip, entry.port))
            except OSError as exc:
                entry.dialled.set()
                await send(err_ch, _dial_error(entry.port, pod, pod_ip, exc).encode())
                return
            entry.dialled.set()
            while data := await reader.read(READ_SIZE):
                watch.touch()
                await send(data_ch, data)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            entry.dialled.set()
            _close_writer(entry.writer)
            pending -= 1
            if pending == 0:
                all_done.set()

    async def receive() -> None:
        try:
            await _receive_channels(ws, entries, use_base64, watch)
        finally:
            all_done.set()

    try:
        prefix = [e.port.to_bytes(2, "little") for e in entries]
        for entry, port_bytes in zip(entries, prefix, strict=True):
            await send(2 * entry.index, port_bytes)
            await send(2 * entry.index + 1, port_bytes)
        for entry in entries:
            tasks.spawn(serve_port(entry), f"port-{entry.port}")
        tasks.spawn(receive(), "receive")
        await all_done.wait()
    except (ConnectionError, RuntimeError):
        pass
    finally:
        watch.cancel()
        await tasks.close()
        for entry in entries:
            _close_writer(entry.writer)
        await ws.close()


async def _receive_channels(
    ws: web.WebSocketResponse,
    entries: list[_ChannelPort],
    use_base64: bool,
    watch: _IdleWatch,
) -> None:
    while True:
        msg = await ws.receive()
        watch.touch()
        if msg.type is WSMsgType.BINARY:
            data: bytes = msg.data
            if not data:
                continue
            channel, payload = data[0], memoryview(data)[1:]
        elif msg.type is WSMsgType.TEXT:
            text: str = msg.data
            if not text or not text[0].isdigit():
                continue
            channel, payload = int(text[0]), memoryview(base64.b64decode(text[1:]))
        elif msg.type is WSMsgType.PING:
            await ws.pong(msg.data)
            continue
        elif msg.type is WSMsgType.PONG:
            continue
        else:  # CLOSE, CLOSING, CLOSED, ERROR
            return
        index, is_error = divmod(channel, 2)
        if is_error or index >= len(entries) or not payload:
            continue
        entry = entries[index]
        if not entry.dialled.is_set():
            # Data may come before the dial finished: it waits, like the kubelet.
            await entry.dialled.wait()
        writer = entry.writer
        if writer is not None and not writer.is_closing():
            await _write_backend(writer, payload)


# --- SPDY port-forward streams ------------------------------------------------------


@dataclass(eq=False)
class _Pair:
    request_id: str
    port: int
    error: SpdyStream | None = None
    data: SpdyStream | None = None
    writer: asyncio.StreamWriter | None = None
    dialled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class _PortForwardStreams:
    """kubectl's stream pairs on one SPDY session, each piped to a backend connection."""

    def __init__(self, pod_ip: str, pod: str, tasks: _TaskGroup, watch: _IdleWatch) -> None:
        self._pod_ip = pod_ip
        self._pod = pod
        self._tasks = tasks
        self._watch = watch
        self._pairs: dict[str, _Pair] = {}
        self._by_stream: dict[int, _Pair] = {}

    async def stream_opened(self, stream: SpdyStream) -> None:
        kind = stream.header("streamtype")
        port_text = stream.header("port") or ""
        request_id = stream.header("requestid")
        if request_id is None:
            # Clients older than request ids pair a data stream with the error stream
            # opened just before it (the kubelet's legacy rule).
            sid = stream.stream_id if kind == "error" else stream.stream_id - 2
            request_id = f"legacy-{sid}"
        if kind not in ("error", "data") or not port_text.isdigit():
            await stream.abort()
            return
        pair = self._pairs.get(request_id)
        if pair is None:
            pair = _Pair(request_id, int(port_text))
            self._pairs[request_id] = pair
        self._by_stream[stream.stream_id] = pair
        if kind == "error":
            pair.error = stream
        else:
            pair.data = stream
            pair.task = self._tasks.spawn(self._forward(pair), f"request-{request_id}")

    async def _forward(self, pair: _Pair) -> None:
        data = pair.data
        assert data is not None
        try:
            try:
                reader, pair.writer = await asyncio.open_connection(*dial(self._pod_ip, pair.port))
            except OSError as exc:
                pair.dialled.set()
                if pair.error is not None:
                    message = _dial_error(pair.port, self._pod, self._pod_ip, exc)
                    await pair.error.write(message.encode())
                return
            pair.dialled.set()
            while chunk := await reader.read(READ_SIZE):
                self._watch.touch()
                await data.write(chunk)
        except ConnectionError:
            pass
        finally:
            pair.dialled.set()
            # FIN both: kubectl reads the error stream to its end before it lets go.
            await data.close()
            if pair.error is not None:
                await pair.error.close()
            if data.remote_fin or data.reset:
                self._drop(pair)

    async def data_received(self, stream: SpdyStream, data: bytes) -> None:
        self._watch.touch()
        pair = self._by_stream.get(stream.stream_id)
        if pair is None or stream is not pair.data:
            return  # kubectl never writes to the error stream
        if not pair.dialled.is_set():
            await pair.dialled.wait()
        writer = pair.writer
        if writer is not None and not writer.is_closing():
            try:
                await _write_backend(writer, data)
            except ConnectionError:
                _close_writer(writer)

    async def remote_closed(self, stream: SpdyStream) -> None:
        pair = self._by_stream.get(stream.stream_id)
        if pair is None or stream is not pair.data:
            return
        await pair.dialled.wait()
        writer = pair.writer
        if pair.task is not None and pair.task.done():
            self._drop(pair)
        elif writer is not None and not writer.is_closing() and writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()

    async def stream_reset(self, stream: SpdyStream, status: int) -> None:
        pair = self._by_stream.get(stream.stream_id)
        if pair is not None and stream is pair.data:
            if pair.task is not None:
                pair.task.cancel()
            self._drop(pair)

    def _drop(self, pair: _Pair) -> None:
        _close_writer(pair.writer)
        self._pairs.pop(pair.request_id, None)
        for stream in (pair.error, pair.data):
            if stream is not None:
                self._by_stream.pop(stream.stream_id, None)

    def close(self) -> None:
        for pair in list(self._pairs.values()):
            self._drop(pair)


async def _run_spdy(
    sink: ByteSink,
    chunks: Callable[[_IdleWatch], AsyncIterator[bytes]],
    *,
    pod_ip: str,
    pod: str,
    idle_timeout: float | None,
    done: asyncio.Event,
) -> None:
    """Serve one SPDY session until the peer leaves, the transport fails, it idles out
    or `done` is set from outside."""
    tasks = _TaskGroup(f"portforward-spdy:{pod}")
    watch = _IdleWatch(idle_timeout, done.set)
    streams = _PortForwardStreams(pod_ip, pod, tasks, watch)
    session = SpdySession(sink, streams)

    async def read() -> None:
        try:
            await session.run(chunks(watch))
        except SpdyError as exc:
            log.warning("portforward.spdy_protocol_error", pod=pod, error=str(exc))
        except (ConnectionError, RuntimeError):
            pass
        finally:
            done.set()

    try:
        tasks.spawn(read(), "read")
        await done.wait()
    finally:
        if watch.fired:
            log.info("portforward.idle_timeout", pod=pod, timeout=idle_timeout)
        watch.cancel()
        session.close()
        await tasks.close()
        streams.close()


# --- SPDY tunnelled in websocket ----------------------------------------------------


class _WebSocketSink:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws

    async def send(self, data: bytes) -> None:
        await self._ws.send_bytes(data)


async def _serve_spdy_tunnel(
    ws: web.WebSocketResponse,
    pod_ip: str,
    pod: str,
    idle_timeout: float | None,
    stop: asyncio.Event,
) -> None:
    async def chunks(watch: _IdleWatch) -> AsyncIterator[bytes]:
        while True:
            msg = await ws.receive()
            watch.touch()
            if msg.type is WSMsgType.BINARY:
                yield msg.data
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type not in (WSMsgType.PONG, WSMsgType.TEXT):
                return

    try:
        await _run_spdy(
            _WebSocketSink(ws),
            chunks,
            pod_ip=pod_ip,
            pod=pod,
            idle_timeout=idle_timeout,
            done=stop,
        )
    finally:
        await ws.close()


# --- plain SPDY upgrade -----------------------------------------------------------


class _RawConnection(asyncio.Protocol):
    """Protocol installed on the HTTP connection's transport after the 101.

    Received bytes queue up for the SPDY reader (reading pauses past a limit); writes
    go straight to the transport and wait only while it asks us to pause.
    """

    HIGH_WATER = 1024 * 1024

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._reading_paused = False
        self._wake: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.eof = False
        self.lost = False
        self.lost_exc: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._queued += len(data)
        if self._queued > self.HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wakeup()

    def eof_received(self) -> bool:
        self.eof = True
        self._wakeup()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost = True
        self.lost_exc = exc
        self._writable.set()
        self._wakeup()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._queued -= len(chunk)
                if self._reading_paused and self._queued < self.HIGH_WATER // 4:
                    self._reading_paused = False
                    if not self.lost:
                        self.transport.resume_reading()
                yield chunk
            if self.eof:
                return
            self._wake = loop.create_future()
            try:
                await self._wake
            finally:
                self._wake = None

    async def send(self, data: bytes) -> None:
        if self.lost or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.transport.write(data)
        if not self._writable.is_set():
            await self._writable.wait()


async def _serve_spdy_upgrade(
    request: web.Request,
    pod_ip: str,
    pod: str,
    idle_timeout: float | None,
    stop: asyncio.Event,
) -> web.StreamResponse:
    protocols = [
        p.strip()
        for value in request.headers.getall("X-Stream-Protocol-Version", [])
        for p in value.split(",")
    ]
    if PORTFORWARD_PROTOCOL not in protocols:
        return _status(
            403,
            "Forbidden",
            f"unsupported stream protocols {protocols}; supported: [{PORTFORWARD_PROTOCOL}]",
        )
    transport = request.transport
    if transport is None or transport.is_closing():
        return _status(400, "BadRequest", "connection already closed")
    http_protocol = transport.get_protocol()
    raw = _RawConnection(transport)
    # Take the connection before the 101 leaves: kubectl speaks SPDY right after it,
    # and those bytes must not reach aiohttp's HTTP parser.
    transport.set_protocol(raw)
    response = web.StreamResponse(
        status=101,
        reason="Switching Protocols",
        headers={
            "Connection": "Upgrade",
            "Upgrade": SPDY_UPGRADE,
            "X-Stream-Protocol-Version": PORTFORWARD_PROTOCOL,
        },
    )
    try:
        await response.prepare(request)
        await _run_spdy(
            raw,
            lambda watch: _touching(raw.chunks(), watch),
            pod_ip=pod_ip,
            pod=pod,
            idle_timeout=idle_timeout,
            done=stop,
        )
    finally:
        # Hand the (now finished) connection back so aiohttp sees it close and forgets it.
        if raw.lost:
            http_protocol.connection_lost(raw.lost_exc)
        else:
            transport.set_protocol(http_protocol)
            transport.close()
    return response


async def _touching(chunks: AsyncIterator[bytes], watch: _IdleWatch) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        watch.touch()
        yield chunk
