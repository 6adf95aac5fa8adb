"""The in-cluster agents start without the heavy modules: the router pod's Python start-up
is most of a cold `mesh` start, and the shadow pod's is on every developer's `mesh` path.

Each agent runs as a real process with a probe in front of localmesh's own `main`: once
the agent serves (the router's /ready: its Envoy ACKed the first snapshot and listens;
the shadow's /healthz), the probe prints which heavy modules that process has loaded. The
router runs as the sandbox runs it: a pod of its own Deployment, with its ServiceAccount's
token, its RBAC and its Envoy child."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from pathlib import Path
from typing import Any

from localmesh.clustermesh import manifests as m
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.up_helpers import BIN, cli_env, eventually

sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

HEAVY = ("envoy_data_plane", "betterproto2", "pydantic", "kubernetes")
# `python -c PROBE <localmesh args>`: the agent in the main thread; a thread waits until it
# serves $PROBE_URL_PATH on its --health-port, then prints what the process has imported.
PROBE = f"""
import json, os, sys, threading, time, urllib.request
args = sys.argv[1:]
url = "http://%s:%s%s" % (
    os.environ["POD_IP"], args[args.index("--health-port") + 1], os.environ["PROBE_URL_PATH"]
)
def report():
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.05)
    else:
        print("PROBE " + json.dumps({{"serving": False}}), flush=True)
        return
    loaded = [name for name in {HEAVY!r} if name in sys.modules]
    print("PROBE " + json.dumps({{"serving": True, "loaded": loaded}}), flush=True)
threading.Thread(target=report, daemon=True).start()
from localmesh.cli.main import main
sys.exit(main(args))
"""


def probe_result(lines: list[str]) -> dict[str, Any] | None:
    for line in lines:
        if line.startswith("PROBE "):
            found: dict[str, Any] = json.loads(line.removeprefix("PROBE "))
            return found
    return None


def probed_router(namespace: str, service: str) -> list[dict[str, Any]]:
    """The router's ServiceAccount, RBAC and Deployment as `mesh` creates them, its command
    behind the probe."""
    deployment = m.router_deployment(
        namespace, service, m.DEFAULT_ROUTER_IMAGE, [m.RouterPort(8080, "http")]
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["localmesh", "agent", "router"]
    container["command"] = ["python", "-c", PROBE, *command[1:]]
    container["env"] = [*container["env"], {"name": "PROBE_URL_PATH", "value": "/ready"}]
    return [*m.router_rbac(namespace, service), deployment]


async def test_the_router_agent_serves_without_the_typed_bindings_or_the_client(
    sandbox: Sandbox,
) -> None:
    sandbox.apply(probed_router("billing", "billing-api"))
    selector = f"{m.COMPONENT_LABEL}=router"

    async def probed() -> dict[str, Any] | None:
        pods = sandbox.pods("billing", selector)
        if not pods:
            return None
        name = pods[-1]["metadata"]["name"]
        out = await sandbox_fixtures.kubectl(sandbox, "logs", "-n", "billing", name)
        return probe_result(out.stdout.splitlines()) if out.returncode == 0 else None

    outcome = await eventually(probed, seconds=120, what="the router's probe line")
    assert outcome == {"serving": True, "loaded": []}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


async def test_the_shadow_agent_serves_without_the_heavy_modules(tmp_path: Path) -> None:
    port, health = free_ports(2)
    secret = tmp_path / "secret"
    secret.write_text("ab" * 32)
    env = cli_env(tmp_path) | {
        "POD_IP": "127.0.0.1",
        "PROBE_URL_PATH": "/healthz",
    }
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "python"), "-c", PROBE, "agent", "shadow", "--ports", str(port),
        "--tunnel-port", "0", "--health-port", str(health), "--secret-file", str(secret),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(120):
            line = (await proc.stdout.readline()).decode()
        assert probe_result([line]) == {"serving": True, "loaded": []}, line
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await proc.communicate()
