"""`localmesh up` and `localmesh demo` on a sandbox that runs as on macOS (only 127.0.0.1
binds; forced with `loopback="shared"` / LOCALMESH_SANDBOX_LOOPBACK=shared): requests
reach the pods through port-forwards, and the demo says why its mesh part is left out."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from localmesh.sandbox import Sandbox
from localmesh.sandbox.ips import LOOPBACK_ENV, SHARED
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    UpProcess,
    free_port,
    grpc_greet,
    http_get,
    seed_services,
    start_up,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    kubeconfig = tmp_path_factory.mktemp("shared-sandbox") / "kubeconfig"
    async with Sandbox.start(kubeconfig_path=kubeconfig, loopback=SHARED) as sb:
        yield sb


async def test_up_serves_a_shared_sandbox(
    shared_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(seed_services(port))
    up = await start_up(up_runtime_dir, services, shared_sandbox.kubeconfig_path, "--no-edit-hosts")
    try:
        reply = await http_get(port, "billing-api.localhost", "/hello")
        assert reply.status == 200, up.describe()
        answer = reply.json()
        (pod,) = shared_sandbox.service_pods("billing", "billing-api")
        assert (answer["pod"], answer["pod_ip"]) == (
            pod["metadata"]["name"],
            pod["status"]["podIP"],
        )
        assert answer["pod_ip"] != "127.0.0.1"
        greeted = await grpc_greet(port, "users-api.localhost")
        assert greeted.namespace == "users"
    finally:
        assert await up.stop() == 0, up.describe()


async def test_demo_on_a_machine_with_only_127_0_0_1(
    up_runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOOPBACK_ENV, SHARED)
    port = free_port()
    demo = await UpProcess.start(up_runtime_dir, "--port", str(port), command="demo")
    try:
        await demo.wait_for(
            lambda: any(line.startswith("mesh: not available") for line in demo.stdout),
            seconds=60,
            what="the demo to say its mesh part is not available",
        )
        (said,) = [line for line in demo.stdout if line.startswith("mesh: not available")]
        assert said.startswith(
            "mesh: not available on this machine: the mesh part needs an address per pod "
            "and this machine binds no loopback address but 127.0.0.1"
        ), said
        assert said.endswith("the rest of the demo keeps working")
        reply = await http_get(port, "billing-api.localhost", "/hello")
        assert reply.status == 200, demo.describe()
        assert reply.json()["pod"].startswith("billing-api-")
        greeted = await grpc_greet(port, "users-api.localhost")
        assert greeted.namespace == "users"
    finally:
        demo.signal(signal.SIGINT)
        assert await demo.wait_exit() == 0, demo.describe()
