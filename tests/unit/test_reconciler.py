from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from localmesh.mesh import Endpoint, MeshSpec, Protocol
from localmesh.reconciler import Reconciler, Route
from localmesh.xds.resources import TYPE_ORDER
from localmesh.xds.snapshot import build_snapshot


class Recorder:
    def __init__(self) -> None:
        self.specs: list[MeshSpec] = []

    async def publish(self, spec: MeshSpec) -> None:
        self.specs.append(spec)


@pytest.fixture
async def running() -> AsyncIterator[tuple[Reconciler, Recorder]]:
    recorder = Recorder()
    rec = Reconciler(recorder.publish, listener_address="127.0.0.1", listener_port=8080)
    task = asyncio.create_task(rec.run(), name="reconciler")
    yield rec, recorder
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def endpoints_of(spec: MeshSpec, cluster: str) -> list[int]:
    return [e.port for c in spec.clusters if c.name == cluster for e in c.endpoints]


async def test_routes_and_endpoints_become_one_spec(running: tuple[Reconciler, Recorder]) -> None:
    rec, _ = running
    rec.set_routes([Route("a.localhost", "c1", Protocol.HTTP, "b1")])
    rec.endpoint_up("b1", Endpoint("127.0.0.1", 4001, "pod-a"))
    spec = await asyncio.wait_for(rec.wait_published(lambda s: endpoints_of(s, "c1") == [4001]), 5)
    assert [v.host for v in spec.virtual_hosts] == ["a.localhost"]
    assert spec.listener_port == 8080


async def test_endpoint_down_withdraws_it(running: tuple[Reconciler, Recorder]) -> None:
    rec, _ = running
    rec.set_routes([Route("a.localhost", "c1", Protocol.HTTP, "b1")])
    first, second = Endpoint("127.0.0.1", 4001, "p1"), Endpoint("127.0.0.1", 4002, "p2")
    rec.endpoint_up("b1", first)
    rec.endpoint_up("b1", second)
    await asyncio.wait_for(rec.wait_published(lambda s: endpoints_of(s, "c1") == [4001, 4002]), 5)
    rec.endpoint_down("b1", first)
    await asyncio.wait_for(rec.wait_published(lambda s: endpoints_of(s, "c1") == [4002]), 5)


async def test_a_burst_of_events_is_published_once() -> None:
    recorder = Recorder()
    rec = Reconciler(recorder.publish, listener_address="127.0.0.1", listener_port=80)
    rec.set_routes([Route(f"h{i}.localhost", f"c{i}", Protocol.GRPC, f"b{i}") for i in range(50)])
    for i in range(50):
        rec.endpoint_up(f"b{i}", Endpoint("127.0.0.1", 5000 + i))
    task = asyncio.create_task(rec.run(), name="reconciler")
    try:
        await asyncio.wait_for(rec.wait_published(lambda s: len(s.clusters) == 50), 5)
    finally:
        task.cancel()
    assert len(recorder.specs) == 1
    assert all(len(c.endpoints) == 1 for c in recorder.specs[0].clusters)


async def test_unchanged_state_is_not_republished(running: tuple[Reconciler, Recorder]) -> None:
    rec, recorder = running
    route = Route("a.localhost", "c1", Protocol.HTTP, "b1")
    rec.set_routes([route])
    await asyncio.wait_for(rec.wait_published(lambda s: len(s.virtual_hosts) == 1), 5)
    rec.set_routes([route])  # same facts again
    rec.set_routes([route, Route("b.localhost", "c2", Protocol.HTTP, "b2")])
    await asyncio.wait_for(rec.wait_published(lambda s: len(s.virtual_hosts) == 2), 5)
    assert [len(s.virtual_hosts) for s in recorder.specs] == [1, 2]


def test_endpoints_of_unrouted_clusters_are_not_served() -> None:
    rec = Reconciler(_never, listener_address="127.0.0.1", listener_port=80)
    rec.endpoint_up("orphan", Endpoint("127.0.0.1", 4001))
    rec.set_routes([Route("a.localhost", "c1", Protocol.HTTP, "b1")])
    spec = rec.desired()
    assert [c.name for c in spec.clusters] == ["c1"]
    assert spec.clusters[0].endpoints == ()


def test_two_hosts_share_one_cluster() -> None:
    rec = Reconciler(_never, listener_address="127.0.0.1", listener_port=80)
    rec.set_routes(
        [
            Route("a.localhost", "c1", Protocol.HTTP, "b1"),
            Route("b.localhost", "c1", Protocol.HTTP, "b1"),
        ]
    )
    spec = rec.desired()
    assert [c.name for c in spec.clusters] == ["c1"]
    assert sorted(v.host for v in spec.virtual_hosts) == ["a.localhost", "b.localhost"]


