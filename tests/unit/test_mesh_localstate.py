"""The state file a `localmesh mesh` session publishes for `localmesh status`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from localmesh.clustermesh import localstate
from localmesh.clustermesh.localstate import (
    STALE,
    SessionState,
    StatePublisher,
    read_sessions,
    render_sessions,
    write_state,
)
from localmesh.runtime import process_start_ticks


def state(pid: int | None = None, **changes: object) -> SessionState:
    pid = os.getpid() if pid is None else pid
    base = SessionState(
        namespace="billing",
        service="billing-api",
        mark="version: dev",
        ports=["9090:8080"],
        tunnel="connected",
        served=3,
        failures=0,
        pid=pid,
        start_ticks=process_start_ticks(pid),
        updated_at=time.time(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    return child.pid


def test_write_is_private_and_read_back(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    path = write_state(directory, state())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in directory.iterdir()] == [f"{os.getpid()}.json"]  # no temp left
    (view,) = read_sessions(directory)
    assert view.state == state(updated_at=view.state.updated_at)
    assert not view.stale and view.healthy and view.tunnel == "connected"


def test_rewrite_replaces_the_file_atomically(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    path = write_state(directory, state(served=1))
    inode = path.stat().st_ino
    write_state(directory, state(served=2))
    # A new inode renamed into place: a reader holding the old file sees it whole.
    assert path.stat().st_ino != inode
    assert json.loads(path.read_text())["served"] == 2


def test_dead_pid_is_stale_and_unhealthy(tmp_path: Path) -> None:
    write_state(tmp_path, state(pid=dead_pid(), start_ticks=None))
    (view,) = read_sessions(tmp_path)
    assert view.stale and not view.healthy
    assert view.tunnel == STALE
    assert view.as_json()["tunnel"] == STALE and view.as_json()["stale"] is True
    assert STALE in render_sessions([view])


def test_reused_pid_is_stale(tmp_path: Path) -> None:
    ticks = process_start_ticks(os.getpid())
    assert ticks is not None
    write_state(tmp_path, state(start_ticks=ticks + 1))  # same number, another process
    (view,) = read_sessions(tmp_path)
    assert view.stale


def test_old_file_is_stale(tmp_path: Path) -> None:
    write_state(tmp_path, state(updated_at=time.time() - 31))
    (view,) = read_sessions(tmp_path)
    assert view.stale


def test_not_connected_is_unhealthy_but_not_stale(tmp_path: Path) -> None:
    write_state(tmp_path, state(tunnel="reconnecting (refused)"))
    (view,) = read_sessions(tmp_path)
    assert not view.stale and not view.healthy
    assert view.tunnel == "reconnecting (refused)"


@pytest.mark.parametrize(
    ("tunnel", "healthy"),
    [
        ("connected", True),  # manual mode
        ("connected, routed", True),
        ("connected, not routed yet", False),
        ("connected, not routed (shadow pod not Ready)", False),
        # The local process stopped: marked requests get a 503.
        ("connected; local port 9090 not answering (marked requests get 503)", False),
        ("connected, routed; local port 9090 not answering (marked requests get 503)", False),
    ],
)
def test_healthy_only_while_marked_requests_are_served(
    tmp_path: Path, tunnel: str, healthy: bool
) -> None:
    write_state(tmp_path, state(tunnel=tunnel))
    (view,) = read_sessions(tmp_path)
    assert not view.stale and view.healthy is healthy


def test_broken_and_foreign_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "123.json").write_text("{not json")
    (tmp_path / "124.json").write_text(json.dumps({"pid": 124}))
    (tmp_path / ".125.json.tmp").write_text("{}")
    assert read_sessions(tmp_path) == []
    assert read_sessions(tmp_path / "missing") == []


def test_render_lists_mark_ports_and_counts(tmp_path: Path) -> None:
    write_state(tmp_path, state(served=7, failures=2))
    header, row = render_sessions(read_sessions(tmp_path)).splitlines()
    assert header.split()[:2] == ["MESH", "SESSION"]
    assert row.split() == [
        "billing/billing-api",
        "version:",
        "dev",
        "9090:8080",
        "connected",
        "7",
        "2",
        str(os.getpid()),
    ]


class FakeTunnel:
    """Stands in for TunnelClient's two read-only attributes the publisher samples."""

    def __init__(self) -> None:
        self.state = "connecting"
        self.stats = type("Stats", (), {"served": 0, "local_failures": 0})()


async def test_publisher_follows_changes_and_removes_its_file(tmp_path: Path) -> None:
    import asyncio

    tunnel = FakeTunnel()
    snap = localstate.snapshot_of("billing", "billing-api", "version: dev", ["9090:8080"], tunnel)
    publisher = StatePublisher(snap, tmp_path)
    publisher.start()
    try:
        (view,) = read_sessions(tmp_path)
        assert view.state.tunnel == "connecting"
        tunnel.state = "connected"
        tunnel.stats.served = 4

        async def published() -> None:
            while True:
                (view,) = read_sessions(tmp_path)
                if view.state.tunnel == "connected" and view.state.served == 4:
                    return
                await asyncio.sleep(0.02)

        await asyncio.wait_for(published(), 10)
    finally:
        await publisher.stop()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", [localstate.SESSIONS_DIR])
def test_sessions_dir_is_not_a_mesh_name(name: str) -> None:
    from localmesh.errors import RuntimeDirError
    from localmesh.runtime import validate_name

    with pytest.raises(RuntimeDirError):
        validate_name(name)
