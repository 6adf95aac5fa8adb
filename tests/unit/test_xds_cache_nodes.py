"""Snapshots per node id: each Envoy gets its node's snapshot (or the default), and ACK
waits are per node."""

from __future__ import annotations

import asyncio

from localmesh.desired import (
    ClusterKind,
    ClusterSpec,
    DesiredState,
    Endpoint,
    HeaderMatch,
    ListenerSpec,
    MatchKind,
    Protocol,
    RouteSpec,
    VirtualHostSpec,
)
from localmesh.xds import resources as rs
from localmesh.xds.cache import DEFAULT_NODE, Response, SnapshotCache, SotwStream
from localmesh.xds.snapshot import Snapshot, build_snapshot
from tests.unit.test_xds_resources import MESH

CDS, EDS, LDS, RDS = rs.CLUSTER_TYPE, rs.ENDPOINT_TYPE, rs.LISTENER_TYPE, rs.ROUTE_TYPE


def router_state() -> DesiredState:
    """The in-cluster router's shape: a marked route to a shadow pod, the rest to the pods."""
    pods = ClusterSpec(
        "pods", Protocol.DOWNSTREAM, (Endpoint("10.0.0.1", 8080),), ClusterKind.POD_IPS
    )
    shadow = ClusterSpec(
        "shadow", Protocol.DOWNSTREAM, (Endpoint("10.0.0.9", 8080),), ClusterKind.POD_IPS
    )
    mark = HeaderMatch("version", MatchKind.EXACT, "dev")
    vhost = VirtualHostSpec(
        "billing",
        (RouteSpec(cluster="shadow", headers=(mark,)), RouteSpec(cluster="pods")),
        domains=("*",),
    )
    listener = ListenerSpec("0.0.0.0", 15001, "router", "router_routes", websockets=True)
    return DesiredState(listener, (pods, shadow), (vhost,))


def request(
    stream: SotwStream, type_url: str, node: str, names: list[str], nonce: str = ""
) -> None:
    stream.on_sotw_request(
        type_url=type_url,
        resource_names=names,
        response_nonce=nonce,
        error_detail=None,
        node_id=node,
    )


def sync(stream: SotwStream, node: str, snapshot: Snapshot) -> set[str]:
    """Play Envoy: subscribe to everything, ACK every response; returns the names it got."""
    seen: set[str] = set()
    request(stream, CDS, node, [])
    request(stream, LDS, node, [])
    request(stream, EDS, node, sorted(snapshot.resources(EDS)))
    request(stream, RDS, node, sorted(snapshot.resources(RDS)))
    pending: list[Response] = stream.responses()
    while pending:
        for response in pending:
            seen |= {r.name for r in response.resources}
            names = (
                sorted(snapshot.resources(response.type_url))
                if response.type_url
                in (
                    EDS,
                    RDS,
                )
                else []
            )
            request(stream, response.type_url, node, names, nonce=response.nonce)
        pending = stream.responses()
    return seen


def test_each_node_gets_its_own_snapshot_or_the_default() -> None:
    default, router = build_snapshot(MESH), build_snapshot(router_state())
    cache = SnapshotCache(default)
    cache.set_snapshot(router, node_id="router-1")
    assert cache.nodes() == ["router-1"]
    local = cache.open_stream(delta=False)
    remote = cache.open_stream(delta=False)
    got_local = sync(local, "localmesh-default", default)
    got_remote = sync(remote, "router-1", router)
    assert {"router", "router_routes", "pods", "shadow"} <= got_remote
    assert not got_remote & {c.name for c in MESH.clusters}
    assert got_local >= {c.name for c in MESH.clusters} | {"localmesh_http"}
    assert "shadow" not in got_local
    assert local.status().in_sync and remote.status().in_sync
    assert [s.node_id for s in cache.streams("router-1")] == ["router-1"]
    assert [s.node_id for s in cache.streams(DEFAULT_NODE)] == ["localmesh-default"]


def test_wait_for_ack_waits_per_node() -> None:
    async def scenario() -> None:
        default, router = build_snapshot(MESH), build_snapshot(router_state())
        cache = SnapshotCache(default)
        cache.set_snapshot(router, node_id="router-1")
        local = cache.open_stream(delta=False)
        remote = cache.open_stream(delta=False)
        request(local, CDS, "localmesh-default", [])
        request(remote, CDS, "router-1", [])
        for_router = asyncio.create_task(cache.wait_for_ack(node_id="router-1"))
        for_default = asyncio.create_task(cache.wait_for_ack())
        sync(remote, "router-1", router)
        async with asyncio.timeout(30):  # liveness guard only
            await for_router  # the default node's Envoy is not in sync: no matter
        assert not for_default.done()
        sync(local, "localmesh-default", default)
        async with asyncio.timeout(30):  # liveness guard only
            await for_default

    asyncio.run(scenario())


def test_clearing_a_node_snapshot_serves_it_the_default_again() -> None:
    default, router = build_snapshot(MESH), build_snapshot(router_state())
    cache = SnapshotCache(default)
    cache.set_snapshot(router, node_id="router-1")
    remote = cache.open_stream(delta=False)
    sync(remote, "router-1", router)
    cache.clear_snapshot("router-1")
    assert cache.snapshot_for("router-1") is default
    pushed = {r.type_url: r for r in remote.responses()}
    # The default's clusters come first; the router's stay while its routes are held.
    assert {r.name for r in pushed[CDS].resources} == {c.name for c in MESH.clusters} | {
        "pods",
        "shadow",
    }
    assert {r.name for r in pushed[LDS].resources} == {"localmesh_http"}


def test_a_delta_stream_is_served_its_node_snapshot() -> None:
    default, router = build_snapshot(MESH), build_snapshot(router_state())
    cache = SnapshotCache(default)
    cache.set_snapshot(router, node_id="router-1")
    stream = cache.open_stream(delta=True)
    stream.on_delta_request(
        type_url=CDS,
        subscribe=[],
        unsubscribe=[],
        initial_versions={},
        response_nonce="",
        error_detail=None,
        node_id="router-1",
    )
    (response,) = stream.responses()
    assert {r.name for r in response.resources} == {"pods", "shadow"}
