"""The block `status --watch` prints per refresh."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from localmesh.clustermesh.localstate import (
    SessionState,
    read_sessions,
    render_sessions,
    write_state,
)
from localmesh.control import EnvoyStatus, HostStatus, InstanceStatus, PodStatus
from localmesh.runtime import process_start_ticks
from localmesh.statuswatch import render_watch_block

NOW = datetime(2026, 12, 3, 9, 15, 4, tzinfo=UTC)
POD = PodStatus("web-0", "127.0.0.1", 40001)
STATUS = InstanceStatus(
    "dev",
    42,
    "127.0.0.1",
    8080,
    EnvoyStatus(running=True),
    hosts=(
        HostStatus("web.localhost", "shop", "web", 80, "http", pods=(POD, POD),
                   recent_requests=25, recent_failures=0),
        HostStatus("api.localhost", "shop", "api", 80, "http", pods=(POD,),
                   recent_requests=10, recent_failures=2),
        HostStatus("me.localhost", "", "", "", "http", local="127.0.0.1:9090",
                   local_listening=True),
    ),
    recent_seconds=10.0,
)  # fmt: skip


def test_one_line_per_host_with_pods_rate_and_failures() -> None:
    lines = render_watch_block(STATUS, now=NOW, interval=2).splitlines()
    assert lines[0].startswith("localmesh 'dev' (pid 42): DEGRADED   ")
    assert lines[0].endswith("every 2s, Ctrl-C to stop")
    assert [line.split() for line in lines[1:5]] == [
        ["HOST", "PODS", "REQ/S", "ERRORS", "(10s)"],
        ["web.localhost", "2/2", "2.5", "0"],
        ["api.localhost", "1/1", "1.0", "2"],
        ["me.localhost", "local", "0.0", "0"],
    ]
    assert lines[5] == (
        "~ api.localhost: 2 of 10 requests failed in the last 10s (5xx, resets or connect failures)"
    )


def test_before_a_window_exists_and_with_problems() -> None:
    status = replace(STATUS, recent_seconds=0.0, envoy=EnvoyStatus(running=False))
    lines = render_watch_block(status, now=NOW, interval=0.5).splitlines()
    assert "UNHEALTHY" in lines[0] and "every 0.5s" in lines[0]
    assert lines[1].split() == ["HOST", "PODS", "REQ/S", "ERRORS"]
    assert lines[2].split() == ["web.localhost", "2/2", "-", "-"]
    assert "! envoy is not running" in lines


def test_mesh_sessions_follow_the_hosts(tmp_path: Path) -> None:
    state = SessionState(
        namespace="billing",
        service="billing-api",
        mark="version: dev",
        ports=["9090:8080"],
        tunnel="connected, not routed (shadow pod not Ready)",
        served=3,
        failures=0,
        pid=os.getpid(),
        start_ticks=process_start_ticks(os.getpid()),
        updated_at=time.time(),
    )
    write_state(tmp_path, state)
    sessions = read_sessions(tmp_path)
    lines = render_watch_block(STATUS, now=NOW, interval=2, sessions=sessions).splitlines()
    at = lines.index("")  # a blank line, then the block `status` shows
    assert lines[at + 1 :] == render_sessions(sessions).splitlines()
    assert lines[at + 2].split()[:3] == ["billing/billing-api", "version:", "dev"]
    assert "connected, not routed (shadow pod not Ready)" in lines[at + 2]
    # Without sessions, nothing is added.
    assert "MESH SESSION" not in render_watch_block(STATUS, now=NOW, interval=2)
