"""A local listener forwarding every accepted connection to one pod port.

Each connection gets its own websocket (the protocol carries one TCP connection each). One
websocket is kept open in reserve so a new connection does not wait for the upgrade; the
reserve is refilled in the background, with backoff when the pod side keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

import structlog

from localmesh.forward.tunnel import Connector, ForwardStats, Tunnel, TunnelError
from localmesh.kube import Target

log = structlog.get_logger(__name__)

LISTEN_BACKLOG = 1024
STREAM_LIMIT = 256 * 1024
SPARE_BACKOFF_INITIAL = 0.05
SPARE_BACKOFF_MAX = 5.0


class PodForwarder:
    """`127.0.0.1:<ephemeral>` → pod `target` in `namespace`, one websocket per connection."""

    def __init__(
        self,
        connector: Connector,
        namespace: str,
        target: Target,
        *,
        bind: str = "127.0.0.1",
        spares: int = 1,
    ) -> None:
        self.namespace = namespace
        self.target = target
        self.stats = ForwardStats()
        self._connector = connector
        self._bind = bind
        self._spare_count = spares
        self._spares: list[Tunnel] = []
        self._want_spare = asyncio.Event()
        self._spare_delay = SPARE_BACKOFF_INITIAL
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._refill: asyncio.Task[None] | None = None
        self.address: tuple[str, int] = (bind, 0)
        self.label = f"{namespace}/{target.pod}:{target.port}"

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._handle, self._bind, 0, backlog=LISTEN_BACKLOG, limit=STREAM_LIMIT
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (str(host), int(port))
        if self._spare_count > 0:
            self._refill = asyncio.create_task(self._keep_spares(), name=f"spares {self.label}")
            self._refill.add_done_callback(self._refill_done)
            self._want_spare.set()
        log.debug("forwarder listening", target=self.label, address=f"{host}:{port}")
        return self.address

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting; let open connections finish for up to `grace` seconds."""
        if self._server is not None:
            self._server.close()
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill
        spares, self._spares = self._spares, []
        for tunnel in spares:
            await tunnel.close()
        if self._connections and grace > 0:
            await asyncio.wait(set(self._connections), timeout=grace)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections))
        log.debug("forwarder stopped", target=self.label)

    # -- connections ------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats.connections += 1
        self.stats.active += 1
        try:
            tunnel = self._take_spare()
            if tunnel is None:
                tunnel = await self._open()
            await tunnel.attach(reader, writer)
        except TunnelError as exc:
            log.warning("port-forward failed", target=self.label, error=str(exc))
            writer.close()
        finally:
            self.stats.active -= 1
            self._connections.discard(task)

    async def _open(self) -> Tunnel:
        return await self._connector.open(
            self.namespace, self.target.pod, self.target.port, self.stats
        )

    def _take_spare(self) -> Tunnel | None:
        while self._spares:
            tunnel = self._spares.pop()
            self._want_spare.set()
            if tunnel.usable:
                return tunnel
            asyncio.get_running_loop().create_task(tunnel.close(), name=f"close {tunnel.label}")
        return None

    # -- the reserve ------------------------------------------------------------------------
    async def _keep_spares(self) -> None:
        while True:
            await self._want_spare.wait()
            self._want_spare.clear()
            while len(self._spares) < self._spare_count:
                if self._spare_delay > SPARE_BACKOFF_INITIAL:
                    await asyncio.sleep(self._spare_delay)
                try:
                    tunnel = await self._open()
                except TunnelError as exc:
                    log.debug("reserve port-forward failed", target=self.label, error=str(exc))
                    self._spare_delay = min(self._spare_delay * 2, SPARE_BACKOFF_MAX)
                    continue
                self._spares.append(tunnel)
                tunnel.add_done_callback(functools.partial(self._spare_closed, tunnel))

    def _spare_closed(self, tunnel: Tunnel) -> None:
        if tunnel in self._spares:
            # The pod side closed an idle reserve (error, idle timeout): replace it, slower
            # each time it happens in a row so a broken pod port is not hammered.
            self._spares.remove(tunnel)
            asyncio.get_running_loop().create_task(tunnel.close(), name=f"close {tunnel.label}")
            self._spare_delay = min(self._spare_delay * 2, SPARE_BACKOFF_MAX)
            self._want_spare.set()
        else:
            self._spare_delay = SPARE_BACKOFF_INITIAL

    def _refill_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("reserve task died", target=self.label, exc_info=task.exception())
