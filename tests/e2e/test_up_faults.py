"""`localmesh up` through failures: pods deleted under load, Envoy killed."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from localmesh.api.sandbox.v1 import greeter_pb2, greeter_pb2_grpc
from localmesh.sandbox import Sandbox, Scenario
from tests import sandbox_fixtures
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    Load,
    UpProcess,
    envoy_pid,
    eventually,
    free_port,
    pid_alive,
    routed_to,
    services_yaml,
    start_up,
    status_is,
    status_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

SCENARIO = """
namespaces: [billing, admin, users]
deployments:
  - {name: users-api, namespace: users, workload: grpc-greeter, replicas: 2,
     ports: [{name: grpc, containerPort: 50051}]}
  - {name: billing-api, namespace: billing, workload: http-echo, replicas: 2,
     ports: [{name: http, containerPort: 8080}]}
  - {name: admin-web, namespace: admin, workload: http-echo,
     ports: [{containerPort: 8080}]}
services:
  - {name: users-api, namespace: users, selector: {app: users-api},
     ports: [{name: grpc, port: 50051, targetPort: grpc}]}
  - {name: billing-api, namespace: billing, selector: {app: billing-api},
     ports: [{name: http, port: 8080, targetPort: http}]}
  - {name: admin-web, namespace: admin, selector: {app: admin-web},
     ports: [{port: 8080, targetPort: 8080}]}
