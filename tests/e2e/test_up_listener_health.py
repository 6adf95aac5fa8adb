"""`status` checks that the listener serves, and `up` repairs it: a listener drained
through Envoy's admin socket, an Envoy stopped with SIGSTOP. Real Envoy, real curl."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from localmesh.sandbox import Sandbox
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    UpProcess,
    envoy_pid,
    eventually,
    free_port,
    pid_alive,
    routed_to,
    run_cli,
    seed_services,
    start_up,
    status_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

# Long enough for `status` to see the fault before localmesh repairs it, whatever the load.
REPAIR_AFTER = "8"


@pytest_asyncio.fixture(loop_scope="module")
async def mesh(
    up_sandbox: Sandbox,
    up_runtime_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[int]:
    monkeypatch.setenv("LOCALMESH_REPAIR_AFTER", REPAIR_AFTER)
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(seed_services(port))
    up: UpProcess = await start_up(
        up_runtime_dir, services, up_sandbox.kubeconfig_path, "--no-edit-hosts"
    )
    try:
        yield port
    finally:
        assert await up.stop() == 0, up.describe()


def listener_check(status: dict[str, Any]) -> dict[str, Any]:
    (check,) = [c for c in status["checks"] if c["name"] == "listener"]
    return dict(check)


async def admin_post(socket_path: str, path: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "5", "--unix-socket", socket_path, "-X", "POST",
        f"http://envoy-admin{path}",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await proc.wait() == 0


async def unhealthy_because(runtime_dir: Path, words: str) -> dict[str, Any] | None:
    code, status = await status_json(runtime_dir)
    problems = [p for p in status["problems"] if p.startswith("listener: ") and words in p]
    if not problems:
        return None
    assert code == 1 and status["healthy"] is False, status
    return dict(status)


async def repaired(runtime_dir: Path, old_pid: int) -> dict[str, Any] | None:
    code, status = await status_json(runtime_dir)
    check = listener_check(status)
    if code != 0 or not check["ok"] or "Envoy restarted at" not in check["repaired"]:
        return None
    assert envoy_pid(status) != old_pid
    return dict(status)


async def test_drained_listener_makes_status_unhealthy_and_is_repaired(
    mesh: int, up_runtime_dir: Path
) -> None:
    port = mesh
    assert await routed_to(port, "billing-api.localhost", "billing")
    code, status = await status_json(up_runtime_dir)
    assert code == 0 and listener_check(status) == {
        "name": "listener", "ok": True, "problem": "", "repaired": ""
    }  # fmt: skip
    old_pid = envoy_pid(status)

    await admin_post(status["envoy"]["admin_address"], "/drain_listeners")
    await eventually(
        lambda: unhealthy_because(up_runtime_dir, "was drained or closed"),
        seconds=10,
        what="status to say the listener is gone",
    )
    text = await run_cli(up_runtime_dir, "status")
    assert text.returncode == 1, text.stdout  # not repaired yet: the text view says why
    assert "UNHEALTHY" in text.stdout
    assert "listener: FAILING: nothing accepts connections on" in text.stdout

    status = await eventually(
        lambda: repaired(up_runtime_dir, old_pid), seconds=40, what="the repair in status"
    )
    assert "was drained or closed" in listener_check(status)["repaired"]
    text = await run_cli(up_runtime_dir, "status")
    assert text.returncode == 0, text.stdout
    assert "listener: ok\n  repaired: Envoy restarted at " in text.stdout
    assert await eventually(
        lambda: routed_to(port, "billing-api.localhost", "billing"),
        seconds=15,
        what="requests served again",
    )


async def test_stopped_envoy_makes_status_unhealthy_and_is_restarted(
    mesh: int, up_runtime_dir: Path
) -> None:
    port = mesh
    _, status = await status_json(up_runtime_dir)
    old_pid = envoy_pid(status)
    os.kill(old_pid, signal.SIGSTOP)
    try:
        status = await eventually(
            lambda: unhealthy_because(up_runtime_dir, "does not answer its admin API"),
            seconds=15,
            what="status to say Envoy does not answer",
        )
        assert str(old_pid) in listener_check(status)["problem"]
        await eventually(
            lambda: repaired(up_runtime_dir, old_pid), seconds=40, what="Envoy restarted"
        )
    finally:
        if pid_alive(old_pid):
            os.kill(old_pid, signal.SIGCONT)
    assert await eventually(
        lambda: routed_to(port, "billing-api.localhost", "billing"),
        seconds=15,
        what="requests served again",
    )
