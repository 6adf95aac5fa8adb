"""The cache's protocol state, driven directly as the ADS server would (no gRPC)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from localmesh.desired import ClusterSpec, DesiredState, Endpoint, Protocol, VirtualHostSpec
from localmesh.errors import InconsistentSnapshotError, NackedError
from localmesh.xds import resources as rs
from localmesh.xds.cache import (
    DeltaResponse,
    Response,
    SnapshotCache,
    SotwResponse,
    SotwStream,
)
from localmesh.xds.snapshot import Snapshot, build_snapshot
from tests.unit.test_xds_resources import MESH

CDS, EDS, LDS, RDS = rs.CLUSTER_TYPE, rs.ENDPOINT_TYPE, rs.LISTENER_TYPE, rs.ROUTE_TYPE
CLUSTERS = sorted(c.name for c in MESH.clusters)


def sotw(
    stream: SotwStream,
    type_url: str,
    names: list[str] | None = None,
    nonce: str = "",
    error: str | None = None,
) -> None:
    stream.on_sotw_request(
        type_url=type_url,
        resource_names=names or [],
        response_nonce=nonce,
        error_detail=error,
        node_id="node-a",
    )


def by_type(responses: list[Response]) -> dict[str, Response]:
    out = {r.type_url: r for r in responses}
    assert len(out) == len(responses), "two responses of one type at once"
    return out


def names(response: Response) -> list[str]:
    return [r.name for r in response.resources]


def connect_sotw(cache: SnapshotCache) -> tuple[SotwStream, dict[str, Response]]:
    """A stream that requested all four types as Envoy does; returns the first answers."""
    stream = cache.open_stream(delta=False)
    sotw(stream, CDS)
    sotw(stream, LDS)
    first = by_type(stream.responses())
    sotw(stream, EDS, CLUSTERS)
    sotw(stream, RDS, ["localmesh_routes"])
    first.update(by_type(stream.responses()))
    return stream, first


def ack(stream: SotwStream, response: Response, names_: list[str] | None = None) -> None:
    sotw(stream, response.type_url, names_, nonce=response.nonce)


def sync_all(stream: SotwStream, pending: dict[str, Response]) -> None:
    """Answer every response with an ACK until nothing more is sent."""
    while pending:
        for response in pending.values():
            subscription = None
            if response.type_url == EDS:
                subscription = sorted(stream._cache.snapshot.resources(CDS))
            elif response.type_url == RDS:
                subscription = ["localmesh_routes"]
            ack(stream, response, subscription)
        pending = by_type(stream.responses())


def test_routes_wait_until_their_clusters_are_acked() -> None:
    cache = SnapshotCache(build_snapshot(MESH))
    stream, first = connect_sotw(cache)
    assert set(first) == {CDS, LDS, EDS}  # no routes yet: clusters are not ACKed
    assert names(first[CDS]) == CLUSTERS
    ack(stream, first[EDS], CLUSTERS)
    assert stream.responses() == []
    ack(stream, first[CDS])
    routes = by_type(stream.responses())
    assert set(routes) == {RDS}
    assert names(routes[RDS]) == ["localmesh_routes"]


def test_one_response_in_flight_per_type_and_ack_releases_the_next() -> None:
    first_snapshot = build_snapshot(MESH)
    cache = SnapshotCache(first_snapshot)
    stream, first = connect_sotw(cache)
    swapped = dataclasses.replace(MESH.clusters[0], endpoints=(Endpoint("127.0.0.1", 1, "x"),))
    cache.set_snapshot(
        build_snapshot(
            dataclasses.replace(MESH, clusters=(swapped, *MESH.clusters[1:])), first_snapshot
        )
    )
    assert EDS not in by_type(stream.responses())  # the first EDS response is unanswered
    ack(stream, first[EDS], CLUSTERS)
    update = by_type(stream.responses())
    assert set(update) == {EDS}
    assert isinstance(update[EDS], SotwResponse)
    assert update[EDS].version_info != first[EDS].version_info  # type: ignore[union-attr]


def test_stale_nonce_is_ignored_but_growing_names_are_answered() -> None:
    cache = SnapshotCache(build_snapshot(MESH))
    stream = cache.open_stream(delta=False)
    sotw(stream, EDS, CLUSTERS[:1])
    first = by_type(stream.responses())[EDS]
    assert names(first) == CLUSTERS[:1]
    sotw(stream, EDS, CLUSTERS[:1], nonce="999")  # stale: neither ACK nor reason to answer
    assert stream.responses() == []
    assert stream.status().types[1].acked_resources == 0
    sotw(stream, EDS, CLUSTERS, nonce="999")  # still stale, but asks for more names
    grown = by_type(stream.responses())[EDS]
    assert names(grown) == CLUSTERS
    ack(stream, first, CLUSTERS)  # superseded: ignored
    assert stream.status().types[1].acked_resources == 0
    ack(stream, grown, CLUSTERS)
    assert stream.status().types[1].acked_resources == len(CLUSTERS)


def test_nack_keeps_last_good_records_error_and_does_not_resend() -> None:
    good = build_snapshot(MESH)
    cache = SnapshotCache(good)
    stream, first = connect_sotw(cache)
    sync_all(stream, first)
    assert stream.status().in_sync
    acked_before = stream.status().types[0].acked_version
    bad_mesh = dataclasses.replace(
        MESH, clusters=(*MESH.clusters, ClusterSpec("http.x.y.1", Protocol.HTTP, ()))
    )
    bad = build_snapshot(bad_mesh, good)
    cache.set_snapshot(bad)
    push = by_type(stream.responses())[CDS]
    sotw(stream, CDS, nonce=push.nonce, error="cluster http.x.y.1: bad")
    status = stream.status().types[0]
    assert status.last_error == "cluster http.x.y.1: bad"
    assert status.nack_count == 1
    assert status.acked_version == acked_before
    assert not status.in_sync
    assert stream.responses() == []  # the rejected snapshot is not pushed again
    cache.set_snapshot(good)  # what Envoy still holds: nothing to push, in sync again
    assert stream.responses() == []
    assert stream.status().in_sync
    fixed_mesh = dataclasses.replace(
        MESH, clusters=(*MESH.clusters, ClusterSpec("http.x.y.2", Protocol.HTTP, ()))
    )
    cache.set_snapshot(build_snapshot(fixed_mesh, good))  # a new snapshot is pushed
    again = by_type(stream.responses())
    assert names(again[CDS]) == sorted([*CLUSTERS, "http.x.y.2"])
    ack(stream, again[CDS])
    assert stream.status().types[0].last_error is None


def test_removed_cluster_stays_until_routes_without_it_are_acked() -> None:
    first = build_snapshot(MESH)
    cache = SnapshotCache(first)
    stream, pending = connect_sotw(cache)
    sync_all(stream, pending)
    gone = MESH.virtual_hosts[0].clusters[0]
    smaller = dataclasses.replace(
        MESH,
        clusters=tuple(c for c in MESH.clusters if c.name != gone),
        virtual_hosts=MESH.virtual_hosts[1:],
    )
    cache.set_snapshot(build_snapshot(smaller, first))
    step = by_type(stream.responses())
    # Routes go first; the cluster they still reference is kept (unchanged: no CDS push).
    assert set(step) == {RDS}
    ack(stream, step[RDS], ["localmesh_routes"])
    step = by_type(stream.responses())
    assert gone not in names(step[CDS])
    assert gone in CLUSTERS


def test_wait_for_ack_needs_every_stream_in_sync() -> None:
    async def scenario() -> None:
        snapshot = build_snapshot(MESH)
        cache = SnapshotCache(snapshot)
        waiter = asyncio.create_task(cache.wait_for_ack(snapshot.version, streams=2))
        a, pending_a = connect_sotw(cache)
        sync_all(a, pending_a)
        await asyncio.sleep(0)
        assert not waiter.done()  # only one of two Envoys connected
        b, pending_b = connect_sotw(cache)
        await asyncio.sleep(0)
        assert not waiter.done()
        sync_all(b, pending_b)
        async with asyncio.timeout(30):  # liveness guard only
            await waiter
        assert {s.node_id for s in cache.status()} == {"node-a"}
        assert len(cache.status()) == 2

    asyncio.run(scenario())


def test_wait_for_ack_raises_on_nack() -> None:
    async def scenario() -> None:
        good = build_snapshot(MESH)
        cache = SnapshotCache(good)
        stream, pending = connect_sotw(cache)
        sync_all(stream, pending)
        await cache.wait_for_ack()
        added = VirtualHostSpec.to_cluster("new.localhost", MESH.clusters[0].name, Protocol.HTTP)
        bad = build_snapshot(
            dataclasses.replace(MESH, virtual_hosts=(*MESH.virtual_hosts, added)), good
        )
        cache.set_snapshot(bad)
        waiter = asyncio.create_task(cache.wait_for_ack(bad.version))
        push = by_type(stream.responses())[RDS]
        sotw(stream, RDS, ["localmesh_routes"], nonce=push.nonce, error="duplicate domain")
        with pytest.raises(NackedError, match="duplicate domain"):
            async with asyncio.timeout(30):  # liveness guard only
                await waiter

    asyncio.run(scenario())


def test_delta_sends_only_differences_and_announces_removals() -> None:
    first = build_snapshot(MESH)
    cache = SnapshotCache(first)
    stream = cache.open_stream(delta=True)
    held = {n: r.version for n, r in first.resources(CDS).items()}
    stale = dict(held, **{CLUSTERS[0]: "old-version", "http.gone.svc.1": "v0"})
    stream.on_delta_request(
        type_url=CDS,
        subscribe=[],
        unsubscribe=[],
        initial_versions=stale,
        response_nonce="",
        error_detail=None,
        node_id="node-d",
    )
    (response,) = stream.responses()
    assert isinstance(response, DeltaResponse)
    assert names(response) == [CLUSTERS[0]]  # the one Envoy holds in another version
    assert response.removed == ("http.gone.svc.1",)
    stream.on_delta_request(
        type_url=CDS,
        subscribe=[],
        unsubscribe=[],
        initial_versions={},
        response_nonce=response.nonce,
        error_detail=None,
    )
    assert stream.status().types[0].in_sync
    assert stream.status().node_id == "node-d"


def test_delta_reconnect_holding_everything_gets_nothing_resent() -> None:
    snapshot = build_snapshot(MESH)
    cache = SnapshotCache(snapshot)
    stream = cache.open_stream(delta=True)
    held = {n: r.version for n, r in snapshot.resources(CDS).items()}
    stream.on_delta_request(
        type_url=CDS,
        subscribe=[],
        unsubscribe=[],
        initial_versions=held,
        response_nonce="",
        error_detail=None,
    )
    assert stream.responses() == []
    assert stream.status().types[0].in_sync


def test_closed_streams_leave_the_status() -> None:
    cache = SnapshotCache(build_snapshot(MESH))
    stream = cache.open_stream(delta=False)
    assert len(cache.status()) == 1
    stream.close()
    assert cache.status() == []
    assert stream.responses() == []


def test_inconsistent_snapshot_is_refused() -> None:
    bad = Snapshot.from_messages(
        {RDS: rs.build_resources(MESH)[RDS], LDS: rs.build_resources(MESH)[LDS]}
    )
    with pytest.raises(InconsistentSnapshotError):
        SnapshotCache().set_snapshot(bad)


def test_empty_mesh_is_served_and_acked() -> None:
    cache = SnapshotCache(build_snapshot(DesiredState.serving("127.0.0.1", 18080)))
    stream, first = connect_sotw(cache)
    assert names(first[CDS]) == []
    sync_all(stream, first)
    assert stream.status().in_sync


def test_unsubscribing_everything_releases_an_unanswered_response() -> None:
    # Envoy answers nothing for a type it no longer watches (all clusters removed).
    first = build_snapshot(MESH)
    cache = SnapshotCache(first)
    stream, pending = connect_sotw(cache)
    sync_all(stream, pending)
    empty = build_snapshot(DesiredState.serving("127.0.0.1", 18080), first)
    cache.set_snapshot(empty)
    step = by_type(stream.responses())  # routes, and the cluster no route uses
    routed = sorted(c for v in MESH.virtual_hosts for c in v.clusters)
    assert names(step[CDS]) == routed
    ack(stream, step[RDS], ["localmesh_routes"])
    ack(stream, step[CDS])
    ack(stream, step[EDS], routed)
    step = by_type(stream.responses())
    assert names(step[CDS]) == [] and names(step[EDS]) == []
    ack(stream, step[CDS])
    sotw(stream, EDS, [], nonce="stale")  # Envoy drops its EDS watch instead of ACKing
    assert stream.status().types[1].pending_nonce is None
    assert stream.status().in_sync


def test_a_rejected_snapshot_is_offered_again_on_request() -> None:
    """A rejection with an outside cause (a taken port) is retried when the user asks."""
    good = build_snapshot(MESH)
    cache = SnapshotCache(good)
    stream, first = connect_sotw(cache)
    sync_all(stream, first)
    moved = build_snapshot(
        dataclasses.replace(
            MESH, listener=dataclasses.replace(MESH.listener, port=MESH.listener_port + 1)
        ),
        good,
    )
    cache.set_snapshot(moved)
    push = by_type(stream.responses())[LDS]
    sotw(stream, LDS, nonce=push.nonce, error="cannot bind: Address already in use")
    assert stream.responses() == []
    assert cache.retry_rejected() == 1
    again = by_type(stream.responses())
    assert list(again) == [LDS]
    ack(stream, again[LDS])
    assert stream.status().in_sync
    assert cache.retry_rejected() == 0  # nothing rejected any more
