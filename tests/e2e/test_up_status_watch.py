"""`localmesh status --watch` against a running `up`: refreshed blocks on a non-terminal,
in-place redraws on a terminal, and a clean exit on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from localmesh.sandbox import Sandbox
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    LOCALMESH,
    UpProcess,
    cli_env,
    free_port,
    http_get,
    run_cli,
    seed_services,
    start_up,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

HOSTS = ("users-api.localhost", "billing-api.localhost", "admin.localhost")


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


async def test_watch_on_a_pipe_prints_a_block_per_refresh_until_ctrl_c(
    mesh: int, up_runtime_dir: Path
) -> None:
    assert (await http_get(mesh, "billing-api.localhost")).status == 200
    proc = await asyncio.create_subprocess_exec(
        str(LOCALMESH), "status", "--watch", "--interval", "0.5",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(up_runtime_dir),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    blocks: list[list[str]] = []
    try:
        async with asyncio.timeout(60):
            while len(blocks) < 3:  # two complete blocks once the third one starts
                line = (await proc.stdout.readline()).decode()
                assert line, "status --watch ended early"
                if line.startswith("localmesh 'default' (pid "):
                    blocks.append([])
                if blocks:
                    blocks[-1].append(line.rstrip("\n"))
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert err.decode() == ""
    for block in blocks[:2]:
        assert "healthy" in block[0] and "Ctrl-C to stop" in block[0]
        assert block[1].split()[:3] == ["HOST", "PODS", "REQ/S"]
        rows = {line.split()[0]: line.split()[1:] for line in block[2:] if line}
        assert set(rows) == set(HOSTS), block
        assert rows["billing-api.localhost"][0] == "1/1"
        assert "\x1b" not in "\n".join(block)  # no terminal codes in a pipe


async def test_watch_on_a_terminal_redraws_in_place(mesh: int, up_runtime_dir: Path) -> None:
    leader, follower = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        str(LOCALMESH), "status", "--watch", "--interval", "0.5",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=follower,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(up_runtime_dir),
    )  # fmt: skip
    os.close(follower)
    seen = b""
    try:
        async with asyncio.timeout(60):
            while seen.count(b"\x1b[H\x1b[2J") < 2:
                seen += await asyncio.to_thread(os.read, leader, 4096)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        os.close(leader)
    assert proc.returncode == 0, err.decode()
    first = seen.split(b"\x1b[H\x1b[2J")[1].decode()
    assert first.startswith("localmesh 'default' (pid ") and "billing-api.localhost" in first


async def test_watch_with_json_is_a_usage_error(up_runtime_dir: Path) -> None:
    result = await run_cli(up_runtime_dir, "status", "--watch", "--json")
    assert result.returncode == 2
    assert "--watch shows a table" in result.stderr and "Traceback" not in result.stderr
