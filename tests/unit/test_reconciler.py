from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from localmesh.config import Config, ServiceEntry
from localmesh.desired import DesiredState, Endpoint, Protocol
from localmesh.reconciler import Reconciler
from localmesh.xds.resources import TYPE_ORDER
from localmesh.xds.snapshot import build_snapshot


def entry(host: str, service: str, protocol: Protocol = Protocol.HTTP) -> ServiceEntry:
    return ServiceEntry(host, "ns", service, protocol, port=80)


def set_entries(rec: Reconciler, *entries: ServiceEntry, listener_port: int = 8080) -> None:
    """Every entry resolved to port 80: backend ns/<service>:80, cluster <type>.ns.<service>.80."""
    rec.set_config(Config(listener_port, tuple(entries)), {e: 80 for e in entries})


class Recorder:
    def __init__(self) -> None:
        self.specs: list[DesiredState] = []

    async def publish(self, spec: DesiredState) -> None:
        self.specs.append(spec)


@pytest.fixture
async def running() -> AsyncIterator[tuple[Reconciler, Recorder]]:
    recorder = Recorder()
    rec = Reconciler(recorder.publish, listener_address="127.0.0.1")
    task = asyncio.create_task(rec.run(), name="reconciler")
    yield rec, recorder
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def endpoints_of(spec: DesiredState, cluster: str) -> list[int]:
    return [e.port for c in spec.clusters if c.name == cluster for e in c.endpoints]


async def test_config_and_endpoints_become_one_state(running: tuple[Reconciler, Recorder]) -> None:
    rec, _ = running
    set_entries(rec, entry("a.localhost", "s1"))
    rec.endpoint_up("ns/s1:80", Endpoint("127.0.0.1", 4001, "pod-a"))
    spec = await asyncio.wait_for(
        rec.wait_published(lambda s: endpoints_of(s, "http.ns.s1.80") == [4001]), 5
    )
    assert [v.host for v in spec.virtual_hosts] == ["a.localhost"]
    assert spec.listener_port == 8080


async def test_endpoint_down_withdraws_it(running: tuple[Reconciler, Recorder]) -> None:
    rec, _ = running
    set_entries(rec, entry("a.localhost", "s1"))
    first, second = Endpoint("127.0.0.1", 4001, "p1"), Endpoint("127.0.0.1", 4002, "p2")
    rec.endpoint_up("ns/s1:80", first)
    rec.endpoint_up("ns/s1:80", second)
    await asyncio.wait_for(
        rec.wait_published(lambda s: endpoints_of(s, "http.ns.s1.80") == [4001, 4002]), 5
    )
    rec.endpoint_down("ns/s1:80", first)
    await asyncio.wait_for(
        rec.wait_published(lambda s: endpoints_of(s, "http.ns.s1.80") == [4002]), 5
    )


async def test_a_burst_of_events_is_published_once() -> None:
    recorder = Recorder()
    rec = Reconciler(recorder.publish, listener_address="127.0.0.1")
    set_entries(rec, *(entry(f"h{i}.localhost", f"s{i}", Protocol.GRPC) for i in range(50)))
    for i in range(50):
        rec.endpoint_up(f"ns/s{i}:80", Endpoint("127.0.0.1", 5000 + i))
    task = asyncio.create_task(rec.run(), name="reconciler")
    try:
        await asyncio.wait_for(rec.wait_published(lambda s: len(s.clusters) == 50), 5)
    finally:
        task.cancel()
    assert len(recorder.specs) == 1
    assert all(len(c.endpoints) == 1 for c in recorder.specs[0].clusters)


async def test_unchanged_state_is_not_republished(running: tuple[Reconciler, Recorder]) -> None:
    rec, recorder = running
    a = entry("a.localhost", "s1")
    set_entries(rec, a)
    await asyncio.wait_for(rec.wait_published(lambda s: len(s.virtual_hosts) == 1), 5)
    set_entries(rec, a)  # same facts again
    set_entries(rec, a, entry("b.localhost", "s2"))
    await asyncio.wait_for(rec.wait_published(lambda s: len(s.virtual_hosts) == 2), 5)
    assert [len(s.virtual_hosts) for s in recorder.specs] == [1, 2]


def test_endpoints_of_unrouted_backends_are_not_served() -> None:
    rec = Reconciler(_never, listener_address="127.0.0.1")
    rec.endpoint_up("orphan", Endpoint("127.0.0.1", 4001))
    set_entries(rec, entry("a.localhost", "s1"))
    spec = rec.desired()
    assert [c.name for c in spec.clusters] == ["http.ns.s1.80"]
    assert spec.clusters[0].endpoints == ()


