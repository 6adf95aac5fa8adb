"""The router's per-port mode: a port some live session exposes is HTTP (marked routes);
every other port is a TCP pass-through to the origin pods, so TLS, server-first and binary
protocols on a meshed Service keep working. Which ports are declared not HTTP (they cannot
be exposed), and the try line `mesh` prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from localmesh.cli.mesh import service_url
from localmesh.clustermesh import router_plan as rp
from localmesh.clustermesh.port_protocols import declared_not_http
from localmesh.envoy import validate_config
from localmesh.xds import resources as rs
from localmesh.xds.snapshot import Snapshot, render_xds_view
from localmesh.xds.static import render_static_config
from tests.unit.test_clustermesh_router_plan import NOW, endpoint_slice, lease, make, pod

HTTP, TCP = 8081, 6379
SLICES = [endpoint_slice("10.0.2.1", port=HTTP), endpoint_slice("10.0.2.1", port=TCP)]


def listener_filter(snapshot: Snapshot, port: int) -> dict[str, Any]:
    listener = rs.to_json(snapshot.resources(rs.LISTENER_TYPE)[rp.listener_name(port)].message())
    [chain] = listener["filter_chains"]
    [network] = chain["filters"]
    assert listener["address"]["socket_address"]["port_value"] == port
    return dict(network)


def test_a_port_no_session_exposes_is_a_tcp_pass_through_to_the_origin_pods() -> None:
    router = make(
        [lease("s1", ports=f"9090:8080:{HTTP}")], [pod("s1", "10.0.1.1")], SLICES, ports=[HTTP, TCP]
    )
    assert router.http_ports == {HTTP}
    snapshot = rp.build_router_snapshot(router)
    http = listener_filter(snapshot, HTTP)
    assert http["name"] == "envoy.filters.network.http_connection_manager"
    tcp = listener_filter(snapshot, TCP)
    assert tcp["name"] == "envoy.filters.network.tcp_proxy"
    assert tcp["typed_config"]["cluster"] == rp.origin_tcp_cluster(TCP)
    # The pass-through's cluster speaks no HTTP to the pods and has the origin endpoints.
    cluster = rs.to_json(snapshot.resources(rs.CLUSTER_TYPE)[rp.origin_tcp_cluster(TCP)].message())
    assert "typed_extension_protocol_options" not in cluster
    assignment = rs.to_json(
        snapshot.resources(rs.ENDPOINT_TYPE)[rp.origin_tcp_cluster(TCP)].message()
    )
    [locality] = assignment["endpoints"]
    [endpoint] = locality["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "10.0.2.1",
        "port_value": TCP,
    }


def test_a_port_the_service_declares_http_is_http_from_the_start() -> None:
    """`name: http…`/`grpc…` or an HTTP appProtocol: such a port never switches (a switch
    from pass-through closes the connections open on it), marks or not."""
    declared = [endpoint_slice("10.0.2.1", port=HTTP, name="grpc-api"), SLICES[1]]
    nobody = make([], [], declared, ports=[HTTP, TCP])
    assert nobody.http_ports == {HTTP}
    app = [{**SLICES[0], "ports": [{"name": "web", "port": HTTP, "appProtocol": "http"}]}]
    assert make([], [], app, ports=[HTTP]).http_ports == {HTTP}
    assert make([], [], SLICES, ports=[HTTP, TCP]).http_ports == frozenset()


def test_the_mode_follows_the_live_sessions_and_keeps_the_listener_name() -> None:
    nobody = make([], [], SLICES, ports=[HTTP, TCP])
    assert nobody.http_ports == frozenset()
    # Exposed by a session whose shadow pod is not Ready yet: HTTP already (marks take the
    # catch-all meanwhile), so the port does not switch twice while the shadow starts.
    starting = make(
        [lease("s1", ports=f"9090:8080:{HTTP}")],
        [pod("s1", "10.0.1.1", ready=False)],
        SLICES,
        ports=[HTTP, TCP],
    )
    assert starting.http_ports == {HTTP}
    both = make(
        [lease("s1", ports=f"9090:8080:{HTTP},7000:6379:{TCP}")],
        [pod("s1", "10.0.1.1")],
        SLICES,
        ports=[HTTP, TCP],
    )
    assert both.http_ports == {HTTP, TCP}
    expired = make(
        [lease("s1", ports=f"9090:8080:{HTTP}", renewed=NOW.replace(hour=8))],
        [],
        SLICES,
        ports=[HTTP, TCP],
    )
    assert expired.http_ports == frozenset()
    kinds = []
    for router in (nobody, starting, both, expired):
        snapshot = rp.build_router_snapshot(router)
        assert sorted(snapshot.resources(rs.LISTENER_TYPE)) == ["router_6379", "router_8081"]
        # Both origin clusters exist in either mode: a switch never points the listener
        # at a cluster Envoy is still warming. Routes only for HTTP ports: Envoy asks for
        # no others, and one it never asks for would never be ACKed.
        assert {rp.origin_cluster(HTTP), rp.origin_tcp_cluster(HTTP)} <= set(
            snapshot.resources(rs.CLUSTER_TYPE)
        )
        assert set(snapshot.resources(rs.ROUTE_TYPE)) == {
            rp.route_config_name(p) for p in router.http_ports
        }
        kinds.append(
            tuple(listener_filter(snapshot, p)["name"].rsplit(".", 1)[1] for p in (HTTP, TCP))
        )
    assert kinds == [
        ("tcp_proxy", "tcp_proxy"),
        ("http_connection_manager", "tcp_proxy"),
        ("http_connection_manager", "http_connection_manager"),
        ("tcp_proxy", "tcp_proxy"),
    ]


def test_envoy_accepts_a_router_with_one_http_and_one_tcp_port(tmp_path: Path) -> None:
    router = make(
        [lease("s1", ports=f"9090:8080:{HTTP}")], [pod("s1", "10.0.1.1")], SLICES, ports=[HTTP, TCP]
    )
    snapshot = rp.build_router_snapshot(router)
    view = render_xds_view(snapshot, {"node": {"id": "router", "cluster": "router"}})
    config = render_static_config(view)
    for listener_json in config["static_resources"]["listeners"]:
        listener_json["address"]["socket_address"]["address"] = "127.0.0.1"
    path = tmp_path / "router.json"
    path.write_text(json.dumps(config))
    validate_config(path)


def test_a_port_is_not_http_by_its_name_prefix_or_app_protocol() -> None:
    assert declared_not_http({"name": "https", "port": 443}) == "https"
    assert declared_not_http({"name": "tls-api", "port": 9443}) == "tls"
    assert declared_not_http({"name": "web", "appProtocol": "kubernetes.io/redis"}) == "redis"
    assert declared_not_http({"name": "http", "port": 8080}) is None
    assert declared_not_http({"port": 8443}) is None  # unnamed: HTTP, as Istio sniffs it
    assert declared_not_http({"name": "tcp", "appProtocol": "http"}) is None  # appProtocol wins


def test_the_try_line_is_http_on_any_exposed_port() -> None:
    # An exposed port carries HTTP (a declared TLS port cannot be exposed), 443 too.
    assert service_url("billing", "billing-api", 443) == "http://billing-api.billing:443/"
    assert service_url("billing", "billing-api", 8443) == "http://billing-api.billing:8443/"
