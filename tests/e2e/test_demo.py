"""`localmesh demo`: its try-commands work pasted whole into a shell, and a second demo is
refused before it starts a sandbox, with advice that fits the demo."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import UpProcess, cli_env, free_port, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

FIRST_LINE = "localmesh demo is up. Try:"
LAST_LINE = "Ctrl-C stops the demo and removes everything it set up."


def printed_block(stdout: list[str]) -> str:
    start = stdout.index(FIRST_LINE) + 1
    end = stdout.index(LAST_LINE)
    return "\n".join(line.removeprefix("  ") for line in stdout[start:end]).strip()


async def paste_into_bash(block: str, runtime_dir: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-e",  # any line that fails fails the paste
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=cli_env(runtime_dir),
    )
    out, _ = await asyncio.wait_for(proc.communicate(block.encode() + b"\n"), 120)
    return proc.returncode or 0, out.decode(errors="replace")


async def test_demo_commands_paste_whole_and_a_second_demo_is_refused_early(
    up_runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDITOR", raising=False)
    monkeypatch.delenv("VISUAL", raising=False)
    port = free_port()
    demo = await UpProcess.start(up_runtime_dir, "--port", str(port), command="demo")
    try:
        await demo.wait_for(
            lambda: LAST_LINE in demo.stdout, seconds=40, what="the demo's try-commands"
        )
        second = await run_cli(up_runtime_dir, "demo", "--port", str(free_port()))
        assert second.returncode == 1, second
        assert "sandbox cluster" not in second.stdout  # refused before starting one
        assert second.stderr.startswith(
            f"localmesh: error: a localmesh demo is already running (pid {demo.proc.pid})"
        ), second.stderr
        assert "status --name demo" in second.stderr
        assert "down --name demo" in second.stderr

        block = printed_block(demo.stdout)
        assert "$EDITOR" not in block
        code, out = await paste_into_bash(block, up_runtime_dir)
        assert code == 0, f"{block}\n--- bash said\n{out}"
        assert '"path": "/hello"' in out or "/hello" in out, out
        assert "billing-api.localhost" in out  # `status` listed the demo's hosts
    finally:
        demo.signal(signal.SIGINT)
        assert await demo.wait_exit() == 0, demo.describe()
