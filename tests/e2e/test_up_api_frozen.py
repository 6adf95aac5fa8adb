"""`localmesh up` while the API server is frozen (SIGSTOP of a real sandbox process):
status says so within seconds, with the reason, and is healthy again once it answers."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import UP_LOOP
from tests.e2e.test_up_credentials import ENTRIES, SCENARIO
from tests.e2e.up_helpers import (
    UpProcess,
    eventually,
    free_port,
    services_yaml,
    start_up,
    status_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]


async def _status(runtime_dir: Path) -> dict[str, Any]:
    _, status = await status_json(runtime_dir)
    assert isinstance(status, dict)
    return status


async def test_frozen_api_server_makes_status_unhealthy_until_it_answers(
    up_runtime_dir: Path, tmp_path: Path
) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    kubeconfig = tmp_path / "kubeconfig"
    sandbox = await UpProcess.start(
        up_runtime_dir, "up", "--scenario", scenario, "--kubeconfig", kubeconfig,
        command="sandbox",
    )  # fmt: skip
    up: UpProcess | None = None
    try:
        await sandbox.wait_for(
            lambda: any(line.startswith("kubeconfig: ") for line in sandbox.stdout),
            seconds=60,
            what="the sandbox's kubeconfig",
        )
        port = free_port()
        services = tmp_path / "services.yaml"
        services.write_text(services_yaml(port, ENTRIES))
        up = await start_up(up_runtime_dir, services, kubeconfig, "--no-edit-hosts")
        assert (await _status(up_runtime_dir))["healthy"]

        sandbox.signal(signal.SIGSTOP)
        try:

            async def frozen_shown() -> list[str] | None:
                status = await _status(up_runtime_dir)
                found = [p for p in status["problems"] if "has not answered" in p]
                return found if found and not status["healthy"] else None

            problems = await eventually(frozen_shown, seconds=30, what="status to say so")
            assert "Kubernetes API server" in problems[0], problems
        finally:
            sandbox.signal(signal.SIGCONT)

        async def healthy() -> bool:
            return bool((await _status(up_runtime_dir))["healthy"])

        await eventually(healthy, seconds=30, what="status to be healthy again")
    finally:
        sandbox.signal(signal.SIGCONT)
        if up is not None:
            assert await up.stop() == 0, up.describe()
        assert await sandbox.stop() == 0, sandbox.describe()