def test_two_hosts_share_one_cluster() -> None:
    rec = Reconciler(_never, listener_address="127.0.0.1")
    set_entries(rec, entry("a.localhost", "s1"), entry("b.localhost", "s1"))
    spec = rec.desired()
    assert [c.name for c in spec.clusters] == ["http.ns.s1.80"]
    assert sorted(v.host for v in spec.virtual_hosts) == ["a.localhost", "b.localhost"]


async def _never(spec: DesiredState) -> None:
    raise AssertionError("not published in this test")


def test_entries_of_one_service_port_share_its_forwarders() -> None:
    """Two hosts on one service port, one as http and one as grpc: two clusters, same pods."""
    rec = Reconciler(_never, listener_address="127.0.0.1")
    set_entries(rec, entry("web.localhost", "svc"), entry("rpc.localhost", "svc", Protocol.GRPC))
    rec.endpoint_up("ns/svc:80", Endpoint("127.0.0.1", 4001, "pod-a"))
    spec = rec.desired()
    assert {c.name: [e.port for e in c.endpoints] for c in spec.clusters} == {
        "grpc.ns.svc.80": [4001],
        "http.ns.svc.80": [4001],
    }
    assert {c.name: c.protocol for c in spec.clusters}["grpc.ns.svc.80"] is Protocol.GRPC


def test_pieces_follow_every_kind_of_change() -> None:
    """Each step's state equals one planned from scratch from the same facts, and its
    snapshot (built from the previous one's memo) equals a fresh build."""

    async def ignore(spec: DesiredState) -> None:
        return None

    rec = Reconciler(ignore, listener_address="127.0.0.1")
    entries = {f"h{i}.localhost": entry(f"h{i}.localhost", f"s{i}") for i in range(4)}
    port = [80]
    e1, e2 = Endpoint("127.0.0.1", 4001, "p1"), Endpoint("127.0.0.1", 4002, "p2")
    steps: list[Callable[[], object]] = [
        lambda: None,
        lambda: rec.endpoint_up("ns/s0:80", e1),
        lambda: rec.endpoint_up("ns/s0:80", e2),
        lambda: rec.endpoint_down("ns/s0:80", e1),
        lambda: rec.endpoint_up("ns/s1:80", e1),
        # Same host, new protocol / new service / a service shared with another host.
        lambda: entries.update({"h0.localhost": entry("h0.localhost", "s0", Protocol.GRPC)}),
        lambda: entries.update({"h1.localhost": entry("h1.localhost", "s9")}),
        lambda: entries.update({"h2.localhost": entry("h2.localhost", "s1")}),
        lambda: entries.pop("h3.localhost"),
        lambda: rec.endpoint_down("ns/s0:80", e2),
        lambda: port.__setitem__(0, 8081),
    ]
    snapshot = build_snapshot(rec.desired())
    for step in steps:
        step()
        set_entries(rec, *entries.values(), listener_port=port[0])
        spec = rec.desired()
        fresh = Reconciler(ignore, listener_address="127.0.0.1")
        set_entries(fresh, *entries.values(), listener_port=port[0])
        for backend, endpoints in rec._endpoints.items():
            for endpoint in endpoints:
                fresh.endpoint_up(backend, endpoint)
        assert spec == fresh.desired()
        snapshot = build_snapshot(spec, snapshot)
        fresh_snapshot = build_snapshot(spec)
        for type_url in TYPE_ORDER:
            assert snapshot.resources(type_url) == fresh_snapshot.resources(type_url)


def test_unchanged_pieces_are_the_objects_published_before() -> None:
    async def ignore(spec: DesiredState) -> None:
        return None

    rec = Reconciler(ignore, listener_address="127.0.0.1")
    entries = [entry(f"h{i}.localhost", f"s{i}") for i in range(3)]
    set_entries(rec, *entries)
    rec.endpoint_up("ns/s0:80", Endpoint("127.0.0.1", 4001))
    before = rec.desired()
    set_entries(rec, *entries, entry("new.localhost", "s9"))
    rec.endpoint_up("ns/s1:80", Endpoint("127.0.0.1", 4002))
    after = rec.desired()
    old = {c.name: c for c in before.clusters}
    new = {c.name: c for c in after.clusters}
    assert new["http.ns.s0.80"] is old["http.ns.s0.80"]
    assert new["http.ns.s2.80"] is old["http.ns.s2.80"]
    assert new["http.ns.s1.80"].endpoints == (Endpoint("127.0.0.1", 4002),)
    assert {id(v) for v in before.virtual_hosts} <= {id(v) for v in after.virtual_hosts}
