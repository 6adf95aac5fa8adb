"""Real kubectl port-forward through `handle_portforward`, with real curl through it.

The minimal API's /version picks which kubectl the dispatcher runs: >= 1.31 tunnels
SPDY in a websocket, KUBECTL_PORT_FORWARD_WEBSOCKETS=false and <= 1.30 use the plain
SPDY/3.1 upgrade.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from tests.integration.test_sandbox_portforward_helpers import (
    POD_IP,
    free_port,
    http_backend,
    kubectl_port_forward,
    mini_api,
    run_curl,
    wait_until,
)

pytestmark = pytest.mark.integration

NO_WEBSOCKETS = {"KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}

FLAVOURS = [
    *(
        pytest.param(minor, {}, "websocket", id=f"kubectl-1.{minor}-websocket-tunnel")
        for minor in (31, 32, 33)
    ),
    pytest.param(33, NO_WEBSOCKETS, "SPDY/3.1", id="kubectl-1.33-plain-spdy"),
    *(
        pytest.param(minor, {}, "SPDY/3.1", id=f"kubectl-1.{minor}-plain-spdy")
        for minor in (27, 28, 29, 30)
    ),
]


def upgrades_of_portforward(requests: list[tuple[str, str, str]]) -> set[str]:
    return {upgrade for _, path, upgrade in requests if path.endswith("/portforward")}


@pytest.mark.parametrize(("minor", "env", "upgrade"), FLAVOURS)
async def test_kubectl_port_forward_with_curl(
    tmp_path: Path, minor: int, env: dict[str, str], upgrade: str
) -> None:
    size = 8 * 1024 * 1024
    blob = tmp_path / "upload.bin"
    blob.write_bytes(os.urandom(size))
    async with (
        http_backend() as port,
        mini_api(tmp_path, minor=minor) as api,
        kubectl_port_forward(api.kubeconfig, "pod/billing-api-0", port, env=env) as fwd,
    ):
        base = f"http://127.0.0.1:{fwd.local_port}"
        rc, out, err = await run_curl(f"{base}/")
        assert rc == 0, err
        assert b'"pod": "billing-api-0"' in out

        # Several MB each way: no stall without flow-control windows.
        rc, out, err = await run_curl(f"{base}/bytes/{size}")
        assert rc == 0, err
        assert hashlib.sha256(out).digest() == hashlib.sha256(b"x" * size).digest()
        rc, out, err = await run_curl("--data-binary", f"@{blob}", f"{base}/upload")
        assert rc == 0, err
        assert out == f'{{"received": {size}}}'.encode()

        # Concurrent local connections share the one SPDY session.
        results = await asyncio.gather(*(run_curl(f"{base}/") for _ in range(8)))
        assert all(rc == 0 and b"billing-api-0" in out for rc, out, _ in results)
        assert fwd.process.returncode is None
    assert upgrades_of_portforward(api.requests) == {upgrade}


@pytest.mark.parametrize(
    ("minor", "env"),
    [
        pytest.param(33, {}, id="kubectl-1.33-websocket-tunnel"),
        pytest.param(30, {}, id="kubectl-1.30-plain-spdy"),
    ],
)
async def test_kubectl_reports_a_refused_pod_port(
    tmp_path: Path, minor: int, env: dict[str, str]
) -> None:
    dead = free_port(POD_IP)
    async with (
        mini_api(tmp_path, minor=minor) as api,
        kubectl_port_forward(api.kubeconfig, "pod/billing-api-0", dead, env=env) as fwd,
    ):
        rc, _, _ = await run_curl(f"http://127.0.0.1:{fwd.local_port}/")
        assert rc != 0
        async with asyncio.timeout(20):
            await fwd.process.wait()
        # The stderr reader may still be catching up with kubectl's last lines.
        await wait_until(lambda: b"lost connection to pod" in fwd.stderr)
    text = bytes(fwd.stderr).decode()
    assert fwd.process.returncode == 1
    assert f"error forwarding port {dead} to pod billing-api-0" in text
    assert "connection refused" in text


@pytest.mark.parametrize(
    ("minor", "env"),
    [
        pytest.param(33, {}, id="kubectl-1.33-websocket-tunnel"),
        pytest.param(33, NO_WEBSOCKETS, id="kubectl-1.33-plain-spdy"),
    ],
)
async def test_idle_timeout_fault_drops_an_idle_kubectl_forward(
    tmp_path: Path, minor: int, env: dict[str, str]
) -> None:
    async with (
        http_backend() as port,
        # The session is open (and idle) from kubectl's start: the idle timeout must leave
        # time for curl to start on a busy machine, or curl meets a dropped forward.
        mini_api(tmp_path, minor=minor, idle_timeout=3.0) as api,
        kubectl_port_forward(api.kubeconfig, "pod/billing-api-0", port, env=env) as fwd,
    ):
        rc, _, err = await run_curl(f"http://127.0.0.1:{fwd.local_port}/")
        assert rc == 0, err
        async with asyncio.timeout(20):
            await fwd.process.wait()
        await wait_until(lambda: b"lost connection to pod" in fwd.stderr)
    assert fwd.process.returncode == 1
