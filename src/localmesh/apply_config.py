"""Config apply: make port-forwards and the reconciler follow services.yaml.

`Backends` keeps one state per forwarded Service port of the config (`Config.backends()`:
entries and route targets, each without routes). Applying a config touches only the
difference: new backends get forwarders, removed ones lose theirs, and everything else,
routes included, reaches Envoy through the reconciler (RDS): a route edit leaves every
backend equal, so no forwarder is touched.

    backends = Backends(manager, reconciler)
    await backends.apply(config)             # forwarders follow, then the reconciler
    await backends.retry_unresolved()        # every few seconds: missing services appear
    backends.on_forwarder(event)             # ForwardManager's event consumer
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from localmesh.config import Config, ServiceEntry
from localmesh.errors import TargetError
from localmesh.forward import ForwarderEvent, ForwardManager
from localmesh.kube import ServiceKey, TargetUpdate
from localmesh.protocol_choice import ProtocolChoice, choose_protocol
from localmesh.reconciler import Reconciler

log = structlog.get_logger(__name__)


@dataclass
class BackendState:
    """One forwarded Service port as the config names it, and what became of it."""

    entry: ServiceEntry
    key: ServiceKey | None = None  # resolved; None while it cannot be
    choice: ProtocolChoice | None = None  # no `type`: chosen from the Service port
    error: str = ""
    reason: str = ""  # `error` without the entry's own label: the 503 body says it
    last_reconnect: datetime | None = None
    last_reconnect_reason: str = ""
    unfollow: Callable[[], None] | None = None  # stops following the Service's port


def _reason(entry: ServiceEntry, error: str) -> str:
    """The error without its `file:line:col: host -> target: ` prefix (the body names the
    host itself)."""
    label = entry.describe() + ": "
    _, found, rest = error.partition(label)
    return rest if found else error


class Backends:
    def __init__(self, manager: ForwardManager, reconciler: Reconciler) -> None:
        self._manager = manager
        self._reconciler = reconciler
        self._states: dict[ServiceEntry, BackendState] = {}
        self.config = Config()
        self.arrivals = asyncio.Event()  # any forwarder event (start-up waits on it)
        self._applying = False  # a protocol change then waits for apply's own publish

    def state(self, backend: ServiceEntry) -> BackendState | None:
        return self._states.get(backend)

    def states(self) -> list[BackendState]:
        return list(self._states.values())

    def resolved(self) -> dict[ServiceEntry, int]:
        return {e: s.key.port for e, s in self._states.items() if s.key is not None}

    def failures(self) -> dict[ServiceEntry, str]:
        """Why each unresolved backend is: its host answers 503 with it."""
        return {e: s.reason for e, s in self._states.items() if s.key is None and s.reason}

    def _publish(self) -> None:
        self._reconciler.set_config(self.config, self.resolved(), self.choices(), self.failures())

    def choices(self) -> dict[ServiceEntry, ProtocolChoice]:
        return {e: s.choice for e, s in self._states.items() if s.choice is not None}

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        """Protocol choices made meanwhile are published once, by the caller, after it."""
        self._applying = True
        try:
            yield
        finally:
            self._applying = False

    async def apply(self, config: Config) -> None:
        """Make forwarders and routes follow `config` (only the difference is touched)."""
        wanted = config.backends()
        keep = set(wanted)
        with self._batch():
            for backend in [b for b in self._states if b not in keep]:
                state = self._states.pop(backend)
                if state.unfollow is not None:
                    state.unfollow()
                if state.key is not None:
                    await self._manager.remove(backend)
            for backend in wanted:
                known = self._states.get(backend)
                if known is None:
                    self._states[backend] = added = BackendState(backend)
                    await self._add(added)
                else:
                    known.entry = backend  # keep the newest source location
        self.config = config
        self._publish()

    async def _add(self, state: BackendState) -> None:
        try:
            service = await self._manager.add(state.entry)
        except TargetError as exc:
            # Retried every few seconds: say it loudly once, then only when the reason changes.
            report = log.error if str(exc) != state.error else log.debug
            state.error = str(exc)
            state.reason = _reason(state.entry, state.error)
            report("cannot forward", host=state.entry.host, error=state.error)
            return
        state.key, state.error, state.reason = service.key, "", ""
        if state.entry.inferred:
            # The Service watch carries every change of the port (its appProtocol may be
            # set or changed later): the choice follows it.
            state.unfollow = service.watch.subscribe(lambda update: self._follow(state, update))

    def _follow(self, state: BackendState, update: TargetUpdate) -> None:
        info = update.info
        if info is None or self._states.get(state.entry) is not state:
            return
        choice = choose_protocol(info.port.name, info.port.app_protocol)
        if choice == state.choice:
            return
        event = "protocol chosen" if state.choice is None else "protocol changed"
        state.choice = choice
        log.info(event, host=state.entry.host, protocol=choice.describe())
        if not self._applying and state.key is not None:
            self._publish()

    async def retry_unresolved(self) -> None:
        pending = [(s, s.reason) for s in self._states.values() if s.key is None]
        with self._batch():
            for state, _ in pending:
                await self._add(state)
        if any(s.key is not None or s.reason != reason for s, reason in pending):
            self._publish()

    def on_forwarder(self, event: ForwarderEvent) -> None:
        if event.up:
            self._reconciler.endpoint_up(str(event.key), event.endpoint)
        else:
            self._reconciler.endpoint_down(str(event.key), event.endpoint)
            for state in self._states.values():
                if state.key == event.key:
                    state.last_reconnect = datetime.now(UTC)
                    state.last_reconnect_reason = f"pod {event.pod} went away"
        self.arrivals.set()

    def all_forwarded(self) -> bool:
        """Every resolved backend has as many forwarders as it has ready pods."""
        services = self._manager.services
        for state in self._states.values():
            if state.key is None:
                continue
            service = services.get(state.key)
            if service is None or service.last_update is None:
                return False
            if len(service.forwarders) < len(service.last_update.targets):
                return False
        return True


__all__ = ["BackendState", "Backends"]
