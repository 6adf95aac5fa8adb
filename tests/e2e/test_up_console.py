"""What a real `up` prints on stderr, start to Ctrl-C: localmesh's own lines, Envoy's only
when they matter (or all at --log-level debug), nothing raw from gRPC's C core, and one
closing line that says what was undone."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from localmesh.sandbox import Sandbox
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import UpProcess, free_port, routed_to, seed_services, start_up

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]


async def run_until_ctrl_c(
    sandbox: Sandbox, runtime_dir: Path, tmp_path: Path, *args: str
) -> tuple[UpProcess, Path]:
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(seed_services(port))
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.1 localhost\n")
    up = await start_up(
        runtime_dir, services, sandbox.kubeconfig_path, "--hosts-file", hosts_file, *args
    )
    try:
        assert await routed_to(port, "billing-api.localhost", "billing")
    finally:
        up.signal(signal.SIGINT)
        code = await up.wait_exit()
    assert code == 0, up.describe()
    return up, hosts_file


def parsed_stderr(up: UpProcess) -> list[dict[str, object]]:
    """Every stderr line, which must each be one JSON object (`--log-format json`)."""
    entries = []
    for line in up.stderr:
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a stderr line is not JSON: {line!r}\n{up.describe()}") from None
    return entries


async def test_a_clean_run_shows_no_envoy_line_and_ends_with_what_was_undone(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    up, hosts_file = await run_until_ctrl_c(up_sandbox, up_runtime_dir, tmp_path)
    entries = parsed_stderr(up)
    assert not any("fork_posix" in line for line in up.stderr)
    envoy_lines = [e for e in entries if "envoy" in e]
    assert envoy_lines == [], envoy_lines
    warnings = [e for e in entries if e["level"] in ("warning", "error", "critical")]
    assert warnings == [], warnings
    last = up.stdout[-1]
    assert last.startswith("stopped: "), up.describe()
    assert "Envoy stopped" in last
    assert "port-forwards of 3 entries closed" in last
    assert f"{hosts_file} entries removed" in last
    assert "runtime files removed" in last
    assert len([line for line in up.stdout if line.startswith("stopped")]) == 1


async def test_debug_shows_envoys_own_lines(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    up, _ = await run_until_ctrl_c(up_sandbox, up_runtime_dir, tmp_path, "--log-level", "debug")
    entries = parsed_stderr(up)
    events = {e["event"] for e in entries if "envoy" in e}
    assert "starting main dispatch loop" in events, up.describe()
    assert "caught ENVOY_SIGTERM" in events
    assert all(e["level"] == "debug" for e in entries if "envoy" in e)
