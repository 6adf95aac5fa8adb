from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from localmesh.desired import (
    ClusterSpec,
    DesiredState,
    Endpoint,
    Protocol,
    VirtualHostSpec,
    cluster_name,
)
from localmesh.xds import resources
from localmesh.xds.codec import encode
from localmesh.xds.snapshot import build_snapshot
from localmesh.xds.static import static_config_of
from tests.unit.golden import assert_golden, envoy_validate

HTTP = cluster_name("shop", "billing-api", "http", Protocol.HTTP)
GRPC = cluster_name("shop", "orders", 9090, Protocol.GRPC)

MESH = DesiredState.serving(
    listener_address="127.0.0.1",
    listener_port=18080,
    clusters=(
        ClusterSpec(HTTP, Protocol.HTTP, (Endpoint("127.0.0.1", 41001, "billing-0"),)),
        ClusterSpec(
            GRPC,
            Protocol.GRPC,
            (Endpoint("127.0.0.1", 41002, "orders-0"), Endpoint("127.0.0.1", 41003, "orders-1")),
        ),
        ClusterSpec(cluster_name("shop", "idle", 80, Protocol.HTTP), Protocol.HTTP, ()),
    ),
    virtual_hosts=(
        VirtualHostSpec.to_cluster("billing-api.localhost", HTTP, Protocol.HTTP),
        VirtualHostSpec.to_cluster("orders.localhost", GRPC, Protocol.GRPC),
    ),
)


def _as_json(mesh: DesiredState) -> dict[str, dict[str, object]]:
    return {
        type_url: {name: resources.to_json(msg) for name, msg in by_name.items()}
        for type_url, by_name in resources.build_resources(mesh).items()
    }


def test_resources_golden() -> None:
    assert_golden("xds_resources.json", _as_json(MESH))


def test_static_config_golden() -> None:
    assert_golden("static_config.json", static_config_of(MESH))


def test_virtual_host_matches_host_with_and_without_port() -> None:
    vhost = resources.build_virtual_host(MESH.virtual_hosts[0])
    assert vhost.domains == ["billing-api.localhost", "billing-api.localhost:*"]


def test_grpc_route_has_no_timeouts_and_http_route_keeps_defaults() -> None:
    grpc_route = resources.to_json(resources.build_virtual_host(MESH.virtual_hosts[1]))
    action = grpc_route["routes"][0]["route"]
    assert action["timeout"] == "0s"
    assert action["idle_timeout"] == "0s"
    assert action["retry_policy"]["retry_on"] == "connect-failure,refused-stream,reset"
    http_action = resources.to_json(resources.build_virtual_host(MESH.virtual_hosts[0]))
    assert "timeout" not in http_action["routes"][0]["route"]


def test_grpc_cluster_speaks_h2_and_http_cluster_http1() -> None:
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    grpc = resources.to_json(resources.build_cluster(MESH.clusters[1]))
    http = resources.to_json(resources.build_cluster(MESH.clusters[0]))
    assert (
        "http2_protocol_options"
        in grpc["typed_extension_protocol_options"][options]["explicit_http_config"]
    )
    assert (
        "http_protocol_options"
        in http["typed_extension_protocol_options"][options]["explicit_http_config"]
    )
    assert grpc["type"] == "EDS"


def test_listener_does_not_depend_on_services() -> None:
    other = DesiredState.serving("127.0.0.1", 18080)
    assert encode(resources.build_resources(other)[resources.LISTENER_TYPE]["localmesh_http"]) == (
        encode(resources.build_resources(MESH)[resources.LISTENER_TYPE]["localmesh_http"])
    )


def test_encoder_is_byte_identical_to_betterproto() -> None:
    # The typed bindings read the builders' bytes and write them back unchanged: same field
    # order, same defaults left out, nothing unknown to them.
    for by_name in resources.build_resources(MESH).values():
        for msg in by_name.values():
            typed = resources.typed(msg)
            assert encode(msg) == bytes(typed)
            assert resources.to_json(msg) == resources.to_json(typed)


@pytest.mark.integration
@pytest.mark.parametrize(
    "mesh", [MESH, DesiredState.serving("127.0.0.1", 18081)], ids=["services", "empty"]
)
def test_static_config_passes_envoy_validate(mesh: DesiredState, tmp_path: Path) -> None:
    envoy_validate(static_config_of(mesh), tmp_path)


def routes_state() -> DesiredState:
    from localmesh.config import load_config, load_mocks
    from localmesh.plan import plan
    from localmesh.resolve import MockResolver, resolve_all
    from tests.unit.cli_helpers import EXAMPLES

    config = load_config(EXAMPLES / "routes.yaml")
    ports = resolve_all(config, MockResolver(load_mocks(EXAMPLES / "routes-mocks.yaml")))
    endpoints = {"billing/billing-api-v2:8080": [Endpoint("127.0.0.1", 41010, "v2-0")]}
    return plan(config, ports, endpoints, "127.0.0.1")


def test_routes_resources_golden() -> None:
    assert_golden("xds_routes.json", _as_json(routes_state()))


def test_weighted_routes_and_pod_ip_clusters_for_a_router() -> None:
    """What the in-cluster router needs, built without services.yaml."""
    from localmesh.desired import (
        ClusterKind,
        HeaderMatch,
        ListenerSpec,
        MatchKind,
        RouteSpec,
        WeightedCluster,
    )

    shadow = ClusterSpec(
        "shadow", Protocol.DOWNSTREAM, (Endpoint("10.0.0.9", 8080),), ClusterKind.POD_IPS
    )
    pods = ClusterSpec(
        "pods", Protocol.DOWNSTREAM, (Endpoint("10.0.0.1", 8080),), ClusterKind.POD_IPS
    )
    state = DesiredState(
        ListenerSpec("0.0.0.0", 15001, "router", "router_routes", websockets=True),
        (pods, shadow),
        (
            VirtualHostSpec(
                "billing",
                (
                    RouteSpec(
                        cluster="shadow",
                        headers=(HeaderMatch("version", MatchKind.EXACT, "dev"),),
                        streams=True,
                    ),
                    RouteSpec(
                        weighted=(WeightedCluster("pods", 90), WeightedCluster("shadow", 10))
                    ),
                ),
                domains=("*",),
            ),
        ),
    )
    built = _as_json(state)
    assert set(built[resources.ENDPOINT_TYPE]) == {"pods", "shadow"}
    listener = built[resources.LISTENER_TYPE]["router"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[index]
    assert hcm["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    assert hcm["rds"]["route_config_name"] == "router_routes"
    snapshot = build_snapshot(state).check()
    assert snapshot.route_clusters == {"pods", "shadow"}
    broken = dataclasses.replace(state, clusters=(pods,))
    assert (
        "route references missing cluster 'shadow'" in build_snapshot(broken).consistency_errors()
    )


@pytest.mark.integration
def test_routes_static_config_passes_envoy_validate(tmp_path: Path) -> None:
    envoy_validate(static_config_of(routes_state()), tmp_path)


def test_a_failed_route_answers_503_with_its_body() -> None:
    from localmesh.desired import RouteSpec

    route = resources.to_json(resources.build_route(RouteSpec(failed="localmesh: why\n")))
    assert route["direct_response"] == {
        "status": 503,
        "body": {"inline_string": "localmesh: why\n"},
    }
    assert "route" not in route
