"""Idle upstream connections close after a bounded idle time, and the forwarder
connections and port-forward streams behind them go too: after a burst of keep-alive
clients, `up`'s file descriptors and status counts return to where they were."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from localmesh.sandbox import Sandbox, Scenario
from tests.e2e.conftest import UP_LOOP
from tests.e2e.test_up_credentials import ENTRIES, HOST, SCENARIO
from tests.e2e.up_helpers import eventually, free_port, services_yaml, start_up, status_json

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

CLIENTS = 60


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def active_connections(runtime_dir: Path) -> int:
    _, status = await status_json(runtime_dir)
    return sum(p["active_connections"] for h in status["hosts"] for p in h["pods"])


async def _client(port: int, opened: asyncio.Event, release: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        opened.set()
        await release.wait()  # keep-alive: all of them open at once
    finally:
        writer.close()


async def test_idle_upstream_connections_are_closed_after_a_burst(
    up_runtime_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALMESH_UPSTREAM_IDLE_TIMEOUT", "1")
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text(SCENARIO)
    async with Sandbox.start(
        Scenario.load(scenario_file), kubeconfig_path=tmp_path / "kubeconfig"
    ) as sb:
        port = free_port()
        services = tmp_path / "services.yaml"
        services.write_text(services_yaml(port, ENTRIES))
        up = await start_up(up_runtime_dir, services, sb.kubeconfig_path, "--no-edit-hosts")
        try:
            pid = up.proc.pid
            baseline = open_fds(pid)
            release = asyncio.Event()
            events = [asyncio.Event() for _ in range(CLIENTS)]
            clients = [asyncio.create_task(_client(port, e, release)) for e in events]
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
                assert open_fds(pid) > baseline + CLIENTS // 2  # upstream connections held
                assert await active_connections(up_runtime_dir) > CLIENTS // 2
            finally:
                release.set()
                await asyncio.gather(*clients, return_exceptions=True)

            async def back_to_baseline() -> bool:
                idle = await active_connections(up_runtime_dir) == 0
                return idle and open_fds(pid) <= baseline + 4

            await eventually(back_to_baseline, seconds=30, what="fds back to the baseline")
        finally:
            assert await up.stop() == 0, up.describe()
