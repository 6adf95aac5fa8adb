"""One replica replaced again and again under load: while the replacement is not ready,
the terminating pod that still serves is used (as kube-proxy does), so nothing fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmesh.sandbox import Sandbox, Scenario
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    Load,
    eventually,
    free_port,
    services_yaml,
    start_up,
    status_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

SCENARIO = """
namespaces: [solo]
deployments:
  - {name: one, namespace: solo, workload: http-echo, replicas: 1,
     ports: [{name: http, containerPort: 8080}]}
services:
  - {name: one, namespace: solo, selector: {app: one},
     ports: [{name: http, port: 8080, targetPort: http}]}
"""
HOST = "one.localhost"
ENTRIES: list[dict[str, object]] = [
    {"host": HOST, "namespace": "solo", "service": "one", "port_name": "http"},
]
DELETES = 20


def live_pods(sb: Sandbox) -> set[str]:
    return {
        p["metadata"]["name"] for p in sb.pods("solo") if not p["metadata"].get("deletionTimestamp")
    }


async def test_one_replica_graceful_deletes_under_load_lose_no_request(
    up_runtime_dir: Path, tmp_path: Path
) -> None:
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text(SCENARIO)
    async with Sandbox.start(
        Scenario.load(scenario_file), kubeconfig_path=tmp_path / "kubeconfig"
    ) as sb:
        # A deleted pod keeps serving for a while (its endpoint: serving, terminating);
        # the replacement takes a moment to become ready.
        sb.faults.termination_delay = 4.0
        sb.faults.ready_delay = 0.5
        port = free_port()
        services = tmp_path / "services.yaml"
        services.write_text(services_yaml(port, ENTRIES))
        up = await start_up(up_runtime_dir, services, sb.kubeconfig_path, "--no-edit-hosts")
        load = Load(port, HOST)
        try:
            load.start()
            await load.wait_ok(10, seconds=30)
            for _ in range(DELETES):
                (old,) = live_pods(sb)
                sb.faults.delete_pod("solo", old, grace=30)

                async def replacement(gone: str = old) -> str | None:
                    pods = live_pods(sb) - {gone}
                    ready = [p for p in pods if sb.ready_pod("solo", p) is not None]
                    return ready[0] if ready else None

                new = await eventually(replacement, seconds=30, what=f"{old}'s replacement")

                async def served(pod: str = new) -> bool:
                    _, status = await status_json(up_runtime_dir)
                    host = next(h for h in status["hosts"] if h["host"] == HOST)
                    return [p["name"] for p in host["pods"]] == [pod]

                await eventually(served, seconds=30, what=f"{new} served")
                await load.wait_ok(3, seconds=30)
        finally:
            await load.stop()
            assert await up.stop() == 0, up.describe()
        assert load.failures == [], (len(load.failures), load.failures[:5])
        assert load.ok > DELETES * 3
