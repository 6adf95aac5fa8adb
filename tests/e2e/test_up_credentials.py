"""`localmesh up` while the cluster's credentials change under it: the API server comes
back with a new CA and token on the same kubeconfig path and port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from localmesh.sandbox import Sandbox, Scenario
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    Load,
    UpProcess,
    eventually,
    free_port,
    services_yaml,
    start_up,
    status_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

SCENARIO = """
namespaces: [web]
deployments:
  - {name: echo, namespace: web, workload: http-echo, replicas: 2,
     ports: [{name: http, containerPort: 8080}]}
services:
  - {name: echo, namespace: web, selector: {app: echo},
     ports: [{name: http, port: 8080, targetPort: http}]}
"""
HOST = "echo.localhost"
ENTRIES: list[dict[str, object]] = [
    {"host": HOST, "namespace": "web", "service": "echo", "port_name": "http"},
]


@pytest_asyncio.fixture(loop_scope="module")
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text(SCENARIO)
    kubeconfig = tmp_path / "kubeconfig"
    async with Sandbox.start(Scenario.load(scenario_file), kubeconfig_path=kubeconfig) as sb:
        yield sb


async def _status(runtime_dir: Path) -> dict[str, Any]:
    _, status = await status_json(runtime_dir)
    assert isinstance(status, dict)
    return status


async def _up(sandbox: Sandbox, runtime_dir: Path, tmp_path: Path) -> tuple[UpProcess, int]:
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(services_yaml(port, ENTRIES))
    up = await start_up(runtime_dir, services, sandbox.kubeconfig_path, "--no-edit-hosts")
    return up, port


async def test_api_server_back_with_new_ca_and_token_is_recovered(
    sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    up, port = await _up(sandbox, up_runtime_dir, tmp_path)
    load = Load(port, HOST)
    try:
        load.start()
        await load.wait_ok(20, seconds=30)
        old_kubeconfig = sandbox.kubeconfig_path.read_bytes()

        await sandbox.apiserver.stop()
        sandbox.rotate_credentials()
        assert sandbox.kubeconfig_path.read_bytes() != old_kubeconfig

        async def outage_shown() -> list[str] | None:
            status = await _status(up_runtime_dir)
            problems = [p for p in status["problems"] if "watch" in p]
            return problems if not status["healthy"] and problems else None

        problems = await eventually(outage_shown, seconds=30, what="status to show the outage")
        assert any("cannot reach" in p for p in problems), problems

        await sandbox.apiserver.start()

        async def healthy_again() -> bool:
            status = await _status(up_runtime_dir)
            return bool(status["healthy"])

        await eventually(healthy_again, seconds=60, what="status to be healthy again")
        await load.wait_ok(20, seconds=60)
        failed = len(load.failures)
        await load.wait_ok(60, seconds=60)
        assert len(load.failures) == failed, load.failures[failed:]
    finally:
        await load.stop()
        assert await up.stop() == 0, up.describe()
    reloads = [e for e in up.logs() if e.get("event") == "kubeconfig re-read: new credentials"]
    assert reloads, up.describe()
    # Failures during the outage are summarised, not logged once per request.
    per_request = [e for e in up.logs() if str(e.get("event", "")).startswith("port-forward")]
    assert len(per_request) < 40, (len(per_request), len(load.failures))
