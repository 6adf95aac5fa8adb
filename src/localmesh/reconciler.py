"""The one owner of the mesh state.

Inputs arrive from several places (the loaded config, resolved service ports, forwarders
coming up and going down); each input only records a fact and marks the state dirty. One task
then recomputes the whole desired `MeshSpec` from the recorded facts and publishes it when it
differs from the last one published. Being level-triggered, a burst of events costs one
recomputation, and no event order can leave Envoy with a stale endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog

from localmesh.mesh import ClusterSpec, Endpoint, MeshSpec, Protocol, VirtualHostSpec

log = structlog.get_logger(__name__)

Publish = Callable[[MeshSpec], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    """A host routed to a cluster: one services.yaml entry after its port is resolved.

    `backend` names the forwarded service port whose live forwarders are the cluster's
    endpoints; entries naming the same service port share them (even with different types).
    """

    host: str
    cluster: str
    protocol: Protocol
    backend: str


class Reconciler:
    """Records facts synchronously (same event loop, no locks); `run()` publishes."""

    def __init__(self, publish: Publish, *, listener_address: str, listener_port: int) -> None:
        self._publish = publish
        self._listener_address = listener_address
        self._listener_port = listener_port
        self._routes: tuple[Route, ...] = ()
        self._endpoints: dict[str, set[Endpoint]] = {}
        # Derived from the facts above and rebuilt only when they change, so that an edit
        # of one entry among 1,000 builds one new spec piece, and the unchanged ones are
        # the very objects published last time (equality then stops at identity).
        self._sorted: dict[str, tuple[Endpoint, ...]] = {}  # backend -> sorted endpoints
        self._backends: tuple[tuple[str, Route], ...] = ()  # (cluster, route), by cluster
        self._vhosts: tuple[VirtualHostSpec, ...] = ()
        self._cluster_specs: dict[str, ClusterSpec] = {}
        self._dirty = asyncio.Event()
        self._published: MeshSpec | None = None
        self._published_event = asyncio.Event()

    # -- inputs ---------------------------------------------------------------------------
    def set_routes(self, routes: Iterable[Route], *, listener_port: int | None = None) -> None:
        self._routes = tuple(routes)
        backends: dict[str, Route] = {}
        for route in self._routes:
            backends.setdefault(route.cluster, route)
        self._backends = tuple(sorted(backends.items()))
        previous = {v.host: v for v in self._vhosts}
        vhosts = []
        for r in sorted(self._routes, key=lambda r: r.host):
            vh = previous.get(r.host)
            if vh is None or vh.cluster != r.cluster or vh.protocol != r.protocol:
                vh = VirtualHostSpec(host=r.host, cluster=r.cluster, protocol=r.protocol)
            vhosts.append(vh)
        self._vhosts = tuple(vhosts)
        if listener_port is not None:
            self._listener_port = listener_port
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
    def desired(self) -> MeshSpec:
        """The MeshSpec the recorded facts call for; a pure function of them."""
        cached = self._cluster_specs
        specs: dict[str, ClusterSpec] = {}
        for name, route in self._backends:
            endpoints = self.endpoints(route.backend)
            spec = cached.get(name)
            if spec is None or spec.protocol != route.protocol or spec.endpoints != endpoints:
                spec = ClusterSpec(name=name, protocol=route.protocol, endpoints=endpoints)
            specs[name] = spec
        self._cluster_specs = specs
        clusters = tuple(specs.values())
        vhosts = self._vhosts
        return MeshSpec(
            listener_address=self._listener_address,
            listener_port=self._listener_port,
            clusters=clusters,
            virtual_hosts=vhosts,
        )

    @property
    def published(self) -> MeshSpec | None:
        return self._published

    async def wait_published(self, predicate: Callable[[MeshSpec], bool]) -> MeshSpec:
        """Wait until a published spec satisfies `predicate` (callers add their deadline)."""
        while self._published is None or not predicate(self._published):
            self._published_event.clear()
            await self._published_event.wait()
        return self._published

    # -- the owning task ------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            spec = self.desired()
            if spec == self._published:
                continue
            await self._publish(spec)
            self._published = spec
            self._published_event.set()
            log.debug(
                "mesh published",
                clusters=len(spec.clusters),
                hosts=len(spec.virtual_hosts),
                endpoints=sum(len(c.endpoints) for c in spec.clusters),
            )
