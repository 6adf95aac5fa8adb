"""`localmesh status` shows the `localmesh mesh` sessions of this machine: the real mesh
CLI against the sandbox, real curl through the shadow's tunnel, then the real status CLI.

The router is the real `localmesh agent router` with its Envoy; the requests here go to the
shadow pod directly, as the router sends a marked one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

import pytest
from aiohttp import web

from localmesh.cli.demo_mesh import serve_on_loopback
from localmesh.clustermesh import manifests as m
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.test_mesh_cli import local_app, shadow_ip, start_mesh
from tests.e2e.up_helpers import (
    LOCALMESH,
    CliResult,
    cli_env,
    curl,
    eventually,
    free_port,
    private_runtime_dir,
    run_cli,
    services_yaml,
    start_up,
)
from tests.integration.mesh_helpers import wait_managed_gone

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory
__all__ = ["local_app"]


def session_row(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("MESH SESSION")]
    assert starts, stdout
    at = starts[0]
    (row,) = lines[at + 1 :]
    return row.split()


async def test_status_shows_the_mesh_session_until_ctrl_c(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    proc, _ = await start_mesh(sandbox, local_app, tmp_path)
    try:
        # No `up` runs here: status says so (exit code as without sessions) and still
        # lists the session.
        async def listed() -> tuple[CliResult, list[str]] | None:
            shown = await run_cli(tmp_path, "status")
            row = session_row(shown.stdout)
            return (shown, row) if "connected," in row else None

        # The tunnel may cycle a connection under load: wait for it to be up, with a bound.
        shown, row = await eventually(listed, seconds=30, what="a connected session")
        assert shown.returncode == 1, shown.stdout + shown.stderr
        assert "localmesh: error:" in shown.stderr
        assert row[:6] == [
            "billing/billing-api",
            "version:",
            "dev",
            f"{local_app}:8080",
            "connected,",  # the tunnel is up and the router routes the mark
            "routed",
        ]
        assert row[-1] == str(proc.pid)
        before = int(row[6])

        ip = await shadow_ip(sandbox)

        async def marked() -> str | None:
            reply = await curl(f"http://{ip}:8080/orders", extra=["-H", "version: dev"])
            return reply.body if reply.status == 200 else None

        body = await eventually(marked, seconds=30, what="a marked request through the tunnel")
        assert body == "served locally /orders"

        async def served_more() -> dict[str, object] | None:
            out = await run_cli(tmp_path, "status", "--json")
            (session,) = json.loads(out.stdout)["mesh_sessions"]
            return session if int(session["served"]) > before else None

        session = await eventually(served_more, seconds=15, what="the served count to rise")
        assert session["tunnel"] == "connected, routed" and session["stale"] is False
        assert session["mark"] == "version: dev"
        assert session["namespace"] == "billing" and session["service"] == "billing-api"
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    gone = await run_cli(tmp_path, "status")
    assert "MESH SESSION" not in gone.stdout and "billing-api" not in gone.stdout
    assert gone.returncode == 1  # only the missing `up` instance now
    await wait_managed_gone(sandbox)


async def test_killed_mesh_session_is_shown_stale(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    proc, _ = await start_mesh(sandbox, local_app, tmp_path)
    proc.kill()  # no chance to remove its state file
    await proc.wait()
    shown = await run_cli(tmp_path, "status", "--json")
    assert shown.returncode != 0
    (session,) = json.loads(shown.stdout)["mesh_sessions"]
    assert session["stale"] is True and session["tunnel"] == "stale (process gone)"
    text = await run_cli(tmp_path, "status")
    assert "stale (process gone)" in text.stdout


async def session_status(runtime_dir: Path) -> tuple[int, dict[str, object]]:
    out = await run_cli(runtime_dir, "status", "--json")
    (session,) = json.loads(out.stdout)["mesh_sessions"]
    return out.returncode, session


async def test_status_follows_the_router_and_the_local_process(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """With a healthy `up` beside, the exit code of `status` is the mesh session's: 0 only
    while its marked requests are served here. The routing is re-asked of the router while
    `mesh` runs: no Ready router shows as `not routed (why)`."""
    runtime = private_runtime_dir(tmp_path)
    services = tmp_path / "services.yaml"
    users = {"host": "users-api.localhost", "namespace": "users", "service": "users-api"}
    services.write_text(services_yaml(free_port(), [{**users, "port_name": "grpc"}]))
    up = await start_up(runtime, services, sandbox.kubeconfig_path, "--no-edit-hosts")

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text="served locally")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    local = contextlib.AsyncExitStack()
    port = await local.enter_async_context(serve_on_loopback(app))
    proc, _ = await start_mesh(sandbox, port, runtime)

    async def shown(tunnel: str, code: int) -> dict[str, object] | None:
        returncode, session = await session_status(runtime)
        return session if session["tunnel"] == tunnel and returncode == code else None

    async def wait_shown(tunnel: str, code: int) -> None:
        await eventually(lambda: shown(tunnel, code), seconds=30, what=f"{tunnel!r}, exit {code}")

    try:
        await wait_shown("connected, routed", 0)
        # (A shadow the kubelet calls unready while its tunnel answers stays routed: the
        # router checks the shadow itself, tests/e2e/test_mesh_router_verify.py.)

        # The router pod replaced, and its successor not Ready: nothing routes the mark.
        router_labels = m.router_selector("billing-api")
        sandbox.faults.hold_unready("billing", router_labels)
        router = router_labels
        (old,) = sandbox.pods("billing", router)
        sandbox.faults.delete_pod("billing", old["metadata"]["name"])
        await wait_shown("connected, not routed (no Ready router pod)", 1)

        async def successor() -> str | None:
            pods = [p["metadata"]["name"] for p in sandbox.pods("billing", router)]
            return next((p for p in pods if p != old["metadata"]["name"]), None)

        new = await eventually(successor, seconds=30, what="a new router pod")
        sandbox.faults.set_ready("billing", new, True)
        await wait_shown("connected, routed", 0)  # asked of the new pod

        # The developer's process stops: marked requests get a 503, and status says so.
        await local.aclose()
        ip = await shadow_ip(sandbox)

        async def refused() -> bool:
            # Straight to the shadow (the router's Envoy turns this reset into its 503).
            reply = await curl(f"http://{ip}:8080/", extra=["-H", "version: dev"])
            return reply.status == 0

        await eventually(refused, seconds=30, what="the shadow to reset a marked request")
        not_answering = (
            f"connected, routed; local port {port} not answering (marked requests get 503)"
        )
        await wait_shown(not_answering, 1)
    finally:
        await local.aclose()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
        assert await up.stop() == 0, up.describe()
    assert proc.returncode == 0, err.decode()
    await wait_managed_gone(sandbox)


async def test_status_watch_shows_the_mesh_sessions(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    """`status --watch` shows the mesh sessions as `status` does; with no `up` running it
    says so and keeps showing them."""
    proc, _ = await start_mesh(sandbox, local_app, tmp_path)
    watch = await asyncio.create_subprocess_exec(
        str(LOCALMESH), "status", "--watch", "--interval", "0.5",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(tmp_path),
    )  # fmt: skip
    assert watch.stdout is not None
    blocks: list[list[str]] = []
    try:
        async with asyncio.timeout(60):
            while len(blocks) < 3:  # two complete blocks once the third one starts
                line = (await watch.stdout.readline()).decode()
                assert line, "status --watch ended early"
                if line.startswith("localmesh 'default': "):
                    blocks.append([])
                if blocks:
                    blocks[-1].append(line.rstrip("\n"))
    finally:
        watch.send_signal(signal.SIGINT)
        _, werr = await asyncio.wait_for(watch.communicate(), 30)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
    assert watch.returncode == 0, werr.decode()
    assert proc.returncode == 0, err.decode()
    for block in blocks[:2]:
        assert "Ctrl-C to stop" in block[0]
        assert block[2].startswith("MESH SESSION"), block
        row = block[3].split()
        assert row[:4] == ["billing/billing-api", "version:", "dev", f"{local_app}:8080"]
        assert row[-1] == str(proc.pid)
    await wait_managed_gone(sandbox)
