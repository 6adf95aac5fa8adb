"""One websocket to one pod port through the API server, carrying one TCP connection.

A `Tunnel` starts reading from the pod as soon as it is open, before any local connection is
attached: a forwarder can keep one open in reserve (the upgrade costs more than the data of a
small request) and still notice at once when the pod side closes or reports an error. Data
moves in large messages with one copy per direction; backpressure comes from the local
socket's write buffer and from aiohttp's websocket writer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog

from localmesh.errors import TunnelError
from localmesh.forward.channel import DATA, ERROR, SUBPROTOCOL, header_port, portforward_path
from localmesh.forward.tls import record_sized_reads
from localmesh.kube.access import ClusterAccess

log = structlog.get_logger(__name__)

READ_SIZE = 256 * 1024
WRITE_HIGH_WATER = 1024 * 1024  # bytes buffered towards the local client before waiting
CLOSE_TIMEOUT = 2.0


@dataclass
class ForwardStats:
    """Counters of one pod forwarder, for status output and tests."""

    connections: int = 0  # local connections accepted
    active: int = 0  # local connections open now
    tunnels: int = 0  # websockets opened
    open_failures: int = 0  # websockets that could not be opened
    errors: int = 0  # error-channel messages from the pod side
    stalled: int = 0  # connections cut off because the local client stopped reading
    last_error: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0


class CredentialsRefused(TunnelError):
    """401/403 or a failed TLS handshake: new credentials (a re-read kubeconfig) may help."""


class Connector:
    """Opens port-forward websockets through one API server, on one shared ClientSession."""

    def __init__(
        self,
        access: ClusterAccess,
        session: aiohttp.ClientSession,
        *,
        connect_timeout: float = 10.0,
        heartbeat: float | None = 20.0,
    ) -> None:
        self.access = access
        self._session = session
        self._connect_timeout = connect_timeout
        self._heartbeat = heartbeat

    async def websocket(
        self, path: str, protocol: str, label: str, stats: ForwardStats
    ) -> aiohttp.ClientWebSocketResponse:
        """Upgrade `path` on the API server to a websocket speaking `protocol`; when the
        server refuses the credentials (401/403) or its certificate, the kubeconfig is
        re-read and, if it changed, the upgrade tried once more."""
        seen = self.access.generation
        try:
            return await self._websocket(path, protocol, label, stats)
        except CredentialsRefused:
            if not await asyncio.to_thread(self.access.reload, seen):
                raise
        return await self._websocket(path, protocol, label, stats)

    async def _websocket(
        self, path: str, protocol: str, label: str, stats: ForwardStats
    ) -> aiohttp.ClientWebSocketResponse:
        try:
            async with asyncio.timeout(self._connect_timeout):
                headers = await self.access.headers()
                context = self.access.ssl_context
                ws = await self._session.ws_connect(
                    self.access.server + path,
                    protocols=(protocol,),
                    headers=headers,
                    ssl=record_sized_reads(context) if context is not None else True,
                    server_hostname=self.access.server_hostname,
                    heartbeat=self._heartbeat,
                    max_msg_size=0,
                    timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT),
                )
        except aiohttp.WSServerHandshakeError as exc:
            stats.open_failures += 1
            error = CredentialsRefused if exc.status in (401, 403) else TunnelError
            raise error(
                f"port-forward to {label} refused by the API server: {exc.status} {exc.message}",
                status=exc.status,
            ) from None
        except aiohttp.ClientSSLError as exc:
            stats.open_failures += 1
            raise CredentialsRefused(
                f"port-forward to {label}: TLS failure with {self.access.server}: {exc}"
            ) from None
        except TimeoutError:
            stats.open_failures += 1
            raise TunnelError(
                f"port-forward to {label}: no answer from {self.access.server} "
                f"within {self._connect_timeout:g}s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            stats.open_failures += 1
            raise TunnelError(
                f"port-forward to {label}: cannot reach {self.access.server}: {exc}"
            ) from None
        stats.tunnels += 1
        return ws

    async def open(
        self, namespace: str, pod: str, port: int, stats: ForwardStats | None = None
    ) -> Tunnel:
        """A `v4.channel.k8s.io` websocket to `pod` carrying one connection to `port`."""
        stats = stats if stats is not None else ForwardStats()
        label = f"{namespace}/{pod}:{port}"
        ws = await self.websocket(portforward_path(namespace, pod, port), SUBPROTOCOL, label, stats)
        return Tunnel(ws, label, stats)


class Tunnel:
    """An open port-forward websocket; `attach` joins it to one local connection."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, label: str, stats: ForwardStats
    ) -> None:
        self._ws = ws
        self.label = label
        self._stats = stats
        self._writer: asyncio.StreamWriter | None = None
        self._pending: list[bytes] = []
        self.error: str | None = None
        self._down = asyncio.create_task(self._pump_down(), name=f"tunnel-down {label}")

    @property
    def usable(self) -> bool:
        """Still open; data the pod sent first (a banner) waits for the local connection."""
        return not self._down.done() and not self._ws.closed

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the pod side has closed."""
        self._down.add_done_callback(lambda _task: callback())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        if not self._down.done():
            self._down.cancel()
        with contextlib.suppress(BaseException):
            await self._down

    async def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pipe the local connection through the websocket until either side closes."""
        self._writer = writer
        for chunk in self._pending:
            writer.write(chunk)
        self._pending.clear()
        up = asyncio.create_task(self._pump_up(reader), name=f"tunnel-up {self.label}")
        try:
            await asyncio.wait((up, self._down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # No half-close on this protocol: whichever side ends first ends both.
            up.cancel()
            with contextlib.suppress(BaseException):
                await up
            await self.close()
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await writer.wait_closed()

    async def _pump_up(self, reader: asyncio.StreamReader) -> None:
        ws = self._ws
        stats = self._stats
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            stats.bytes_up += len(data)
            await ws.send_bytes(b"\x00" + data)

    async def _pump_down(self) -> None:
        ws = self._ws
        stats = self._stats
        seen_data = seen_error = False
        try:
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.BINARY:
                    data: bytes = msg.data
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    data = msg.data.encode()
                else:
                    return  # CLOSE, CLOSING, CLOSED, ERROR: the pod side is gone
                if not data:
                    continue
                channel = data[0]
                if channel == DATA:
                    if not seen_data:
                        seen_data = True
                        if header_port(data) is not None:
                            continue
                    stats.bytes_down += len(data) - 1
                    writer = self._writer
                    if writer is None:
                        self._pending.append(data[1:])
                        continue
                    writer.write(memoryview(data)[1:])
                    if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                        await writer.drain()
                elif channel == ERROR:
                    if not seen_error:
                        seen_error = True
                        if header_port(data) is not None:
                            continue
                    self._report(data[1:].decode("utf-8", "replace").strip())
        except (ConnectionError, aiohttp.ClientError) as exc:
            log.debug("port-forward stream ended", target=self.label, error=str(exc))

    def _report(self, text: str) -> None:
        if not text:
            return
        self.error = text
        self._stats.errors += 1
        self._stats.last_error = text
        log.warning("port-forward error from the pod side", target=self.label, error=text)
