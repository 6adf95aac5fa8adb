"""Forwarders for every ready pod of every service, following the cluster's watches.

    async with ForwardManager(cluster, on_event=queue.put_nowait) as manager:
        service = await manager.add(entry)      # TargetError if the entry cannot resolve
        ...                                     # ForwarderEvent(up/down, key, pod, address)

`on_event` is the ONE consumer of forwarder events, called on the event loop: an `up` event
comes after the listener is bound, a `down` event before the listener closes, so a consumer
that adds and removes endpoints accordingly always holds exactly the live forwarders.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import aiohttp
import structlog

from localmesh.config import ServiceEntry
from localmesh.desired import Endpoint
from localmesh.forward.limits import map_large_buffers_apart, raise_open_files_limit
from localmesh.forward.pod import PodForwarder
from localmesh.forward.tunnel import Connector
from localmesh.kube import Cluster, ServiceKey, Target, TargetUpdate, TargetWatch

log = structlog.get_logger(__name__)

RESTART_DELAY = 1.0


@dataclass(frozen=True)
class ForwarderEvent:
    """A forwarder came up (`up=True`) or is going away, for one service port and pod."""

    up: bool
    key: ServiceKey
    pod: str
    address: str
    port: int

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(address=self.address, port=self.port, pod=self.pod)


@dataclass(frozen=True)
class ForwardOptions:
    bind: str = "127.0.0.1"
    connect_timeout: float = 10.0  # websocket upgrade through the API server
    heartbeat: float | None = 20.0  # websocket ping interval: idle connections stay up
    spares: int = 1  # websockets kept open per pod so new connections skip the upgrade
    grace: float = 5.0  # how long a withdrawn pod's open connections may finish
    multiplex: bool = True  # one SPDY-in-websocket session per pod where the server offers it


async def supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run `run` until it returns; an unexpected exception is logged and `run` restarted."""
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task died; restarting", task=name)
            await asyncio.sleep(RESTART_DELAY)


class ServiceForwarder:
    """One listener per ready pod of one service port, kept equal to the watch's targets."""

    def __init__(
        self,
        watch: TargetWatch,
        connector: Connector,
        emit: Callable[[ForwarderEvent], None],
        options: ForwardOptions,
    ) -> None:
        self.watch = watch
        self.key = watch.key
        self.forwarders: dict[Target, PodForwarder] = {}
        self.last_update: TargetUpdate | None = None
        self._connector = connector
        self._emit = emit
        self._options = options
        self._stopping: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        name = f"forward {self.key}"
        self._task = asyncio.create_task(supervised(name, self._follow), name=name)

    async def _follow(self) -> None:
        async for update in self.watch.updates():
            self.last_update = update
            await self._sync(update.targets)

    async def _sync(self, targets: frozenset[Target]) -> None:
        # New pods first, then the old ones go: a single replica being replaced always
        # has an endpoint.
        for target in sorted(targets - self.forwarders.keys()):
            forwarder = PodForwarder(
                self._connector,
                self.key.namespace,
                target,
                bind=self._options.bind,
                spares=self._options.spares,
                multiplex=self._options.multiplex,
            )
            try:
                address, port = await forwarder.start()
            except OSError as exc:
                log.error("cannot open a local listener", target=forwarder.label, error=str(exc))
                continue
            self.forwarders[target] = forwarder
            log.info("forwarder up", service=str(self.key), pod=target.pod, port=port)
            self._emit(ForwarderEvent(True, self.key, target.pod, address, port))
        for target in [t for t in self.forwarders if t not in targets]:
            self._withdraw(target)

    def _withdraw(self, target: Target) -> None:
        forwarder = self.forwarders.pop(target)
        address, port = forwarder.address
        log.info("forwarder down", service=str(self.key), pod=target.pod, port=port)
        self._emit(ForwarderEvent(False, self.key, target.pod, address, port))
        task = asyncio.create_task(
            forwarder.stop(self._options.grace), name=f"withdraw {forwarder.label}"
        )
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for target in list(self.forwarders):
            self._withdraw(target)
        if self._stopping:
            await asyncio.wait(set(self._stopping))

    def events(self) -> list[ForwarderEvent]:
        """An `up` event for every live forwarder (what a late consumer needs to know)."""
        return [
            ForwarderEvent(True, self.key, t.pod, *f.address) for t, f in self.forwarders.items()
        ]


class ForwardManager:
    """Owns the HTTP session to the API server and one `ServiceForwarder` per service port."""

    def __init__(
        self,
        cluster: Cluster,
        on_event: Callable[[ForwarderEvent], None],
        options: ForwardOptions | None = None,
    ) -> None:
        self.cluster = cluster
        self.options = options or ForwardOptions()
        self._on_event = on_event
        self._session: aiohttp.ClientSession | None = None
        self._connector: Connector | None = None
        self._services: dict[ServiceKey, ServiceForwarder] = {}
        self._users: dict[ServiceKey, set[ServiceEntry]] = {}

    async def start(self) -> None:
        limit = raise_open_files_limit()
        map_large_buffers_apart()
        log.debug("open files limit", soft=limit)
        access = self.cluster.access
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=access.ssl_context or True),
        )
        self._connector = Connector(
            access,
            self._session,
            connect_timeout=self.options.connect_timeout,
            heartbeat=self.options.heartbeat,
        )

    async def __aenter__(self) -> ForwardManager:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def services(self) -> dict[ServiceKey, ServiceForwarder]:
        return dict(self._services)

    def _emit(self, event: ForwarderEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("forwarder event consumer failed", event=event)

    async def add(self, entry: ServiceEntry) -> ServiceForwarder:
        """Forward the service port of `entry` (TargetError when it cannot be resolved).
        Entries naming the same service port share one ServiceForwarder."""
        if self._connector is None:
            raise RuntimeError("ForwardManager.start() first")
        watch = await self.cluster.watch(entry)
        existing = self._services.get(watch.key)
        if existing is not None:
            self.cluster.unwatch(watch)
            self._users[watch.key].add(entry)
            return existing
        service = ServiceForwarder(watch, self._connector, self._emit, self.options)
        self._services[watch.key] = service
        self._users[watch.key] = {entry}
        service.start()
        return service

    async def remove(self, entry: ServiceEntry) -> None:
        """Stop forwarding for `entry` once no other entry uses the same service port."""
        for key, users in list(self._users.items()):
            if entry in users:
                users.discard(entry)
                if not users:
                    del self._users[key]
                    service = self._services.pop(key)
                    await service.close()
                    self.cluster.unwatch(service.watch)

    async def close(self) -> None:
        services, self._services = list(self._services.values()), {}
        self._users.clear()
        await asyncio.gather(*(s.close() for s in services), return_exceptions=True)
        for service in services:
            self.cluster.unwatch(service.watch)
        if self._session is not None:
            await self._session.close()
            self._session = None
