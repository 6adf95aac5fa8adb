"""`status` from facts: recent request failures per host (Envoy's counters) and forwarders
that are connected, not assumed. Real Envoy, real curl, the sandbox cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from localmesh.sandbox import Sandbox
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    UpProcess,
    eventually,
    free_port,
    http_get,
    run_cli,
    seed_services,
    start_up,
    status_is,
    status_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]


@pytest_asyncio.fixture(loop_scope="module")
async def mesh(up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path) -> AsyncIterator[int]:
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


def host(status: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(next(h for h in status["hosts"] if h["host"] == name))


def only_pod(sb: Sandbox, namespace: str) -> str:
    (pod,) = [p["metadata"]["name"] for p in sb.pods(namespace)]
    return str(pod)


async def test_every_request_failing_makes_status_unhealthy(
    up_sandbox: Sandbox, mesh: int, up_runtime_dir: Path
) -> None:
    port = mesh  # no request yet: every one in the window fails
    pod = only_pod(up_sandbox, "admin")
    await up_sandbox.faults.kill_listener("admin", pod)
    try:
        for _ in range(4):  # the pod is Running and Ready, and refuses every connection
            assert (await http_get(port, "admin.localhost")).status == 503

        async def unhealthy() -> dict[str, Any] | None:
            code, status = await status_json(up_runtime_dir)
            admin = host(status, "admin.localhost")
            if admin["recent_failures"] < 4:
                return None
            assert code == 1 and status["state"] == "unhealthy", status
            return dict(status)

        status = await eventually(unhealthy, seconds=10, what="the failures in status")
        admin = host(status, "admin.localhost")
        assert admin["recent_requests"] == admin["recent_failures"]
        assert any(
            p.startswith("admin.localhost: all ") and "requests failed in the last" in p
            for p in status["problems"]
        ), status["problems"]
        text = await run_cli(up_runtime_dir, "status")
        assert text.returncode == 1 and "UNHEALTHY" in text.stdout
        assert "admin.localhost: all " in text.stdout
    finally:
        await up_sandbox.faults.revive_listener("admin", pod)
    assert (await http_get(port, "admin.localhost")).status == 200


async def test_some_requests_failing_makes_status_degraded(mesh: int, up_runtime_dir: Path) -> None:
    port = mesh
    codes = [
        (await http_get(port, "billing-api.localhost", path)).status
        for path in ("/", "/?status=502", "/", "/?status=500", "/")
    ]
    assert codes == [200, 502, 200, 500, 200]

    async def degraded() -> dict[str, Any] | None:
        code, status = await status_json(up_runtime_dir)
        billing = host(status, "billing-api.localhost")
        if billing["recent_failures"] < 2:
            return None
        assert status["state"] == "degraded" and code == 0, status
        return dict(status)

    status = await eventually(degraded, seconds=10, what="a degraded status")
    (line,) = [d for d in status["degraded"] if d.startswith("billing-api.localhost: ")]
    assert " of " in line and "requests failed in the last" in line
    text = await run_cli(up_runtime_dir, "status")
    assert "DEGRADED" in text.stdout and "degraded:\n  - billing-api.localhost: " in text.stdout


async def test_forwarders_shown_as_they_are(
    up_sandbox: Sandbox, mesh: int, up_runtime_dir: Path
) -> None:
    port = mesh
    assert (await http_get(port, "billing-api.localhost")).status == 200
    _, status = await status_json(up_runtime_dir)
    assert {p["state"] for p in host(status, "billing-api.localhost")["pods"]} == {"ready"}

    # Down long enough for any status call under load to see it; awaited, never cancelled.
    restart = asyncio.create_task(up_sandbox.faults.restart_apiserver(downtime=15))
    try:

        async def disconnected() -> dict[str, Any] | None:
            code, status = await status_json(up_runtime_dir)
            pods = host(status, "billing-api.localhost")["pods"]
            if not pods or any(p["state"] == "ready" for p in pods):
                return None
            assert code == 1, status
            return dict(status)

        status = await eventually(disconnected, seconds=12, what="forwarders shown down")
        assert any(
            p.startswith("billing-api.localhost: no live endpoints") for p in status["problems"]
        ), status["problems"]
    finally:
        await restart

    async def reconnected() -> bool:  # by itself: no request has been sent since
        _, status = await status_json(up_runtime_dir)
        return {p["state"] for p in host(status, "billing-api.localhost")["pods"]} == {"ready"}

    await eventually(reconnected, seconds=40, what="the forwarders connected again")
    assert await status_is(port, "billing-api.localhost", 200)
