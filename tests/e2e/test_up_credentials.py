"""`localmesh up` while the cluster's credentials change under it: the API server comes
back with a new CA and token on the same kubeconfig path and port."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from localmesh.sandbox import Sandbox, Scenario
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    Load,
    UpProcess,
    eventually,
    free_port,
    http_get,
    services_yaml,
    start_up,
    status_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

SCENARIO = """
namespaces: [web]
deployments:
  - {name: echo, namespace: web, workload: http-echo, replicas: 2,
     ports: [{name: http, containerPort: 8080}]}
services:
  - {name: echo, namespace: web, selector: {app: echo},
     ports: [{name: http, port: 8080, targetPort: http}]}
"""
HOST = "echo.localhost"
ENTRIES: list[dict[str, object]] = [
    {"host": HOST, "namespace": "web", "service": "echo", "port_name": "http"},
]


@pytest_asyncio.fixture(loop_scope="module")
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text(SCENARIO)
    kubeconfig = tmp_path / "kubeconfig"
    async with Sandbox.start(Scenario.load(scenario_file), kubeconfig_path=kubeconfig) as sb:
        yield sb


async def _status(runtime_dir: Path) -> dict[str, Any]:
    _, status = await status_json(runtime_dir)
    assert isinstance(status, dict)
    return status


async def _up(sandbox: Sandbox, runtime_dir: Path, tmp_path: Path) -> tuple[UpProcess, int]:
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(services_yaml(port, ENTRIES))
    up = await start_up(runtime_dir, services, sandbox.kubeconfig_path, "--no-edit-hosts")
    return up, port


async def test_api_server_back_with_new_ca_and_token_is_recovered(
    sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    up, port = await _up(sandbox, up_runtime_dir, tmp_path)
    load = Load(port, HOST)
    try:
        load.start()
        await load.wait_ok(20, seconds=30)
        old_kubeconfig = sandbox.kubeconfig_path.read_bytes()

        await sandbox.apiserver.stop()
        sandbox.rotate_credentials()
        assert sandbox.kubeconfig_path.read_bytes() != old_kubeconfig

        async def outage_shown() -> list[str] | None:
            status = await _status(up_runtime_dir)
            problems = [p for p in status["problems"] if "watch" in p]
            return problems if not status["healthy"] and problems else None

        problems = await eventually(outage_shown, seconds=30, what="status to show the outage")
        assert any("cannot reach" in p for p in problems), problems

        await sandbox.apiserver.start()

        async def healthy_again() -> bool:
            status = await _status(up_runtime_dir)
            return bool(status["healthy"])

        await eventually(healthy_again, seconds=60, what="status to be healthy again")
        await load.wait_ok(20, seconds=60)
        failed = len(load.failures)
        await load.wait_ok(60, seconds=60)
        assert len(load.failures) == failed, load.failures[failed:]
    finally:
        await load.stop()
        assert await up.stop() == 0, up.describe()
    reloads = [e for e in up.logs() if e.get("event") == "kubeconfig re-read: new credentials"]
    assert reloads, up.describe()
    # Failures during the outage are summarised, not logged once per request.
    per_request = [e for e in up.logs() if str(e.get("event", "")).startswith("port-forward")]
    assert len(per_request) < 40, (len(per_request), len(load.failures))


EXEC_SCENARIO = """
namespaces: [web, r0, r1, r2]
deployments:
  - {name: echo, namespace: web, workload: http-echo, replicas: 2,
     ports: [{name: http, containerPort: 8080}]}
  - {name: late, namespace: r0, workload: http-echo, ports: [{name: http, containerPort: 8080}]}
  - {name: late, namespace: r1, workload: http-echo, ports: [{name: http, containerPort: 8080}]}
  - {name: late, namespace: r2, workload: http-echo, ports: [{name: http, containerPort: 8080}]}
services:
  - {name: echo, namespace: web, selector: {app: echo},
     ports: [{name: http, port: 8080, targetPort: http}]}
  - {name: late, namespace: r0, selector: {app: late}, ports: [{name: http, port: 8080}]}
  - {name: late, namespace: r1, selector: {app: late}, ports: [{name: http, port: 8080}]}
  - {name: late, namespace: r2, selector: {app: late}, ports: [{name: http, port: 8080}]}
"""
TOKEN_SECONDS = 8.0
ROUNDS = 3


def _late(round_: int) -> dict[str, object]:
    return {
        "host": f"late{round_}.localhost",
        "namespace": f"r{round_}",
        "service": "late",
        "port_name": "http",
    }


def pod_names(sb: Sandbox, namespace: str) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in sb.pods(namespace)
        if not p["metadata"].get("deletionTimestamp")
    }


async def _keepalive_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
) -> dict[str, Any]:
    """One request on an open HTTP/1.1 connection; the echo's JSON reply."""
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    assert head.startswith("HTTP/1.1 200"), head
    length = next(
        int(line.split(":", 1)[1])
        for line in head.split("\r\n")
        if line.lower().startswith("content-length:")
    )
    reply: dict[str, Any] = json.loads(await reader.readexactly(length))
    return reply


async def test_exec_plugin_tokens_expire_under_load_without_a_failed_request(
    up_runtime_dir: Path, tmp_path: Path
) -> None:
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text(EXEC_SCENARIO)
    async with Sandbox.start(
        Scenario.load(scenario_file),
        kubeconfig_path=tmp_path / "kubeconfig",
        exec_token_seconds=TOKEN_SECONDS,
    ) as sb:
        creds = sb.exec_credentials
        assert creds is not None
        port = free_port()
        services = tmp_path / "services.yaml"
        entries = list(ENTRIES)
        services.write_text(services_yaml(port, entries))
        up = await start_up(
            up_runtime_dir, services, sb.kubeconfig_path, "--no-edit-hosts", "--watch"
        )
        load = Load(port, HOST)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert (await _keepalive_get(reader, writer, HOST))["pod"]
            load.start()
            for round_ in range(ROUNDS):
                # Every token localmesh has used so far expires...
                expired = creds.latest_expiry

                async def past(moment: float = expired) -> bool:
                    return time.time() > moment + 1

                await eventually(past, seconds=3 * TOKEN_SECONDS, what="the tokens to expire")
                # ...then it needs new ones: a new watch (a namespace not followed yet) and
                # new port-forward sessions (a replacement pod, the new entry's pod).
                victim = sorted(pod_names(sb, "web"))[0]
                sb.faults.delete_pod("web", victim, grace=1)
                entries.append(_late(round_))
                services.write_text(services_yaml(port, entries))

                async def late_served(host: str = f"late{round_}.localhost") -> bool:
                    reply = await http_get(port, host)
                    return reply.status == 200

                await eventually(late_served, seconds=60, what=f"the entry of round {round_}")

                async def replaced(gone: str = victim) -> bool:
                    _, status = await status_json(up_runtime_dir)
                    echo = next(h for h in status["hosts"] if h["host"] == HOST)
                    served = {p["name"] for p in echo["pods"]}
                    return len(served) == 2 and gone not in served

                await eventually(replaced, seconds=60, what=f"{victim} replaced")
                await load.wait_ok(10, seconds=60)
                assert creds.latest_expiry > expired, "no new token was used"
            # The connection opened before the first expiry still carries requests.
            assert (await _keepalive_get(reader, writer, HOST))["pod"]
        finally:
            writer.close()
            await load.stop()
            assert await up.stop() == 0, up.describe()
        assert load.failures == [], load.failures[:5]
        assert creds.expired_refused == 0, "localmesh presented an expired token"
