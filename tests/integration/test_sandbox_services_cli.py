"""`localmesh sandbox up` (its own process, on uvloop): kubectl shows the frontend's cluster
IP, and curl through it reaches billing-api with the `version` mark."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


async def run(*args: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{args[0]} failed: {err.decode()}"
    return out.decode()


async def test_curl_through_the_frontend_cluster_ip_of_sandbox_up(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "localmesh",
        "sandbox",
        "up",
        "--kubeconfig",
        str(kubeconfig),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "sandbox up exited before printing the kubeconfig"
            if line.startswith(b"export KUBECONFIG="):
                break
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBECACHEDIR": str(tmp_path / "kc")}
        jsonpath = "-o=jsonpath={.spec.clusterIP}"
        ip = await run("kubectl", "get", "svc", "frontend", "-n", "users", jsonpath, env=env)
        out = await run(
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            "version: dev",
            f"http://{ip}:8080/pay",
            env=env,
        )
        answer = json.loads(out)
        assert answer["namespace"] == "users" and answer["pod"].startswith("frontend-")
        billing = answer["downstream"]["body"]
        assert billing["namespace"] == "billing" and billing["pod"].startswith("billing-api-")
        assert billing["path"] == "/pay" and billing["headers"]["version"] == "dev"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
