"""This machine's end of the reverse tunnel: a warm pool of idle tunnel connections to the
shadow agent, each carried to a local port once the shadow hands it an inbound connection.

How a tunnel connection is opened is a `Dialer`: `PortForwardDialer` goes through the
project's port-forwarder (a `PodForwarder` to the shadow pod's tunnel port: one multiplexed
websocket session, or one websocket per connection on older API servers); `TcpDialer`
connects straight to an address (tests, benchmarks, a shadow on this machine).

The pool keeps `pool` connections idle; each one the shadow takes is replaced at once, and
when a take finds the pool empty (a burst) the target doubles, up to `max_pool`, then falls
back as connections are used (idle connections are never closed by this side: the shadow
might be handing one out at that moment). A failed open, or an idle connection lost, is
retried with exponential backoff (the attempts of one round count once: the whole pool
lost at once is one step, 50 ms), so a broken port-forward reconnects by itself, quickly,
and without hammering the API server while it stays broken. Before the first connection
ever opened (the shadow pod starting) the backoff stays short.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from localmesh.clustermesh import tunnel_wire as wire
from localmesh.forward import Connector, PodForwarder
from localmesh.kube import Target

log = structlog.get_logger(__name__)

DEFAULT_POOL = 4
DEFAULT_MAX_POOL = 64
BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 5.0
# Until the first connection opens (the shadow pod is still starting) retry at least this
# often: the agent listens within a second or two and the developer is waiting for it.
BACKOFF_MAX_CONNECTING = 0.2
DECAY_SECONDS = 10.0  # without a burst for this long the pool target halves
LOCAL_CONNECT_TIMEOUT = 3.0
LOCAL_HOSTS = ("127.0.0.1", "::1")  # a local server may listen on either


class TunnelOpenError(Exception):
    """A tunnel connection could not be opened or the shadow refused it."""


class Dialer(Protocol):
    """Opens one TCP-like connection to the shadow's tunnel port."""

    label: str

    async def dial(self) -> wire.Stream: ...

    async def close(self) -> None: ...


class TcpDialer:
    """Straight to `host:port`."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.label = f"{host}:{port}"

    async def dial(self) -> wire.Stream:
        return await asyncio.open_connection(self.host, self.port, limit=wire.STREAM_LIMIT)

    async def close(self) -> None:
        return None


class PortForwardDialer:
    """Through the project's port-forwarder to `pod`'s tunnel port: a `PodForwarder`
    listening on loopback, started on first use."""

    def __init__(
        self,
        connector: Connector,
        namespace: str,
        pod: str,
        port: int = wire.DEFAULT_TUNNEL_PORT,
        *,
        multiplex: bool = True,
    ) -> None:
        self.label = f"{namespace}/{pod}:{port}"
        self.forwarder = PodForwarder(
            connector, namespace, Target(pod, "", port), multiplex=multiplex
        )
        self._started: asyncio.Task[tuple[str, int]] | None = None
        self._errors_seen = 0

    async def dial(self) -> wire.Stream:
        self._errors_seen = self.forwarder.stats.errors
        if self._started is None:
            self._started = asyncio.ensure_future(self.forwarder.start())
        host, port = await asyncio.shield(self._started)
        return await asyncio.open_connection(host, port, limit=wire.STREAM_LIMIT)

    async def close(self) -> None:
        if self._started is not None:
            with contextlib.suppress(Exception):
                await self._started
            await self.forwarder.stop()

    @property
    def last_error(self) -> str | None:
        """What the pod side reported since the last dial (why a connection closed)."""
        stats = self.forwarder.stats
        return stats.last_error if stats.errors > self._errors_seen else None


@dataclass
class TunnelStats:
    """What `status` shows of one session's tunnel."""

    served: int = 0  # inbound connections carried to a local port
    active: int = 0  # open now
    idle: int = 0  # tunnel connections waiting at the shadow
    opened: int = 0  # tunnel connections opened (handshake done)
    open_failures: int = 0  # dials or handshakes that failed
    lost_idle: int = 0  # idle connections that closed (port-forward broken, shadow gone)
    last_tunnel_error: str | None = None
    local_failures: int = 0  # inbound connections reset because the local port refused
    last_local_error: str | None = None
    local_down: set[int] = field(default_factory=set)  # local ports whose last try failed
    bytes_in: int = 0  # cluster -> local process
    bytes_out: int = 0  # local process -> cluster
    per_port: dict[int, int] = field(default_factory=dict)  # served, by remote port


