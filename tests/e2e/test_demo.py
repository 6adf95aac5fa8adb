"""`localmesh demo`: its try-commands work pasted whole into a shell (the mesh's too: the
marked curl reaches the local process, the unmarked one a pod), a second demo is refused
before it starts a sandbox, with advice that fits the demo, and Ctrl-C puts the meshed
Service back as it was."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import pytest

from localmesh.cli.demo import MESH_END, MESH_TRY
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import UpProcess, cli_env, free_port, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

FIRST_LINE = "localmesh demo is up. Try:"
LAST_LINE = "Ctrl-C stops the demo and removes everything it set up."
MESH_FIRST = MESH_TRY
MESH_LAST = MESH_END
LOCAL_BODY = "served by your machine: GET /hello (version: demo)"
RESTORED = "mesh: left billing/billing-api; the Service is as it was before"
POD_ANSWER = re.compile(r'\{"pod": .*?"body_bytes": \d+\}')


def printed_block(stdout: list[str], first: str = FIRST_LINE, last: str = LAST_LINE) -> str:
    start = stdout.index(first) + 1
    end = stdout.index(last)
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

        # The mesh part: marked requests to billing-api's cluster IP reach the demo's local
        # process, unmarked ones a pod; `mesh list` shows the demo's mark.
        await demo.wait_for(
            lambda: MESH_LAST in demo.stdout or "mesh: not available" in demo.output,
            seconds=120,
            what="the demo's mesh commands",
        )
        mesh_block = printed_block(demo.stdout, MESH_FIRST, MESH_LAST)
        code, out = await paste_into_bash(mesh_block, up_runtime_dir)
        assert code == 0, f"{mesh_block}\n--- bash said\n{out}"
        assert LOCAL_BODY in out, f"{mesh_block}\n--- bash said\n{out}"
        pod = POD_ANSWER.search(out)
        assert pod is not None, f"{mesh_block}\n--- bash said\n{out}"
        assert out.index(LOCAL_BODY) < pod.start()  # the marked curl is the first one
        unmarked = json.loads(pod.group())
        assert unmarked["pod"].startswith("billing-api-"), unmarked
        assert "Version" not in unmarked["headers"], unmarked
        assert re.search(r"billing\s+billing-api\s+version: demo\s.*\slive\s", out), out

        block = printed_block(demo.stdout)
        assert "$EDITOR" not in block
        code, out = await paste_into_bash(block, up_runtime_dir)
        assert code == 0, f"{block}\n--- bash said\n{out}"
        assert '"path": "/hello"' in out or "/hello" in out, out
        assert "billing-api.localhost" in out  # `status` listed the demo's hosts
    finally:
        demo.signal(signal.SIGINT)
        assert await demo.wait_exit() == 0, demo.describe()
    # The clean-up ran before the sandbox stopped: the Service was compared with its copy
    # from before the mesh.
    assert RESTORED in demo.stdout, demo.describe()
