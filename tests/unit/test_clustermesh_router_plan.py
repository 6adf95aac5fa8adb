"""The router's plan: Leases, shadow pods and origin EndpointSlices -> Envoy resources."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from localmesh.clustermesh import manifests as m, router_plan as rp
from localmesh.envoy import validate_config
from localmesh.kube.targets import JSON
from localmesh.xds import resources as rs
from localmesh.xds.snapshot import render_xds_view
from localmesh.xds.static import render_static_config

NOW = datetime(2026, 12, 3, 9, 0, 0, tzinfo=UTC)


def lease(
    name: str,
    header: str = "X-Version",
    value: str = "dev",
    *,
    renewed: datetime = NOW,
    acquired: datetime | None = None,
    duration: int = 10,
    ports: str = "9090:8080:8081",
) -> JSON:
    return {
        "metadata": {
            "name": name,
            "annotations": {
                m.HEADER_ANNOTATION: header,
                m.VALUE_ANNOTATION: value,
                m.SHADOW_ANNOTATION: name,
                m.PORTS_ANNOTATION: ports,
            },
        },
        "spec": {
            "holderIdentity": f"{name}@laptop",
            "leaseDurationSeconds": duration,
            "acquireTime": m.micro_time(acquired or renewed),
            "renewTime": m.micro_time(renewed),
        },
    }


def pod(name: str, ip: str, *, ready: bool = True) -> JSON:
    status = "True" if ready else "False"
    return {
        "metadata": {"name": name},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": status}]},
    }


def endpoint_slice(
    *ips: str, port: int = 8081, not_ready: tuple[str, ...] = (), name: str = "web"
) -> JSON:
    return {
        "ports": [{"name": name, "port": port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": ip not in not_ready},
                "targetRef": {"kind": "Pod", "name": f"pod-{ip}"},
            }
            for ip in ips
        ],
    }


def make(leases: list[JSON], pods: list[JSON], slices: list[JSON], **kw: Any) -> rp.RouterPlan:
    return rp.plan(
        "10.0.0.9",
        kw.pop("ports", [8081]),
        leases=leases,
        pods={p["metadata"]["name"]: p for p in pods},
        slices=slices,
        now=kw.pop("now", NOW),
    )


def route_summary(router: rp.RouterPlan, port: int) -> list[tuple[str, str]]:
    return [
        (r.cluster, ";".join(h.describe() for h in r.headers) or "*") for r in router.routes(port)
    ]


def test_live_lease_with_ready_shadow_routes_its_mark_then_the_catch_all() -> None:
    router = make([lease("s1")], [pod("s1", "10.0.1.1")], [endpoint_slice("10.0.2.1", "10.0.2.2")])
    assert route_summary(router, 8081) == [
        ("shadow.s1.8081", "x-version: dev"),
        ("origin.8081", "*"),
    ]
    clusters = {c.name: c for c in router.clusters()}
    assert [(e.address, e.port) for e in clusters["shadow.s1.8081"].endpoints] == [
        ("10.0.1.1", 8081)
    ]
    assert [e.address for e in clusters["origin.8081"].endpoints] == ["10.0.2.1", "10.0.2.2"]


def test_expired_lease_and_unready_shadow_fall_back_to_the_origin() -> None:
    expired = lease("old", renewed=NOW - timedelta(seconds=11))
    unready = lease("cold", value="cold")
    router = make(
        [expired, unready], [pod("old", "10.0.1.1"), pod("cold", "10.0.1.2", ready=False)], []
    )
    assert route_summary(router, 8081) == [("origin.8081", "*")]
    assert [s.name for s in router.sessions] == ["cold"]  # live, but not routed
    assert not router.sessions[0].routed


def test_a_lease_expires_by_the_clock_alone() -> None:
    one = lease("s1", renewed=NOW)
    assert rp.next_expiry([one], NOW) == 10.0
    later = NOW + timedelta(seconds=10, microseconds=1)
    assert make([one], [pod("s1", "10.0.1.1")], [], now=later).sessions == ()
    assert rp.next_expiry([one], later) is None


def test_two_developers_with_different_keys_each_get_a_route() -> None:
    ana = lease("ana", "X-Version", "ana", acquired=NOW - timedelta(seconds=5))
    bob = lease("bob", "baggage", "bob")
    router = make([bob, ana], [pod("ana", "10.0.1.1"), pod("bob", "10.0.1.2")], [])
    assert route_summary(router, 8081) == [
        ("shadow.ana.8081", "x-version: ana"),
        ("shadow.bob.8081", "baggage: bob"),
        ("origin.8081", "*"),
    ]


def test_a_mark_is_the_oldest_sessions_and_the_younger_is_held() -> None:
    """Two live sessions with one mark on one port (they started at the same moment, so
    neither `mesh` saw the other's Lease): only the older is routed, whether or not its
    shadow is connected; the younger is held, and its `mesh` is told by whom. Another
    header, another value or another port is another mark."""
    young = lease("a-young", header="x-VERSION", acquired=NOW - timedelta(seconds=1))
    old = lease("z-old", acquired=NOW - timedelta(seconds=9))
    other = lease("b-other", value="qa", acquired=NOW - timedelta(seconds=5))
    elsewhere = lease("c-port", ports="9091:80:9000", acquired=NOW - timedelta(seconds=3))
    shadows = [pod(n, f"10.0.1.{i}") for i, n in enumerate(("a-young", "z-old", "b-other"), 1)]
    router = make([young, old, other, elsewhere], shadows, [], ports=[8081, 9000])
    assert [r.cluster for r in router.routes(8081)] == [
        "shadow.z-old.8081",
        "shadow.b-other.8081",
        "origin.8081",
    ]
    assert {name: s.name for name, s in router.held.items()} == {"a-young": "z-old"}
    # The older one's shadow not connected: the mark goes to the pods, not to the younger.
    router = make([young, old], [pod("a-young", "10.0.1.1")], [])
    assert [r.cluster for r in router.routes(8081)] == ["origin.8081"]
    assert set(router.held) == {"a-young"}


def test_marks_route_only_the_ports_their_session_exposes() -> None:
    router = make(
        [lease("s1", ports="9090:80:8081")],
        [pod("s1", "10.0.1.1")],
        [endpoint_slice("10.0.2.1", port=8081), endpoint_slice("10.0.2.1", port=9000)],
        ports=[8081, 9000],
    )
    assert [r.cluster for r in router.routes(9000)] == ["origin.9000"]
    assert [r.cluster for r in router.routes(8081)] == ["shadow.s1.8081", "origin.8081"]
    assert [e.port for e in router.origin[9000]] == [9000]


def test_not_ready_origin_endpoints_are_left_out() -> None:
    router = make([], [], [endpoint_slice("10.0.2.1", "10.0.2.2", not_ready=("10.0.2.2",))])
    assert [e.address for e in router.origin[8081]] == ["10.0.2.1"]


def test_snapshot_serves_a_listener_per_port_and_envoy_accepts_it(tmp_path: Path) -> None:
    router = make(
        [lease("s1"), lease("s2", "baggage", "b")],
        [pod("s1", "10.0.1.1"), pod("s2", "10.0.1.2")],
        [endpoint_slice("10.0.2.1", port=8081), endpoint_slice("10.0.2.1", port=9000)],
        ports=[8081, 9000],
    )
    snapshot = rp.build_router_snapshot(router)
    assert sorted(snapshot.resources(rs.LISTENER_TYPE)) == ["router_8081", "router_9000"]
    listener = rs.to_json(snapshot.resources(rs.LISTENER_TYPE)["router_8081"].message())
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert listener["address"]["socket_address"] == {"address": "10.0.0.9", "port_value": 8081}
    assert hcm.get("codec_type", "AUTO") == "AUTO"  # AUTO is the enum default (0)
    assert hcm["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    flags = hcm["local_reply_config"]["mappers"][0]["filter"]["and_filter"]["filters"][0]
    assert flags["response_flag_filter"]["flags"] == ["UC", "UF", "URX", "UH"]
    cluster = rs.to_json(snapshot.resources(rs.CLUSTER_TYPE)["shadow.s1.8081"].message())
    options = next(iter(cluster["typed_extension_protocol_options"].values()))
    assert "use_downstream_protocol_config" in options
    routes = rs.to_json(snapshot.resources(rs.ROUTE_TYPE)["router_routes_8081"].message())
    first = routes["virtual_hosts"][0]["routes"][0]
    assert "auto_host_rewrite" not in first["route"]
    text = first["metadata"]["filter_metadata"]["localmesh"]["unreachable"]
    assert text.startswith("localmesh: the local process behind x-version: dev is not answering")
    # The whole thing, made static, is a configuration Envoy accepts.
    view = render_xds_view(snapshot, {"node": {"id": "router", "cluster": "router"}})
    config = render_static_config(view)
    for listener_json in config["static_resources"]["listeners"]:
        listener_json["address"]["socket_address"]["address"] = "127.0.0.1"
    path = tmp_path / "router.json"
    path.write_text(json.dumps(config))
    validate_config(path)


def test_a_routed_mark_never_moves_to_a_later_comer() -> None:
    """Ownership by age, as the API server saw it (creationTimestamp) before the
    developers' clocks (acquireTime); and a session Envoy routes now keeps its mark even if
    a later Lease claims an older age (a laptop clock behind)."""
    ana = lease("ana", acquired=NOW)
    bob = lease("bob", acquired=NOW - timedelta(seconds=5))  # bob's clock is behind
    ana["metadata"]["creationTimestamp"] = "2026-12-03T10:00:00Z"
    bob["metadata"]["creationTimestamp"] = "2026-12-03T10:00:02Z"
    shadows = [pod("ana", "10.0.1.1"), pod("bob", "10.0.1.2")]
    by_server = make([ana, bob], shadows, [])
    assert set(by_server.held) == {"bob"}
    # Created in the same second: acquireTime decides, unless one is routed already.
    bob["metadata"]["creationTimestamp"] = ana["metadata"]["creationTimestamp"]
    assert set(make([ana, bob], shadows, []).held) == {"ana"}
    sticky = rp.plan(
        "10.0.0.9",
        [8081],
        leases=[ana, bob],
        pods={p["metadata"]["name"]: p for p in shadows},
        slices=[],
        now=NOW,
        incumbents=frozenset({"ana"}),
    )
    assert set(sticky.held) == {"bob"}
    assert [r.cluster for r in sticky.routes(8081)] == ["shadow.ana.8081", "origin.8081"]
