"""A local listener forwarding every accepted connection to one pod port.

Where the API server offers it (Kubernetes 1.30+), all connections to a pod share one
websocket carrying SPDY stream pairs (see multiplex.py), so a new connection costs a few
frames. Otherwise each connection gets its own `v4.channel.k8s.io` websocket, and opening
one (TCP, TLS, HTTP upgrade, the pod-side dial) costs milliseconds. So a forwarder then
keeps a reserve of open websockets: a new connection takes one at once and the reserve is
refilled in the background, several upgrades in parallel. The reserve grows while
connections arrive faster than it refills and shrinks back once they stop; when the pod
side keeps failing, refills back off so a broken pod port is not hammered.
"""

from __future__ import annotations

import asyncio
import functools
import time

import structlog

from localmesh.errors import TunnelError
from localmesh.forward.faillog import FailureLog
from localmesh.forward.multiplex import SpdySession, open_session
from localmesh.forward.tunnel import Connector, ForwardStats, Tunnel
from localmesh.kube import Target

log = structlog.get_logger(__name__)

LISTEN_BACKLOG = 1024
STREAM_LIMIT = 256 * 1024
BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 5.0
RESERVE_MAX = 16  # websockets held open for one pod at the busiest
RESERVE_DECAY_SECONDS = 10.0  # without a miss for this long the reserve halves
SESSION_REOPEN_DELAY = 1.0  # seconds after a multiplexed session ended before it reopens
SESSION_REOPEN_MAX = 30.0  # ... doubling while reopening fails (the API server is away)


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
        max_spares: int = RESERVE_MAX,
        multiplex: bool = True,
    ) -> None:
        self.namespace = namespace
        self.target = target
        self.stats = ForwardStats()
        self.address: tuple[str, int] = (bind, 0)
        self.label = f"{namespace}/{target.pod}:{target.port}"
        self._connector = connector
        self._bind = bind
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        # The reserve.
        self._spares: list[Tunnel] = []
        self._opening: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._reserve_min = max(0, spares)
        self._reserve_max = max(self._reserve_min, max_spares) if spares > 0 else 0
        self._reserve = self._reserve_min
        self._last_miss = 0.0
        self._delay = 0.0  # backoff before the next refill; 0 while the pod side is fine
        self._retry: asyncio.TimerHandle | None = None
        self._decay: asyncio.TimerHandle | None = None
        self._stopped = False
        self._reopen_delay = SESSION_REOPEN_DELAY  # while a lost session cannot be reopened
        # The multiplexed session, while the server offers one.
        self._multiplex = multiplex
        self._session: SpdySession | None = None
        self._session_opening: asyncio.Task[SpdySession | None] | None = None
        self._retired: set[SpdySession] = set()
        self._failures = FailureLog("port-forward failed", target=self.label)

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._handle, self._bind, 0, backlog=LISTEN_BACKLOG, limit=STREAM_LIMIT
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (str(host), int(port))
        if self._multiplex:
            # Open the session now: the first connection should not wait for it.
            self._session_task().add_done_callback(_retrieve)
        else:
            self._fill()
        log.debug("forwarder listening", target=self.label, address=f"{host}:{port}")
        return self.address

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting; let open connections finish for up to `grace` seconds."""
        self._stopped = True
        if self._server is not None:
            self._server.close()
        for handle in (self._retry, self._decay):
            if handle is not None:
                handle.cancel()
        opening = [*self._opening, *([self._session_opening] if self._session_opening else [])]
        for task in opening:
            task.cancel()
        if opening:
            await asyncio.wait(opening)
        spares, self._spares = self._spares, []
        await asyncio.gather(*(tunnel.close() for tunnel in spares))
        if self._closing:
            await asyncio.wait(set(self._closing))
        if self._connections and grace > 0:
            await asyncio.wait(set(self._connections), timeout=grace)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections))
        sessions = [*self._retired, *([self._session] if self._session else [])]
        await asyncio.gather(*(session.close() for session in sessions))
        log.debug("forwarder stopped", target=self.label)

    @property
    def state(self) -> str:
        """What the forwarder knows now: "ready" (its pod side is connected, or opens on
        demand without failing), "connecting", "backoff" (opening the pod side fails) or
        "closed" (its listener is gone)."""
        if self._stopped or self._server is None or not self._server.is_serving():
            return "closed"
        if self._multiplex:
            if self._session is not None and self._session.usable:
                return "ready"
            opening = self._session_opening
            if opening is None or not opening.done():
                return "connecting"
            return "backoff" if opening.cancelled() or opening.exception() else "connecting"
        return "backoff" if self._delay > 0 else "ready"

    # -- connections ------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats.connections += 1
        self.stats.active += 1
        try:
            session = await self._live_session() if self._multiplex else None
            if session is not None:
                connection = await session.open(self.target.port)
                self._failures.succeeded()
                await connection.attach(reader, writer)
                return
            tunnel = self._take_spare()
            if tunnel is None:
                tunnel = await self._open()
            self._failures.succeeded()
            await tunnel.attach(reader, writer)
        except (TunnelError, ConnectionError) as exc:
            self._failures.failed(str(exc))
            writer.close()
        except asyncio.CancelledError:
            # Stopped: end quietly (Python 3.11's stream server logs cancelled handlers).
            writer.close()
        finally:
            self.stats.active -= 1
            self._connections.discard(task)

    async def _open(self) -> Tunnel:
        return await self._connector.open(
            self.namespace, self.target.pod, self.target.port, self.stats
        )

    def _take_spare(self) -> Tunnel | None:
        found: Tunnel | None = None
        while self._spares and found is None:
            tunnel = self._spares.pop(0)
            if tunnel.usable:
                found = tunnel
            else:
                self._close_later(tunnel)
        if found is None and self._reserve_max:
            # Connections outpace the reserve: hold more open, for a while.
            self._reserve = min(self._reserve_max, max(1, self._reserve * 2))
            self._last_miss = time.monotonic()
            self._schedule_decay()
        self._fill()
        return found

    # -- the multiplexed session ----------------------------------------------------------
    async def _live_session(self) -> SpdySession | None:
        session = self._session
        if session is not None and session.usable:
            return session
        return await asyncio.shield(self._session_task())

    def _session_task(self) -> asyncio.Task[SpdySession | None]:
        task = self._session_opening
        if task is None or task.done():
            task = asyncio.create_task(self._open_session(), name=f"session {self.label}")
            self._session_opening = task
        return task

    async def _open_session(self) -> SpdySession | None:
        old, self._session = self._session, None
        if old is not None:
            if old.idle:
                self._close_later(old)
            else:  # going away: its connections finish first, the server then closes it
                self._retired.add(old)
                old.add_done_callback(functools.partial(self._retired.discard, old))
        session = await open_session(self._connector, self.namespace, self.target.pod, self.stats)
        if session is None:
            log.info("no multiplexed port-forward: one websocket per connection", target=self.label)
            self._multiplex = False
            self._fill()
            return None
        if self._stopped:
            await session.close()
            return None
        self._session = session
        # A session that ends (the API server restarted) is opened again shortly after,
        # so that the state says whether the pod side can still be reached.
        session.add_done_callback(functools.partial(self._session_ended, session))
        return session

    def _session_ended(self, session: SpdySession) -> None:
        if self._session is session and not self._stopped:
            # Not at once: a server that ends every session at once is not hammered.
            self._session = None
            self._close_later(session)  # its websocket, if still open
            self._reopen_delay = SESSION_REOPEN_DELAY
            asyncio.get_running_loop().call_later(self._reopen_delay, self._reopen)

    def _reopen(self) -> None:
        if self._session is None and not self._stopped and self._multiplex:
            self._session_task().add_done_callback(self._reopened)

    def _reopened(self, task: asyncio.Task[SpdySession | None]) -> None:
        _retrieve(task)
        if task.cancelled() or task.exception() is None or self._stopped:
            return
        # Keep trying while the API server is away, so the state turns "ready" again when
        # it is back, without waiting for a connection to try.
        self._reopen_delay = min(SESSION_REOPEN_MAX, self._reopen_delay * 2)
        asyncio.get_running_loop().call_later(self._reopen_delay, self._reopen)

    # -- the reserve ------------------------------------------------------------------------
    def _fill(self) -> None:
        if self._stopped or self._retry is not None:
            return
        missing = self._reserve - len(self._spares) - len(self._opening)
        if missing <= 0:
            return
        if self._delay > 0:
            self._retry = asyncio.get_running_loop().call_later(self._delay, self._retry_fill)
            return
        for _ in range(missing):
            task = asyncio.create_task(self._open_spare(), name=f"reserve {self.label}")
            self._opening.add(task)
            task.add_done_callback(self._opened)

    def _retry_fill(self) -> None:
        self._retry = None
        missing = self._reserve - len(self._spares) - len(self._opening)
        if missing > 0 and not self._stopped:
            # One probe at a time while backing off.
            task = asyncio.create_task(self._open_spare(), name=f"reserve {self.label}")
            self._opening.add(task)
            task.add_done_callback(self._opened)

    async def _open_spare(self) -> None:
        try:
            tunnel = await self._open()
        except TunnelError as exc:
            log.debug("reserve port-forward failed", target=self.label, error=str(exc))
            self._fail()
            return
        if self._stopped:
            await tunnel.close()
            return
        self._spares.append(tunnel)
        tunnel.add_done_callback(functools.partial(self._tunnel_done, tunnel))

    def _opened(self, task: asyncio.Task[None]) -> None:
        self._opening.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("reserve task failed", target=self.label, exc_info=task.exception())
        self._fill()

    def _tunnel_done(self, tunnel: Tunnel) -> None:
        if tunnel in self._spares:
            # The pod side closed an unused websocket (an error, an idle timeout).
            self._spares.remove(tunnel)
            self._close_later(tunnel)
            self._fail()
            self._fill()
        elif tunnel.error is None:
            self._delay = 0.0  # a connection went through: the pod side works

    def _fail(self) -> None:
        self._delay = min(BACKOFF_MAX, max(BACKOFF_INITIAL, self._delay * 2))

    def _schedule_decay(self) -> None:
        if self._decay is None:
            loop = asyncio.get_running_loop()
            self._decay = loop.call_later(RESERVE_DECAY_SECONDS, self._shrink)

    def _shrink(self) -> None:
        self._decay = None
        if time.monotonic() - self._last_miss < RESERVE_DECAY_SECONDS:
            self._schedule_decay()
            return
        self._reserve = max(self._reserve_min, self._reserve // 2)
        while len(self._spares) > self._reserve:
            self._close_later(self._spares.pop())
        if self._reserve > self._reserve_min:
            self._schedule_decay()

    def _close_later(self, tunnel: Tunnel | SpdySession) -> None:
        task = asyncio.get_running_loop().create_task(tunnel.close(), name=f"close {tunnel.label}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _retrieve(task: asyncio.Task[SpdySession | None]) -> None:
    # A failed early open is retried by the first connection, which reports the error.
    if not task.cancelled() and task.exception() is not None:
        log.debug("early port-forward session failed", error=str(task.exception()))