async def _never(spec: MeshSpec) -> None:
    raise AssertionError("not published in this test")


def test_entries_of_one_service_port_share_its_forwarders() -> None:
    """Two hosts on one service port, one as http and one as grpc: two clusters, same pods."""
    rec = Reconciler(_never, listener_address="127.0.0.1", listener_port=80)
    rec.set_routes(
        [
            Route("web.localhost", "http.ns.svc.80", Protocol.HTTP, "ns/svc:80"),
            Route("rpc.localhost", "grpc.ns.svc.80", Protocol.GRPC, "ns/svc:80"),
        ]
    )
    rec.endpoint_up("ns/svc:80", Endpoint("127.0.0.1", 4001, "pod-a"))
    spec = rec.desired()
    assert {c.name: [e.port for e in c.endpoints] for c in spec.clusters} == {
        "grpc.ns.svc.80": [4001],
        "http.ns.svc.80": [4001],
    }
    assert {c.name: c.protocol for c in spec.clusters}["grpc.ns.svc.80"] is Protocol.GRPC


def test_cached_pieces_follow_every_kind_of_change() -> None:
    """Each step's spec (built from caches) equals one built from scratch from the same
    facts, and its snapshot (built from the previous one's memo) equals a fresh build."""

    async def ignore(spec: MeshSpec) -> None:
        return None

    rec = Reconciler(ignore, listener_address="127.0.0.1", listener_port=80)
    routes = {
        f"h{i}.localhost": Route(f"h{i}.localhost", f"c{i}", Protocol.HTTP, f"b{i}")
        for i in range(4)
    }
    e1, e2 = Endpoint("127.0.0.1", 4001, "p1"), Endpoint("127.0.0.1", 4002, "p2")
    steps: list[Callable[[], object]] = [
        lambda: rec.set_routes(routes.values()),
        lambda: rec.endpoint_up("b0", e1),
        lambda: rec.endpoint_up("b0", e2),
        lambda: rec.endpoint_down("b0", e1),
        lambda: rec.endpoint_up("b1", e1),
        # Same host and cluster name, new protocol / new cluster / new backend.
        lambda: routes.update({"h0.localhost": Route("h0.localhost", "c0", Protocol.GRPC, "b0")}),
        lambda: routes.update({"h1.localhost": Route("h1.localhost", "c9", Protocol.HTTP, "b1")}),
        lambda: routes.update({"h2.localhost": Route("h2.localhost", "c2", Protocol.HTTP, "b1")}),
        lambda: routes.pop("h3.localhost"),
        lambda: rec.endpoint_down("b0", e2),
        lambda: rec.set_routes(routes.values(), listener_port=8080),
    ]
    snapshot = build_snapshot(rec.desired())
    for step in steps:
        step()
        rec.set_routes(routes.values())
        spec = rec.desired()
        fresh = Reconciler(ignore, listener_address="127.0.0.1", listener_port=spec.listener_port)
        fresh.set_routes(rec._routes)
        for backend, endpoints in rec._endpoints.items():
            for endpoint in endpoints:
                fresh.endpoint_up(backend, endpoint)
        assert spec == fresh.desired()
        snapshot = build_snapshot(spec, snapshot)
        fresh_snapshot = build_snapshot(spec)
        for type_url in TYPE_ORDER:
            assert snapshot.resources(type_url) == fresh_snapshot.resources(type_url)


def test_unchanged_pieces_are_the_objects_published_before() -> None:
    async def ignore(spec: MeshSpec) -> None:
        return None

    rec = Reconciler(ignore, listener_address="127.0.0.1", listener_port=80)
    routes = [Route(f"h{i}.localhost", f"c{i}", Protocol.HTTP, f"b{i}") for i in range(3)]
    rec.set_routes(routes)
    rec.endpoint_up("b0", Endpoint("127.0.0.1", 4001))
    before = rec.desired()
    rec.set_routes([*routes, Route("new.localhost", "c9", Protocol.HTTP, "b9")])
    rec.endpoint_up("b1", Endpoint("127.0.0.1", 4002))
    after = rec.desired()
    old = {c.name: c for c in before.clusters}
    new = {c.name: c for c in after.clusters}
    assert new["c0"] is old["c0"] and new["c2"] is old["c2"]
    assert new["c1"].endpoints == (Endpoint("127.0.0.1", 4002),)
    assert all(v in after.virtual_hosts for v in before.virtual_hosts)
    assert {id(v) for v in before.virtual_hosts} <= {id(v) for v in after.virtual_hosts}
