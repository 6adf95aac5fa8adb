from __future__ import annotations

import dataclasses

import pytest
from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration

from localmesh.bootstrap import BootstrapOptions, build_bootstrap
from localmesh.desired import (
    ClusterSpec,
    DesiredState,
    Endpoint,
    Protocol,
    RouteSpec,
    VirtualHostSpec,
    WeightedCluster,
    cluster_name,
)
from localmesh.errors import InconsistentSnapshotError
from localmesh.xds import resources as rs, snapshot as snapshot_module
from localmesh.xds.codec import encode
from localmesh.xds.proto import Message
from localmesh.xds.snapshot import (
    Snapshot,
    build_snapshot,
    render_xds_view,
)
from tests.unit.test_xds_resources import MESH


def big_mesh(n: int) -> DesiredState:
    clusters, vhosts = [], []
    for i in range(n):
        protocol = Protocol.GRPC if i % 2 else Protocol.HTTP
        name = cluster_name("ns", f"svc{i}", 8080, protocol)
        clusters.append(ClusterSpec(name, protocol, (Endpoint("127.0.0.1", 20000 + i, "p"),)))
        vhosts.append(VirtualHostSpec.to_cluster(f"svc{i}.localhost", name, protocol))
    return DesiredState.serving("127.0.0.1", 18080, tuple(clusters), tuple(vhosts))


def test_snapshot_bytes_equal_the_builders_output() -> None:
    snapshot = build_snapshot(MESH).check()
    for type_url, by_name in rs.build_resources(MESH).items():
        assert snapshot.resources(type_url).keys() == by_name.keys()
        for name, msg in by_name.items():
            assert snapshot.resources(type_url)[name].body == encode(msg) == bytes(rs.typed(msg))


def test_versions_follow_content() -> None:
    a, b = build_snapshot(MESH), build_snapshot(MESH)
    assert a.version == b.version
    swapped = dataclasses.replace(
        MESH.clusters[0], endpoints=(Endpoint("127.0.0.1", 45000, "billing-1"),)
    )
    c = build_snapshot(dataclasses.replace(MESH, clusters=(swapped, *MESH.clusters[1:])), a)
    assert c.version != a.version
    assert c.type_version(rs.ENDPOINT_TYPE) != a.type_version(rs.ENDPOINT_TYPE)
    for unchanged in (rs.CLUSTER_TYPE, rs.LISTENER_TYPE, rs.ROUTE_TYPE):
        assert c.type_version(unchanged) == a.type_version(unchanged)
    name = swapped.name
    assert (
        c.resources(rs.ENDPOINT_TYPE)[name].version != a.resources(rs.ENDPOINT_TYPE)[name].version
    )


def test_order_of_virtual_hosts_does_not_change_versions() -> None:
    reordered = dataclasses.replace(MESH, virtual_hosts=tuple(reversed(MESH.virtual_hosts)))
    assert build_snapshot(reordered).version == build_snapshot(MESH).version


def test_unchanged_pieces_are_reused_not_reencoded() -> None:
    first = build_snapshot(MESH)
    added = VirtualHostSpec.to_cluster("extra.localhost", MESH.clusters[0].name, Protocol.HTTP)
    second = build_snapshot(
        dataclasses.replace(MESH, virtual_hosts=(*MESH.virtual_hosts, added)), first
    )
    for type_url in (rs.CLUSTER_TYPE, rs.ENDPOINT_TYPE, rs.LISTENER_TYPE):
        for name, resource in second.resources(type_url).items():
            assert resource is first.resources(type_url)[name]
    routes = RouteConfiguration.parse(second.resources(rs.ROUTE_TYPE)["localmesh_routes"].body)
    assert [v.name for v in routes.virtual_hosts] == sorted(
        v.host for v in (*MESH.virtual_hosts, added)
    )


