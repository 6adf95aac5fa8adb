"""`localmesh sandbox up` in a real process: prints the kubeconfig, serves kubectl,
stops cleanly on SIGTERM and removes what it wrote."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCENARIO = """
namespaces: [shop]
deployments:
  - {name: cart, namespace: shop, workload: http-echo, replicas: 2,
     ports: [{name: http, containerPort: 8080}]}
services:
  - name: cart
    namespace: shop
    selector: {app: cart}
    ports: [{name: http, port: 80, targetPort: http}]
  - name: cart-headless
    namespace: shop
    clusterIP: None
    selector: {app: cart}
    ports: [{name: http, port: 8080}]
  - name: legacy
    namespace: shop
    ports: [{name: http, port: 80}]
    endpoints: [{addresses: [127.0.0.1], ports: [{name: http, port: 8080}]}]
"""


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_sandbox_up_serves_until_sigterm(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    kubeconfig = tmp_path / "kube" / "config"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "localmesh",
        "sandbox",
        "up",
        "--scenario",
        str(scenario),
        "--kubeconfig",
        str(kubeconfig),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        while not lines or not lines[-1].startswith("export KUBECONFIG="):
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "sandbox up exited before printing the kubeconfig"
            lines.append(line.decode().strip())
        assert lines[-1] == f"export KUBECONFIG={kubeconfig}"
        assert f"kubeconfig: {kubeconfig}" in lines
        assert kubeconfig.exists() and (kubeconfig.stat().st_mode & 0o777) == 0o600
        # A private discovery cache: kubectl caches per host:port across servers.
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBECACHEDIR": str(tmp_path / "kc")}
        code, out, err = await run("kubectl", "get", "svc", "-n", "shop", env=env)
        assert code == 0, err
        rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
        assert rows["cart-headless"][2] == "None"
        assert rows["cart"][4] == "80/TCP"
        code, out, err = await run(
            "kubectl", "get", "endpoints", "-n", "shop", "legacy", "cart-headless", env=env
        )
        assert code == 0, err
        legacy = next(line for line in out.splitlines() if line.startswith("legacy"))
        assert "127.0.0.1:8080" in legacy
        headless = next(line for line in out.splitlines() if line.startswith("cart-headless"))
        assert headless.count(":8080") == 2
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
    assert not kubeconfig.exists()


async def test_sandbox_up_reports_a_bad_scenario(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("deployments:\n  - {name: x, workload: nginx}\n")
    code, _, err = await run(
        sys.executable, "-m", "localmesh", "sandbox", "up", "--scenario", str(scenario)
    )
    assert code == 2
    assert "deployments[0].workload" in err and "nginx" in err
    assert "Traceback" not in err


async def test_sandbox_up_reports_a_taken_port() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run(
            sys.executable, "-m", "localmesh", "sandbox", "up", "--port", str(port)
        )
    assert code == 2, out
    assert "cannot start the sandbox API server" in err and "address already in use" in err
    assert "Traceback" not in err
