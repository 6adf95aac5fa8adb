"""The one owner of the mesh state.

Inputs arrive from several places (the loaded config, resolved Service ports, forwarders
coming up and going down); each input only records a fact and marks the state dirty. One task
then computes the whole `DesiredState` from the recorded facts with the planner
(`localmesh.plan`) and publishes it when it differs from the last one published. Being
level-triggered, a burst of events costs one computation, and no event order can leave
Envoy with a stale endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping

import structlog

from localmesh.config import Config, ServiceEntry
from localmesh.desired import DesiredState, Endpoint
from localmesh.plan import Choices, PlanMemo, plan
from localmesh.protocol_choice import ProtocolChoice

log = structlog.get_logger(__name__)

Publish = Callable[[DesiredState], Awaitable[None]]


class Reconciler:
    """Records facts synchronously (same event loop, no locks); `run()` publishes."""

    def __init__(self, publish: Publish, *, listener_address: str, access_log: str = "") -> None:
        self._publish = publish
        self._listener_address = listener_address
        self._access_log = access_log
        self._config = Config()
        self._resolved: dict[ServiceEntry, int] = {}
        self._choices: dict[ServiceEntry, ProtocolChoice] = {}
        self._failures: dict[ServiceEntry, str] = {}
        self._endpoints: dict[str, set[Endpoint]] = {}
        self._sorted: dict[str, tuple[Endpoint, ...]] = {}  # backend -> sorted endpoints
        # The same tuple object until that backend's endpoints change: the planner's memo
        # then skips everything that did not move (one pod among 1,000 services).
        self._view = _SortedEndpoints(self)
        self._memo = PlanMemo()
        self._dirty = asyncio.Event()
        self._published: DesiredState | None = None
        self._published_event = asyncio.Event()

    # -- inputs ---------------------------------------------------------------------------
    def set_config(
        self,
        config: Config,
        resolved: Mapping[ServiceEntry, int],
        choices: Choices | None = None,
        failures: Mapping[ServiceEntry, str] | None = None,
    ) -> None:
        """The config and the port of every resolved backend (`Config.backends()`), and
        the protocol chosen for those without `type`."""
        self._config = config
        self._resolved = dict(resolved)
        self._choices = dict(choices or {})
        self._failures = dict(failures or {})  # unresolved backends: why (503 bodies)
        self._dirty.set()

    def endpoint_up(self, backend: str, endpoint: Endpoint) -> None:
        self._endpoints.setdefault(backend, set()).add(endpoint)
        self._sorted.pop(backend, None)
        self._dirty.set()

    def endpoint_down(self, backend: str, endpoint: Endpoint) -> None:
        endpoints = self._endpoints.get(backend)
        if endpoints is None:
            return
        endpoints.discard(endpoint)
        if not endpoints:
            del self._endpoints[backend]
        self._sorted.pop(backend, None)
        self._dirty.set()

    def endpoints(self, backend: str) -> tuple[Endpoint, ...]:
        found = self._sorted.get(backend)
        if found is None:
            found = self._sorted[backend] = tuple(sorted(self._endpoints.get(backend, ())))
        return found

    # -- state ----------------------------------------------------------------------------
    def desired(self) -> DesiredState:
        """The DesiredState the recorded facts call for; a pure function of them."""
        return plan(
            self._config,
            self._resolved,
            self._view,
            self._listener_address,
            memo=self._memo,
            choices=self._choices,
            failures=self._failures,
            access_log=self._access_log,
        )

    def pod_of(self, address: str) -> str:
        """The pod behind an endpoint `host:port` of the published state (`local` for a
        process on this machine, "" when unknown)."""
        state = self._published
        for cluster in state.clusters if state is not None else ():
            for endpoint in cluster.endpoints:
                if f"{endpoint.address}:{endpoint.port}" == address:
                    return endpoint.pod or ("local" if not cluster.kind.eds else "")
        return ""

    @property
    def published(self) -> DesiredState | None:
        return self._published

    async def wait_published(self, predicate: Callable[[DesiredState], bool]) -> DesiredState:
        """Wait until a published state satisfies `predicate` (callers add their deadline)."""
        while self._published is None or not predicate(self._published):
            self._published_event.clear()
            await self._published_event.wait()
        return self._published

    # -- the owning task ------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            state = self.desired()
            if state == self._published:
                continue
            await self._publish(state)
            self._published = state
            self._published_event.set()
            log.debug(
                "desired state published",
                clusters=len(state.clusters),
                hosts=len(state.virtual_hosts),
                endpoints=sum(len(c.endpoints) for c in state.clusters),
            )


class _SortedEndpoints(Mapping[str, tuple[Endpoint, ...]]):
    """The reconciler's live endpoints by backend, sorted, without copying them per plan."""

    def __init__(self, reconciler: Reconciler) -> None:
        self._reconciler = reconciler

    def __getitem__(self, backend: str) -> tuple[Endpoint, ...]:
        if backend not in self._reconciler._endpoints:
            raise KeyError(backend)
        return self._reconciler.endpoints(backend)

    def __iter__(self) -> Iterator[str]:
        return iter(self._reconciler._endpoints)

    def __len__(self) -> int:
        return len(self._reconciler._endpoints)