"""
ENTRIES: list[dict[str, object]] = [
    {"host": "billing-api.localhost", "namespace": "billing", "service": "billing-api",
     "port_name": "http"},
    {"host": "admin.localhost", "namespace": "admin", "service": "admin-web", "port": 8080},
    {"host": "users-api.localhost", "namespace": "users", "service": "users-api",
     "port_name": "grpc", "type": "grpc"},
]  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def replicas_sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    scenario_file = tmp_path_factory.mktemp("up-faults") / "scenario.yaml"
    scenario_file.write_text(SCENARIO)
    kubeconfig = scenario_file.with_name("kubeconfig")
    async with Sandbox.start(Scenario.load(scenario_file), kubeconfig_path=kubeconfig) as sb:
        yield sb


@pytest_asyncio.fixture(loop_scope="module")
async def mesh(
    replicas_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> AsyncIterator[tuple[UpProcess, int]]:
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(services_yaml(port, ENTRIES))
    up = await start_up(
        up_runtime_dir, services, replicas_sandbox.kubeconfig_path, "--no-edit-hosts"
    )
    try:
        yield up, port
    finally:
        assert await up.stop() == 0, up.describe()


def pod_names(sb: Sandbox, namespace: str) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in sb.pods(namespace)
        if not p["metadata"].get("deletionTimestamp")
    }


async def served_pods(runtime_dir: Path, host: str) -> set[str]:
    _, status = await status_json(runtime_dir)
    entry = next(h for h in status["hosts"] if h["host"] == host)
    return {p["name"] for p in entry["pods"]}


async def test_pod_deletion_with_two_replicas_loses_no_request(
    replicas_sandbox: Sandbox, mesh: tuple[UpProcess, int], up_runtime_dir: Path
) -> None:
    sb = replicas_sandbox
    _, port = mesh
    before = pod_names(sb, "billing")
    assert len(before) == 2
    load = Load(port, "billing-api.localhost")
    load.start(workers=3)
    try:
        await load.wait_ok(10)
        victim = sorted(before)[0]
        deleted = await sandbox_fixtures.kubectl(
            sb, "delete", "pod", "-n", "billing", victim, "--wait=false"
        )
        deleted.check()

        async def replaced() -> set[str] | None:
            now = pod_names(sb, "billing")
            new = now - before
            ready = {p for p in new if sb.ready_pod("billing", p)}
            return ready if len(now) == 2 and ready else None

        (replacement,) = await eventually(replaced, seconds=15, what="a Ready replacement pod")

        async def forwarded() -> bool:
            return await served_pods(up_runtime_dir, "billing-api.localhost") == (
                before - {victim}
            ) | {replacement}

        await eventually(forwarded, seconds=10, what="the replacement to be forwarded")

        async def reaches_replacement() -> bool:
            return replacement in load.pods

        await eventually(reaches_replacement, seconds=10, what="requests on the replacement")
        await load.wait_ok(10)
    finally:
        await load.stop()
    assert load.failures == [], f"{len(load.failures)} failed of {load.ok + len(load.failures)}"
    assert load.ok >= 20


async def test_pod_deletion_with_two_replicas_loses_no_grpc_call(
    replicas_sandbox: Sandbox, mesh: tuple[UpProcess, int], up_runtime_dir: Path
) -> None:
    sb = replicas_sandbox
    _, port = mesh
    before = pod_names(sb, "users")
    assert len(before) == 2
    ok: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()
    options = [("grpc.default_authority", "users-api.localhost")]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)  # type: ignore[no-untyped-call]

        async def caller() -> None:
            while not stop.is_set():
                try:
                    reply = await stub.SayHello(greeter_pb2.HelloRequest(name="e2e"), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")
                else:
                    ok.append(reply.pod)

        callers = [asyncio.create_task(caller(), name=f"grpc caller {i}") for i in range(4)]
        try:

            async def calls(n: int) -> bool:
                return len(ok) >= n

            await eventually(lambda: calls(20), seconds=10, what="20 good calls")
            victim = sorted(before)[0]
            # As `kubectl delete pod` does: a grace period, during which the pod (now
            # unready) still answers what reaches it.
            sb.faults.termination_delay = 0.5
            sb.faults.delete_pod("users", victim, grace=1)
            replacement = await eventually(
                lambda: _ready_new_pod(sb, "users", before),
                seconds=15,
                what="a Ready replacement",
            )

            async def reaches_replacement() -> bool:
                return replacement in ok

            await eventually(reaches_replacement, seconds=10, what="calls on the replacement")
            seen = len(ok)
            await eventually(lambda: calls(seen + 20), seconds=10, what="20 more good calls")
        finally:
            sb.faults.termination_delay = 0.0
            stop.set()
            await asyncio.gather(*callers)
    assert failures == [], f"{len(failures)} failed of {len(ok) + len(failures)}: {failures[:5]}"


async def _ready_new_pod(sb: Sandbox, namespace: str, before: set[str]) -> str | None:
    for name in pod_names(sb, namespace) - before:
        if sb.ready_pod(namespace, name):
            return name
    return None


async def test_one_replica_traffic_returns_once_the_replacement_is_ready(
    replicas_sandbox: Sandbox, mesh: tuple[UpProcess, int], up_runtime_dir: Path
) -> None:
    sb = replicas_sandbox
    _, port = mesh
    (old,) = pod_names(sb, "admin")
    assert await routed_to(port, "admin.localhost", "admin") == old
    sb.faults.ready_delay = 1.0  # a replacement that takes a moment to become Ready
    try:
        sb.faults.delete_pod("admin", old)

        async def new_pod() -> str | None:
            pods = pod_names(sb, "admin") - {old}
            return next(iter(pods), None)

        replacement = await eventually(new_pod, seconds=10, what="a replacement pod")
        await sb.wait_for(
            lambda: sb.ready_pod("admin", replacement) is not None,
            10,
            f"{replacement} to be Ready",
        )
        ready_at = asyncio.get_running_loop().time()
        answered = await eventually(
            lambda: routed_to(port, "admin.localhost", "admin"),
            seconds=10,
            what="traffic to return",
        )
        returned_after = asyncio.get_running_loop().time() - ready_at
    finally:
        sb.faults.ready_delay = 0.0
    assert answered == replacement
    assert returned_after < 5.0, returned_after
    _, status = await status_json(up_runtime_dir)
    admin = next(h for h in status["hosts"] if h["host"] == "admin.localhost")
    assert [p["name"] for p in admin["pods"]] == [replacement]
    assert admin["last_reconnect"] and old in admin["last_reconnect_reason"], admin


async def test_unready_pod_makes_status_unhealthy_until_ready_again(
    replicas_sandbox: Sandbox, mesh: tuple[UpProcess, int], up_runtime_dir: Path
) -> None:
    sb = replicas_sandbox
    _, port = mesh
    (pod,) = pod_names(sb, "admin")
    sb.faults.set_ready("admin", pod, False)
    try:
        await eventually(
            lambda: status_is(port, "admin.localhost", 503),
            seconds=10,
            what="503 without a ready pod",
        )
        code, status = await status_json(up_runtime_dir)
        admin = next(h for h in status["hosts"] if h["host"] == "admin.localhost")
        assert code != 0 and admin["pods"] == [], admin
        assert await routed_to(port, "billing-api.localhost", "billing")
    finally:
        sb.faults.set_ready("admin", pod, None)
    assert (
        await eventually(
            lambda: routed_to(port, "admin.localhost", "admin"),
            seconds=10,
            what="traffic once the pod is ready again",
        )
        == pod
    )

    async def healthy() -> bool:
        return (await status_json(up_runtime_dir))[0] == 0

    await eventually(healthy, seconds=10, what="status to be healthy again")


async def test_envoy_crash_is_recovered(mesh: tuple[UpProcess, int], up_runtime_dir: Path) -> None:
    up, port = mesh
    code, status = await status_json(up_runtime_dir)
    assert code == 0
    pid = envoy_pid(status)
    assert status["envoy"]["restarts"] == 0
    os.kill(pid, signal.SIGKILL)

    async def restarted() -> dict[str, object] | None:
        _, now = await status_json(up_runtime_dir)
        envoy = now["envoy"]
        ok = envoy["running"] and envoy["pid"] not in (0, pid) and envoy["restarts"] >= 1
        return now if ok else None

    status = await eventually(restarted, seconds=20, what="Envoy to be restarted", every=0.1)
    await eventually(
        lambda: routed_to(port, "billing-api.localhost", "billing"),
        seconds=15,
        what="traffic through the new Envoy",
    )
    assert await routed_to(port, "admin.localhost", "admin")
    assert not pid_alive(pid)
    assert up.proc.returncode is None, up.describe()
