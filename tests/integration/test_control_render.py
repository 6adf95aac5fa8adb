"""`localmesh status` rendering: the table, the JSON, the exit code rule."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from localmesh.control import (
    POD_BACKOFF,
    POD_CONNECTING,
    CheckStatus,
    EnvoyStatus,
    HostStatus,
    InstanceStatus,
    PodStatus,
    SnapshotResource,
    XdsTypeStatus,
    render_snapshot_json,
    render_status_json,
    render_status_text,
    status_exit_code,
)
from tests.integration.test_control import CDS, LDS, STATUS

NOW = datetime(2026, 11, 21, 4, 10, 0, tzinfo=UTC)
HEALTHY = replace(STATUS, xds=STATUS.xds[:1], extra_problems=())


def test_text_lists_hosts_with_their_pods_below_them() -> None:
    text = render_status_text(STATUS, now=NOW)
    lines = text.splitlines()
    assert lines[0] == "localmesh 'dev' (pid 4321): UNHEALTHY"
    assert "listen: 127.0.0.1:18080" in lines
    assert "envoy: running (pid 5555, admin 127.0.0.1:9901, restarts 1, 1.36.2)" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("HOST"))
    assert lines[header].split() == [
        "HOST", "TARGET", "TYPE", "PODS", "REQUESTS", "ERRORS", "LAST", "RECONNECT",
    ]  # fmt: skip
    billing = lines[header + 1]
    assert billing.split()[:8] == [
        "billing-api.localhost", "billing/billing-api:http", "->", "8080", "http", "1/2",
        "120", "2",
    ]  # fmt: skip
    assert billing.endswith("4m ago (pod replaced)")
    pod_a, pod_b = lines[header + 2], lines[header + 3]
    assert pod_a.startswith("    billing-api-7d9f-abcde")
    assert pod_a.split()[1:4] == ["127.0.0.1:40001", "ready", "conns=3"]
    assert pod_b.split()[1:3] == ["127.0.0.1:40002", "backoff"]
    assert pod_b.endswith("last error: conn reset")
    # Columns line up: every host row starts its TARGET column at the same offset.
    users = lines[header + 4]
    assert users.startswith("users-api.localhost")
    assert users.index("users/") == billing.index("billing/")
    assert lines[header + 5].split()[:3] == ["users-api-0", "127.0.0.1:40003", "ready"]
    assert users.endswith(" -")  # never reconnected


def test_text_shows_xds_state_and_problems() -> None:
    text = render_status_text(STATUS, now=NOW)
    assert "xds Listener: version 3 acked\n" in text
    assert "xds Cluster: version 5 REJECTED (acked 4): cluster 'x': invalid\n" in text
    assert text.endswith(
        "problems:\n"
        "  - envoy rejected Cluster version 5: cluster 'x': invalid\n"
        "  - services.yaml is invalid; serving the previous version\n"
    )


def test_text_of_a_healthy_instance() -> None:
    pending = replace(HEALTHY, xds=(XdsTypeStatus(CDS, "7", "6"),))
    text = render_status_text(pending, now=NOW)
    assert text.startswith("localmesh 'dev' (pid 4321): healthy\n")
    assert "problems" not in text
    assert "xds Cluster: version 7 pending (acked 6)" in text


def test_text_when_envoy_is_down_and_nothing_is_configured() -> None:
    status = InstanceStatus("x", 1, "::1", 8080, EnvoyStatus(running=False, restarts=3))
    text = render_status_text(status, now=NOW)
    assert "listen: [::1]:8080" in text
    assert "envoy: NOT RUNNING (restarts 3)" in text
    assert "no hosts configured" in text
    assert "  - envoy is not running" in text


def test_json_carries_everything_and_the_verdict() -> None:
    data = json.loads(render_status_json(STATUS))
    assert data["healthy"] is False
    assert data["problems"] == list(STATUS.problems())
    assert data["listener"] == "127.0.0.1:18080"
    assert data["started_at"] == "2026-11-21T04:00:00.123456Z"
    billing = data["hosts"][0]
    assert billing["target"] == "billing/billing-api:http"
    assert billing["live_pods"] == 1
    assert billing["last_reconnect"] == "2026-11-21T04:05:06.789000Z"
    assert billing["pods"][1] == {
        "name": "billing-api-7d9f-fghij",
        "local_address": "127.0.0.1",
        "local_port": 40002,
        "state": "backoff",
        "active_connections": 0,
        "last_error": "conn reset",
    }
    assert data["hosts"][1]["last_reconnect"] is None
    assert data["xds"][1]["nack"] == "cluster 'x': invalid"
    assert json.loads(render_status_json(HEALTHY))["healthy"] is True


def _with_host(status: InstanceStatus, host: HostStatus) -> InstanceStatus:
    return replace(status, hosts=(*status.hosts, host))


DOWN_HOST = HostStatus(
    host="down.localhost",
    namespace="ns",
    service="down",
    port=80,
    type="http",
    pods=(
        PodStatus("down-0", "127.0.0.1", 40100, POD_BACKOFF),
        PodStatus("down-1", "127.0.0.1", 40101, POD_CONNECTING),
    ),
)


@pytest.mark.parametrize(
    ("status", "problem"),
    [
        (replace(HEALTHY, envoy=EnvoyStatus(running=False)), "envoy is not running"),
        (_with_host(HEALTHY, DOWN_HOST), "down.localhost: no live endpoints (ns/down:80)"),
        (
            _with_host(HEALTHY, replace(DOWN_HOST, pods=(), error="service ns/down not found")),
            "down.localhost: no live endpoints (ns/down:80): service ns/down not found",
        ),
        (
            replace(HEALTHY, xds=(XdsTypeStatus(LDS, "9", "8", "bad listener"),)),
            "envoy rejected Listener version 9: bad listener",
        ),
        (replace(HEALTHY, extra_problems=("config invalid",)), "config invalid"),
        (
            replace(HEALTHY, checks=(CheckStatus("listener", False, "nothing accepts"),)),
            "listener: nothing accepts",
        ),
        (
            _with_host(
                replace(HEALTHY, recent_seconds=10.2),
                replace(STATUS.hosts[0], recent_requests=4, recent_failures=4),
            ),
            "billing-api.localhost: all 4 requests failed in the last 10s "
            "(5xx, resets or connect failures)",
        ),
    ],
)
def test_exit_code_is_non_zero_for_each_unhealthy_condition(
    status: InstanceStatus, problem: str
) -> None:
    assert status_exit_code(HEALTHY) == 0
    assert status.problems() == (problem,)
    assert status_exit_code(status) != 0


def test_live_snapshot_json() -> None:
    resources = (
        SnapshotResource(LDS, "localmesh", "l1", '{"name": "localmesh", "address": {}}'),
        SnapshotResource(CDS, "c", "c1", '{"name": "c"}'),
    )
    data = json.loads(render_snapshot_json(resources))
    assert data["resources"][0] == {
        "type_url": LDS,
        "name": "localmesh",
        "version": "l1",
        "resource": {"name": "localmesh", "address": {}},
    }
    assert [r["name"] for r in data["resources"]] == ["localmesh", "c"]


def with_route_error(status: InstanceStatus) -> InstanceStatus:
    web = status.hosts[2]
    broken = replace(web.routes[1], cluster="", error="service 'web-v2' not found")
    return replace(status, hosts=(*status.hosts[:2], replace(web, routes=(web.routes[0], broken))))


def test_text_shows_local_targets_and_routes_below_their_host() -> None:
    lines = render_status_text(with_route_error(STATUS), now=NOW).splitlines()
    web = next(i for i, line in enumerate(lines) if line.startswith("web.localhost"))
    assert lines[web].split()[:3] == ["web.localhost", "local", "127.0.0.1:3000"]
    assert lines[web + 1] == "    local 127.0.0.1:3000: listening"
    assert lines[web + 2].split() == [
        "route", "x-dev:", "alice", "->", "local", "127.0.0.1:9090", "NOT", "LISTENING",
    ]  # fmt: skip
    assert lines[web + 3].split()[:5] == ["route", "path", "/v2/", "->", "web/web-v2:http"]
    assert lines[web + 3].endswith("error: service 'web-v2' not found")


def test_a_local_host_with_nothing_listening_is_a_problem_a_route_target_is_not() -> None:
    web = STATUS.hosts[2]
    assert not any("9090" in p for p in STATUS.problems())  # a stopped route target: shown
    stopped = replace(STATUS, hosts=(replace(web, local_listening=False),))
    assert "web.localhost: nothing listens on 127.0.0.1:3000" in stopped.problems()
    assert (
        "web.localhost: route path /v2/ -> web/web-v2:http: service 'web-v2' not found"
        in with_route_error(HEALTHY).problems()
    )
    data = json.loads(render_status_json(STATUS))
    routes = data["hosts"][2]["routes"]
    assert routes[0] == {
        "match": "x-dev: alice",
        "target": "local 127.0.0.1:9090",
        "cluster": "http.local.127.0.0.1.9090",
        "local": True,
        "listening": False,
        "error": "",
    }
    assert data["hosts"][2]["target"] == "local 127.0.0.1:3000"


def test_some_recent_failures_make_a_degraded_instance_that_exits_0() -> None:
    host = replace(STATUS.hosts[0], recent_requests=10, recent_failures=3)
    status = replace(HEALTHY, hosts=(host, *HEALTHY.hosts[1:]), recent_seconds=9.6)
    assert status.problems() == () and status.state == "degraded"
    assert status_exit_code(status) == 0
    reason = (
        "billing-api.localhost: 3 of 10 requests failed in the last 10s "
        "(5xx, resets or connect failures)"
    )
    assert status.degraded() == (reason,)
    text = render_status_text(status, now=NOW)
    assert text.startswith("localmesh 'dev' (pid 4321): DEGRADED\n")
    assert text.endswith(f"degraded:\n  - {reason}\n")
    data = json.loads(render_status_json(status))
    assert (data["state"], data["healthy"], data["degraded"]) == ("degraded", True, [reason])


def test_text_shows_each_check_and_its_last_repair() -> None:
    status = replace(
        HEALTHY,
        checks=(CheckStatus("listener", True, repaired="Envoy restarted at 04:09:58 (hung)"),),
    )
    text = render_status_text(status, now=NOW)
    assert "\nlistener: ok\n  repaired: Envoy restarted at 04:09:58 (hung)\n" in text
    failing = replace(status, checks=(CheckStatus("listener", False, "nothing accepts"),))
    assert "\nlistener: FAILING: nothing accepts\n" in render_status_text(failing, now=NOW)
