"""The demo's mesh part on the sandbox: the real router and tunnel serve a marked request
from this machine's process; cancelling it puts the Service back (checked with kubectl,
not only by the demo's own comparison); when it cannot start, it says why in one line and
returns, so the rest of the demo keeps serving."""

from __future__ import annotations

import asyncio
import shlex
import subprocess

import pytest

from localmesh.cli import demo
from localmesh.cli.demo_mesh import LOCAL_ANSWER, DemoMesh
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.integration.mesh_helpers import service_json, wait_managed_gone

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory
kubectl = sandbox_fixtures.kubectl


async def test_marked_request_reaches_this_machine_and_cancel_restores_the_service(
    sandbox: Sandbox,
) -> None:
    before = await service_json(sandbox)
    commands: list[str] = []
    said: list[str] = []
    ready = asyncio.Event()

    def on_ready(text: str) -> None:
        commands.append(text)
        ready.set()

    mesh = DemoMesh(sandbox.kubeconfig_path, "localmesh", on_ready, said.append)
    task = asyncio.create_task(mesh.run())
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiting}, timeout=90, return_when=asyncio.FIRST_COMPLETED)
    assert ready.is_set(), task.exception() if task.done() else "not ready within 90 s"

    marked = next(line for line in commands[0].splitlines() if line.startswith("curl -H"))
    reply = await asyncio.to_thread(
        subprocess.run, [*shlex.split(marked), "-s"], capture_output=True, text=True
    )
    assert reply.stdout.startswith(LOCAL_ANSWER), reply

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert said == ["mesh: left billing/billing-api; the Service is as it was before"]
    assert await service_json(sandbox) == before
    await wait_managed_gone(sandbox)


async def test_a_mesh_that_cannot_start_says_why_and_returns(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    (await kubectl(sandbox, "delete", "service", "billing-api", "-n", "billing")).check()
    await demo._mesh_part(sandbox.kubeconfig_path, sandbox.loopback)  # returns: `up` keeps serving
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (
        "mesh: not available (the sandbox has no Service billing/billing-api); "
        "the rest of the demo keeps working"
    )