def test_one_change_among_a_thousand_services_encodes_one_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What keeps an edit cheap at scale (its speed is measured in bench/xds_push.py)."""
    mesh = big_mesh(1000)
    snapshot = build_snapshot(mesh)
    changed = dataclasses.replace(mesh.clusters[7], endpoints=(Endpoint("127.0.0.1", 1234, "q"),))
    mesh2 = dataclasses.replace(mesh, clusters=(*mesh.clusters[:7], changed, *mesh.clusters[8:]))
    encoded: list[str] = []

    def counting(message: Message) -> bytes:
        encoded.append(message.key.rpartition(".")[2])
        return encode(message)

    monkeypatch.setattr(snapshot_module, "encode", counting)
    second = build_snapshot(mesh2, snapshot)
    assert encoded == ["ClusterLoadAssignment"]
    assert (
        second.resources(rs.ROUTE_TYPE)["localmesh_routes"]
        == snapshot.resources(rs.ROUTE_TYPE)["localmesh_routes"]
    )


def test_weighted_clusters_and_named_route_configurations_are_checked_from_messages() -> None:
    state = dataclasses.replace(
        MESH,
        listener=dataclasses.replace(MESH.listener, name="edge", route_config_name="edge_rc"),
        virtual_hosts=(
            VirtualHostSpec(
                "split.localhost",
                (
                    RouteSpec(
                        weighted=(
                            WeightedCluster(MESH.clusters[0].name, 1),
                            WeightedCluster("gone", 1),
                        )
                    ),
                ),
            ),
        ),
    )
    messages = rs.build_resources(state)
    errors = Snapshot.from_messages(messages).consistency_errors()
    assert errors == ["route references missing cluster 'gone'"]
    no_routes = {**messages, rs.ROUTE_TYPE: {}}
    assert Snapshot.from_messages(no_routes).consistency_errors()[-1] == (
        "listener references missing route configuration 'edge_rc'"
    )
    assert build_snapshot(state).consistency_errors() == errors


def test_consistency_check_finds_dangling_references() -> None:
    good = rs.build_resources(MESH)
    assert Snapshot.from_messages(good).consistency_errors() == []
    no_cluster = {**good, rs.CLUSTER_TYPE: {}}
    errors = Snapshot.from_messages(no_cluster).consistency_errors()
    assert any("missing cluster" in e for e in errors)
    assert any("has no cluster" in e for e in errors)
    no_cla = {**good, rs.ENDPOINT_TYPE: {}}
    assert any(
        "no ClusterLoadAssignment" in e for e in Snapshot.from_messages(no_cla).consistency_errors()
    )
    no_routes = {**good, rs.ROUTE_TYPE: {}}
    with pytest.raises(InconsistentSnapshotError, match="route configuration"):
        Snapshot.from_messages(no_routes).check()


def test_xds_view_lists_every_resource_with_version() -> None:
    snapshot = build_snapshot(MESH)
    bootstrap = build_bootstrap(BootstrapOptions(xds_socket_path="/tmp/x.sock"))
    view = render_xds_view(snapshot, bootstrap)
    assert view["bootstrap"] == bootstrap
    assert view["version"] == snapshot.version
    clusters = view["resources"][rs.CLUSTER_TYPE]["resources"]
    assert [c["name"] for c in clusters] == sorted(c.name for c in MESH.clusters)
    assert (
        clusters[0]["version"] == snapshot.resources(rs.CLUSTER_TYPE)[clusters[0]["name"]].version
    )
    assert clusters[0]["resource"]["name"] == clusters[0]["name"]


def test_message_decodes_in_a_fresh_process() -> None:
    """`message()` loads the typed bindings itself: nothing else may have imported them."""
    import subprocess
    import sys

    code = (
        "from localmesh.xds.snapshot import Resource\n"
        "from localmesh.xds import resources as rs\n"
        "r = Resource.of(rs.CLUSTER_TYPE, 'c', bytes([10, 1, 99]))\n"  # name = 'c'
        "print(r.message().name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "c"
