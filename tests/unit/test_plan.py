"""The planner: services.yaml with routes -> the desired state's routes and clusters."""

from __future__ import annotations

from localmesh.config import parse_config
from localmesh.desired import ClusterKind, Endpoint, HeaderMatch, MatchKind, Protocol, RouteSpec
from localmesh.plan import PlanMemo, plan

TEXT = """\
listener_port: 8080
services:
  - host: billing-api.localhost
    namespace: billing
    service: billing-api
    port_name: http
    type: http
    routes:
      - headers: {x-dev: alice}
        local: 9090
      - path_prefix: /v2/
        namespace: billing
        service: billing-v2
        port: 8081
      - headers: {x-dev: bob}
        local: 9090
        type: grpc
  - host: web.localhost
    local: 3000
"""
CONFIG = parse_config(TEXT)
BILLING, WEB = CONFIG.services
OWN, V2 = BILLING.backends()
EDITED = TEXT + "  - {host: new.localhost, namespace: n, service: s, port: 80, type: http}\n"


def test_routes_in_order_then_the_entry_as_catch_all() -> None:
    endpoints = {"billing/billing-v2:8081": [Endpoint("127.0.0.1", 4100, "v2-0")]}
    state = plan(CONFIG, {OWN: 8080, V2: 8081}, endpoints, "127.0.0.1")
    billing, web = state.virtual_hosts
    assert billing.routes == (
        RouteSpec(
            cluster="http.local.127.0.0.1.9090",
            headers=(HeaderMatch("x-dev", MatchKind.EXACT, "alice"),),
            name="billing-api.localhost: x-dev: alice",
            unreachable="localmesh: nothing listens on 127.0.0.1:9090 "
            "(billing-api.localhost, x-dev: alice)",
        ),
        RouteSpec(
            cluster="http.billing.billing-v2.8081",
            path_prefix="/v2/",
            name="billing-api.localhost: path /v2/",
        ),
        RouteSpec(
            cluster="grpc.local.127.0.0.1.9090",
            headers=(HeaderMatch("x-dev", MatchKind.EXACT, "bob"),),
            streams=True,
            name="billing-api.localhost: x-dev: bob",
            unreachable="localmesh: nothing listens on 127.0.0.1:9090 "
            "(billing-api.localhost, x-dev: bob)",
        ),
        RouteSpec(cluster="http.billing.billing-api.8080"),
    )
    assert web.routes == (
        RouteSpec(
            cluster="http.local.127.0.0.1.3000",
            unreachable="localmesh: nothing listens on 127.0.0.1:3000 (web.localhost)",
        ),
    )
    clusters = {c.name: c for c in state.clusters}
    assert clusters["http.local.127.0.0.1.9090"].kind is ClusterKind.LOCAL
    assert clusters["http.local.127.0.0.1.9090"].endpoints == (Endpoint("127.0.0.1", 9090),)
    assert clusters["grpc.local.127.0.0.1.9090"].protocol is Protocol.GRPC
    assert clusters["http.billing.billing-v2.8081"].endpoints == (
        Endpoint("127.0.0.1", 4100, "v2-0"),
    )
    assert state.route_clusters == set(clusters)


def test_an_unresolved_route_target_is_left_out_and_its_requests_fall_through() -> None:
    state = plan(CONFIG, {OWN: 8080}, {}, "127.0.0.1")
    billing = state.virtual_hosts[0]
    assert [r.path_prefix for r in billing.routes] == ["/", "/", "/"]
    assert "http.billing.billing-v2.8081" not in {c.name for c in state.clusters}


def test_local_routes_are_served_while_the_entry_itself_is_unresolved() -> None:
    state = plan(CONFIG, {}, {}, "127.0.0.1")
    billing, web = state.virtual_hosts
    assert [r.cluster for r in billing.routes] == [
        "http.local.127.0.0.1.9090",
        "grpc.local.127.0.0.1.9090",
    ]
    assert web.host == "web.localhost"


def test_a_memo_keeps_unchanged_pieces_and_changes_nothing_else() -> None:
    memo = PlanMemo()
    resolved = {OWN: 8080, V2: 8081}
    first = plan(CONFIG, resolved, {}, "127.0.0.1", memo=memo)
    assert first == plan(CONFIG, resolved, {}, "127.0.0.1")
    endpoints = {"billing/billing-v2:8081": (Endpoint("127.0.0.1", 4100),)}
    second = plan(CONFIG, resolved, endpoints, "127.0.0.1", memo=memo)
    assert second == plan(CONFIG, resolved, endpoints, "127.0.0.1")
    assert second.virtual_hosts is first.virtual_hosts  # only endpoints moved
    assert second.listener is first.listener
    old = {c.name: c for c in first.clusters}
    for cluster in second.clusters:
        if cluster.name == "http.billing.billing-v2.8081":
            assert cluster.endpoints == (Endpoint("127.0.0.1", 4100),)
        else:
            assert cluster is old[cluster.name]
    # A new config (as after a save): equal entries keep their virtual hosts.
    edited = parse_config(EDITED)
    third = plan(edited, {**resolved, edited.services[2]: 80}, endpoints, "127.0.0.1", memo=memo)
    assert third.virtual_hosts[:2] == second.virtual_hosts
    assert third.virtual_hosts[0] is second.virtual_hosts[0]
    assert third == plan(edited, {**resolved, edited.services[2]: 80}, endpoints, "127.0.0.1")
    # The memo follows a resolved port that changes under the same entries.
    fourth = plan(edited, {OWN: 9000}, endpoints, "127.0.0.1", memo=memo)
    assert fourth == plan(edited, {OWN: 9000}, endpoints, "127.0.0.1")
    assert fourth.virtual_hosts[0].routes[-1].cluster == "http.billing.billing-api.9000"


def test_names_of_the_listener_and_route_configuration_are_parameters() -> None:
    state = plan(CONFIG, {}, {}, "0.0.0.0", listener_name="edge", route_config_name="edge_routes")
    assert (state.listener.name, state.listener.route_config_name) == ("edge", "edge_routes")


def test_an_unresolved_host_with_a_reason_answers_503_with_it() -> None:
    config = parse_config("services:\n  - {host: a.localhost, namespace: n, service: s}\n")
    (entry,) = config.services
    assert plan(config, {}, {}, "127.0.0.1").virtual_hosts == ()  # no reason: no host
    failures = {entry: "service n/s has no port 'web'; it has: http:8080"}
    state = plan(config, {}, {}, "127.0.0.1", failures=failures)
    (vhost,) = state.virtual_hosts
    assert vhost.routes == (
        RouteSpec(
            failed="localmesh: a.localhost: service n/s has no port 'web'; it has: http:8080\n"
        ),
    )
    assert state.clusters == ()
    memo = PlanMemo()
    assert plan(config, {}, {}, "127.0.0.1", memo=memo, failures=failures) == state
    assert (
        plan(config, {entry: 80}, {}, "127.0.0.1", memo=memo).virtual_hosts[0].routes[0].failed
        == ""
    )