class TunnelClient:
    """Keeps the pool of tunnel connections to one shadow; `ports` maps each exposed remote
    port to the local port that serves it."""

    def __init__(
        self,
        dialer: Dialer,
        secret: bytes,
        ports: Mapping[int, int],
        *,
        pool: int = DEFAULT_POOL,
        max_pool: int = DEFAULT_MAX_POOL,
        local_hosts: Sequence[str] = LOCAL_HOSTS,
        local_timeout: float = LOCAL_CONNECT_TIMEOUT,
    ) -> None:
        if pool < 1:
            raise ValueError("the tunnel pool needs at least one connection")
        self.dialer = dialer
        self.stats = TunnelStats()
        self._hello = wire.hello(secret)
        self._ports = dict(ports)
        self._local_hosts = tuple(local_hosts)
        self._preferred: dict[int, str] = {}
        self._local_timeout = local_timeout
        self._min = pool
        self._max = max(pool, max_pool)
        self._target = pool
        self._opening = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()  # serving an inbound connection
        self._delay = 0.0
        self._round = 0  # attempts started in one backoff round fail it once
        self._retry: asyncio.TimerHandle | None = None
        self._decay: asyncio.TimerHandle | None = None
        self._last_burst = 0.0
        self._ready = asyncio.Event()
        self._stopped = False

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start filling the pool (returns at once; see `wait_ready`)."""
        self._fill()

    async def wait_ready(self) -> None:
        """Wait until a tunnel connection is idle at the shadow (callers bound the wait)."""
        await self._ready.wait()

    @property
    def ready(self) -> bool:
        return self.stats.idle > 0

    @property
    def state(self) -> str:
        """One line for `status`: is the tunnel up, and is the local process answering."""
        stats = self.stats
        if self._stopped:
            tunnel = "stopped"
        elif stats.idle > 0 or stats.active > 0:
            tunnel = "connected"
        elif stats.last_tunnel_error is not None:
            tunnel = f"reconnecting ({stats.last_tunnel_error})"
        else:
            tunnel = "connecting"
        if stats.local_down:
            ports = ", ".join(str(p) for p in sorted(stats.local_down))
            return f"{tunnel}; local port {ports} not answering (marked requests get 503)"
        return tunnel

    async def stop(self, grace: float = 0.0) -> None:
        """Stop: idle connections close at once, open ones get `grace` seconds."""
        self._stopped = True
        for handle in (self._retry, self._decay):
            if handle is not None:
                handle.cancel()
        busy = set(self._busy)
        for task in self._tasks - busy:
            task.cancel()
        if busy and grace > 0:
            await asyncio.wait(busy, timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        await self.dialer.close()

    # -- the pool -------------------------------------------------------------------------
    def _fill(self) -> None:
        if self._stopped or self._retry is not None:
            return
        missing = self._target - self.stats.idle - self._opening
        if missing <= 0:
            return
        if self._delay > 0:  # backing off: one probe at a time
            self._retry = asyncio.get_running_loop().call_later(self._delay, self._probe)
            return
        for _ in range(missing):
            self._spawn()

    def _probe(self) -> None:
        self._retry = None
        if not self._stopped and self._target - self.stats.idle - self._opening > 0:
            self._spawn()

    def _spawn(self) -> None:
        self._opening += 1
        task = asyncio.create_task(self._connection(self._round), name="tunnel-idle")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, round_: int) -> None:
        """One tunnel connection: open, wait idle at the shadow, then serve what it brings."""
        stats = self.stats
        try:
            stream = await self._open()
        except TunnelOpenError as exc:
            self._opening -= 1
            stats.open_failures += 1
            self._failed(round_, str(exc))
            return
        except BaseException:
            self._opening -= 1
            raise
        self._opening -= 1
        stats.opened += 1
        stats.idle += 1
        self._delay = 0.0
        self._ready.set()
        self._fill()  # after a backoff: the rest of the pool now
        reader, writer = stream
        try:
            header = await reader.readexactly(wire.PORT_HEADER.size)
        except (asyncio.IncompleteReadError, ConnectionError):
            stats.idle -= 1
            stats.lost_idle += 1
            writer.close()
            # All idle connections of a broken port-forward go at once: one backoff step
            # for the lot (a peer that drops every connection is not redialed in a loop).
            self._failed(round_, f"tunnel connection to {self.dialer.label} closed while idle")
            return
        except BaseException:
            stats.idle -= 1
            writer.close()
            raise
        stats.idle -= 1
        if stats.idle == 0:
            self._burst()
        self._fill()
        task = asyncio.current_task()
        assert task is not None
        self._busy.add(task)
        task.add_done_callback(self._busy.discard)
        (remote,) = wire.PORT_HEADER.unpack(header)
        await self._serve(stream, remote)

    async def _open(self) -> wire.Stream:
        label = self.dialer.label
        try:
            reader, writer = await self.dialer.dial()
        except Exception as exc:  # OSError, TunnelError, ...
            raise TunnelOpenError(f"cannot reach the shadow at {label}: {exc}") from None
        try:
            async with asyncio.timeout(wire.HANDSHAKE_TIMEOUT):
                writer.write(self._hello)
                answer = await reader.readexactly(1)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            writer.close()
            why = getattr(self.dialer, "last_error", None) or "the connection closed"
            raise TunnelOpenError(f"no answer from the shadow at {label}: {why}") from None
        except BaseException:
            writer.close()
            raise
        if answer != wire.ACCEPTED:
            writer.close()
            raise TunnelOpenError(
                f"the shadow at {label} refused this session's secret "
                "(is another localmesh session using this shadow pod?)"
            )
        return reader, writer

    def _failed(self, round_: int, error: str) -> None:
        if self.stats.last_tunnel_error != error or self._delay == 0:
            # Before the first connection the shadow agent may still be starting: expected.
            say = log.warning if self.stats.opened else log.debug
            say("tunnel to the shadow failed; reconnecting", error=error)
        self.stats.last_tunnel_error = error
        if round_ == self._round:
            self._round += 1
            ceiling = BACKOFF_MAX if self.stats.opened else BACKOFF_MAX_CONNECTING
            self._delay = min(ceiling, max(BACKOFF_INITIAL, self._delay * 2))
        if self.stats.idle == 0:
            self._ready.clear()
        self._fill()

    def _burst(self) -> None:
        """The shadow took the last idle connection: hold more for a while."""
        self._target = min(self._max, self._target * 2)
        self._last_burst = time.monotonic()
        if self._decay is None and not self._stopped:
            self._decay = asyncio.get_running_loop().call_later(DECAY_SECONDS, self._shrink)

    def _shrink(self) -> None:
        self._decay = None
        if time.monotonic() - self._last_burst < DECAY_SECONDS:
            self._decay = asyncio.get_running_loop().call_later(DECAY_SECONDS, self._shrink)
            return
        self._target = max(self._min, self._target // 2)
        if self._target > self._min:
            self._decay = asyncio.get_running_loop().call_later(DECAY_SECONDS, self._shrink)

    @property
    def pool_target(self) -> int:
        """Idle connections the pool aims for now (grows in bursts, falls back after)."""
        return self._target

    @property
    def retry_delay(self) -> float:
        """Seconds before the next open attempt; 0 while opening works."""
        return self._delay

    # -- serving ----------------------------------------------------------------------------
    async def _serve(self, tunnel: wire.Stream, remote: int) -> None:
        stats = self.stats
        stats.active += 1
        try:
            local_port = self._ports.get(remote)
            local = await self._open_local(remote, local_port)
            if local is None:
                tunnel[1].write(wire.LOCAL_FAILED)
                await wire.close(tunnel[1])
                return
            tunnel[1].write(wire.LOCAL_OK)
            stats.served += 1
            stats.per_port[remote] = stats.per_port.get(remote, 0) + 1
            into, out = wire.PumpResult(self._count_in), wire.PumpResult(self._count_out)
            await wire.splice(tunnel, local, into, out)
        except asyncio.CancelledError:
            wire.reset(tunnel[1])
            raise
        finally:
            stats.active -= 1

    def _count_in(self, size: int) -> None:
        self.stats.bytes_in += size

    def _count_out(self, size: int) -> None:
        self.stats.bytes_out += size

    async def _open_local(self, remote: int, local_port: int | None) -> wire.Stream | None:
        stats = self.stats
        if local_port is None:
            stats.local_failures += 1
            stats.last_local_error = f"the shadow sent port {remote}, which is not exposed"
            log.warning("unexpected port from the shadow", port=remote)
            return None
        hosts = self._local_hosts
        preferred = self._preferred.get(local_port)
        if preferred is not None:
            hosts = (preferred, *(h for h in hosts if h != preferred))
        error = "no address to try"
        for host in hosts:
            try:
                async with asyncio.timeout(self._local_timeout):
                    stream = await asyncio.open_connection(
                        host, local_port, limit=wire.STREAM_LIMIT
                    )
            except TimeoutError:
                error = f"no answer within {self._local_timeout:g}s"
                continue
            except OSError as exc:
                error = exc.strerror or str(exc)
                continue
            self._preferred[local_port] = host
            if local_port in stats.local_down:
                stats.local_down.discard(local_port)
                log.info("local port answers again", port=local_port)
            return stream
        stats.local_failures += 1
        stats.last_local_error = f"nothing answers on local port {local_port}: {error}"
        if local_port not in stats.local_down:
            stats.local_down.add(local_port)
            log.warning(
                "local port is down: marked requests get 503 until it answers",
                port=local_port,
                error=error,
            )
        return None
