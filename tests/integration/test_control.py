"""The control API over a real unix socket: a real grpc.aio server with a fake provider,
and the real client."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from localmesh.api.v1 import control_pb2, control_pb2_grpc
from localmesh.control import (
    POD_BACKOFF,
    POD_READY,
    CheckStatus,
    ControlClient,
    EnvoyStatus,
    HostStatus,
    InstanceStatus,
    PodStatus,
    RouteStatus,
    SnapshotResource,
    XdsTypeStatus,
    bind_unix_socket,
    register_control,
    secure_socket,
    serve_control,
)
from localmesh.errors import ControlError
from localmesh.runtime import InstanceLock, prepare, runtime_paths

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

STATUS = InstanceStatus(
    name="dev",
    pid=4321,
    listener_address="127.0.0.1",
    listener_port=18080,
    config_path="/home/dev/services.yaml",
    started_at=datetime(2026, 11, 21, 4, 0, 0, 123456, tzinfo=UTC),
    envoy=EnvoyStatus(
        running=True,
        pid=5555,
        admin_address="127.0.0.1:9901",
        restarts=1,
        version="1.36.2",
        bootstrap_path="/run/user/1000/localmesh/dev/envoy-bootstrap.json",
    ),
    hosts=(
        HostStatus(
            host="billing-api.localhost",
            namespace="billing",
            service="billing-api",
            port="http",
            target_port=8080,
            type="http",
            cluster="http.billing.billing-api.http",
            pods=(
                PodStatus("billing-api-7d9f-abcde", "127.0.0.1", 40001, POD_READY, 3),
                PodStatus(
                    "billing-api-7d9f-fghij", "127.0.0.1", 40002, POD_BACKOFF, 0, "conn reset"
                ),
            ),
            last_reconnect=datetime(2026, 11, 21, 4, 5, 6, 789000, tzinfo=UTC),
            last_reconnect_reason="pod replaced",
            requests=120,
            errors=2,
        ),
        HostStatus(
            host="users-api.localhost",
            namespace="users",
            service="users-api",
            port=9090,
            target_port=9090,
            type="grpc",
            cluster="grpc.users.users-api.9090",
            pods=(PodStatus("users-api-0", "127.0.0.1", 40003),),
        ),
        HostStatus(
            host="web.localhost",
            namespace="",
            service="",
            port="",
            type="http",
            cluster="http.local.127.0.0.1.3000",
            local="127.0.0.1:3000",
            local_listening=True,
            routes=(
                RouteStatus(
                    "x-dev: alice",
                    "local 127.0.0.1:9090",
                    "http.local.127.0.0.1.9090",
                    local=True,
                    listening=False,
                ),
                RouteStatus("path /v2/", "web/web-v2:http", "http.web.web-v2.8081"),
            ),
        ),
    ),
    xds=(
        XdsTypeStatus(LDS, "3", "3"),
        XdsTypeStatus(CDS, "5", "4", "cluster 'x': invalid"),
    ),
    extra_problems=("services.yaml is invalid; serving the previous version",),
    checks=(CheckStatus("listener", True, repaired="Envoy restarted at 09:00:00 (it hung)"),),
)

RESOURCES = (
    SnapshotResource(EDS, "http.billing.billing-api.http", "e1", '{"clusterName": "b"}'),
    SnapshotResource(CDS, "http.billing.billing-api.http", "c1", '{"name": "b"}'),
    SnapshotResource(LDS, "localmesh", "l1", '{"name": "localmesh"}'),
    SnapshotResource(CDS, "grpc.users.users-api.9090", "c2", '{"name": "u"}'),
)


class FakeInstance:
    """A ControlProvider with canned answers that records what it was asked."""

    def __init__(self, status: InstanceStatus = STATUS) -> None:
        self.current = status
        self.down_requested = asyncio.Event()
        self.fail_with: Exception | None = None

    async def status(self) -> InstanceStatus:
        if self.fail_with:
            raise self.fail_with
        return self.current

    async def down(self) -> None:
        self.down_requested.set()

    async def snapshot(self) -> Sequence[SnapshotResource]:
        return RESOURCES


@pytest.fixture
async def instance(tmp_path: Path) -> AsyncIterator[tuple[FakeInstance, Path]]:
    paths = prepare(runtime_paths("dev", base=tmp_path / "run"))
    provider = FakeInstance()
    server = await serve_control(provider, paths.control_socket)
    try:
        yield provider, paths.control_socket
    finally:
        await server.stop(None)


async def test_status_round_trips_every_field(instance: tuple[FakeInstance, Path]) -> None:
    _, path = instance
    async with ControlClient(path) as client:
        status = await client.status()
    assert status == STATUS
    assert status.problems() == STATUS.problems()
    assert not status.healthy


async def test_server_reports_health_on_the_wire(instance: tuple[FakeInstance, Path]) -> None:
    _, path = instance
    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        stub = control_pb2_grpc.ControlStub(channel)  # type: ignore[no-untyped-call]
        raw = await stub.Status(control_pb2.StatusRequest(), timeout=10)
    assert raw.healthy is False
    assert list(raw.problems) == [
        "envoy rejected Cluster version 5: cluster 'x': invalid",
        "services.yaml is invalid; serving the previous version",
    ]
    assert raw.hosts[0].pods[1].state == POD_BACKOFF


async def test_healthy_instance_has_no_problems(instance: tuple[FakeInstance, Path]) -> None:
    provider, path = instance
    provider.current = replace(STATUS, xds=STATUS.xds[:1], extra_problems=())
    async with ControlClient(path) as client:
        status = await client.status()
    assert status.healthy
    assert status.problems() == ()


async def test_down_reaches_the_provider(instance: tuple[FakeInstance, Path]) -> None:
    provider, path = instance
    async with ControlClient(path) as client:
        result = await client.down(wait=False)
    assert result.pid == os.getpid()
    assert provider.down_requested.is_set()


async def test_dump_returns_sorted_resources_and_filters_by_type(
    instance: tuple[FakeInstance, Path],
) -> None:
    _, path = instance
    async with ControlClient(path) as client:
        everything = await client.dump()
        clusters = await client.dump([CDS])
    assert set(everything) == set(RESOURCES)
    assert [(r.type_url, r.name) for r in everything] == sorted(
        (r.type_url, r.name) for r in RESOURCES
    )
    assert [r.name for r in clusters] == [
        "grpc.users.users-api.9090",
        "http.billing.billing-api.http",
    ]
    assert clusters[1].version == "c1" and clusters[1].json == '{"name": "b"}'


async def test_provider_failure_is_a_control_error(instance: tuple[FakeInstance, Path]) -> None:
    provider, path = instance
    provider.fail_with = RuntimeError("boom")
    async with ControlClient(path, name="dev") as client:
        with pytest.raises(ControlError, match="'dev': Status failed: status failed: boom"):
            await client.status()


async def test_socket_is_private(instance: tuple[FakeInstance, Path]) -> None:
    _, path = instance
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(path.parent).st_mode) == 0o700


async def test_bind_refuses_a_shared_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    server = grpc.aio.server()
    with pytest.raises(ControlError, match="must be a 0700 directory"):
        bind_unix_socket(server, shared / "control.sock")
    await server.stop(None)


async def test_no_instance_running(tmp_path: Path) -> None:
    client = ControlClient.for_name("ghost", base=tmp_path)
    with pytest.raises(ControlError) as err:
        await client.status()
    socket_path = tmp_path / "ghost" / "control.sock"
    assert str(err.value) == (
        f"no localmesh instance named 'ghost' is running (socket {socket_path} not found); "
        "start one with `localmesh up`"
    )
    await client.close()


async def test_no_instance_names_the_ones_that_run(tmp_path: Path) -> None:
    with InstanceLock(runtime_paths("blue", base=tmp_path)):
        dead = prepare(runtime_paths("crashed", base=tmp_path))
        dead.lock_file.write_text("999999999\n")  # pid of no process
        async with ControlClient.for_name("green", base=tmp_path) as client:
            with pytest.raises(ControlError, match=r"not found\); running: blue \(pick one"):
                await client.status()


async def test_stale_socket_of_a_crashed_instance(tmp_path: Path) -> None:
    paths = prepare(runtime_paths("dev", base=tmp_path))
    # A socket file nobody listens on any more, as a SIGKILLed instance leaves it.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(paths.control_socket))
    async with ControlClient.for_name("dev", base=tmp_path) as client:
        with pytest.raises(
            ControlError, match=r"named 'dev' is running \(socket .* does not answer"
        ):
            await client.status()
    # The next instance binds over it.
    server = await serve_control(FakeInstance(), paths.control_socket)
    try:
        async with ControlClient.for_name("dev", base=tmp_path) as client:
            assert (await client.status()).name == "dev"
    finally:
        await server.stop(None)


async def test_shares_a_server_with_other_services(tmp_path: Path) -> None:
    # The xDS server is another service on the same grpc.aio.Server: registration must not
    # care what else is there.
    paths = prepare(runtime_paths("dev", base=tmp_path))
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    register_control(server, FakeInstance())
    bind_unix_socket(server, paths.control_socket)
    await server.start()
    secure_socket(paths.control_socket)
    try:
        async with ControlClient(paths.control_socket) as client:
            assert (await client.status()).pid == STATUS.pid
        async with grpc.aio.insecure_channel(f"unix:{paths.control_socket}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)


# A separate process serving the control API, as `up` does: `down` makes it clean up and exit.
INSTANCE = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    import structlog
    from localmesh.control import EnvoyStatus, InstanceStatus, serve_control
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    class Instance:
        def __init__(self, obey):
            self.stop = asyncio.Event()
            self.obey = obey
        async def status(self):
            return InstanceStatus("dev", 1, "127.0.0.1", 80, EnvoyStatus(running=True))
        async def down(self):
            if self.obey:
                self.stop.set()
        async def snapshot(self):
            return []

    async def main():
        socket_path, obey = Path(sys.argv[1]), sys.argv[2] == "obey"
        instance = Instance(obey)
        server = await serve_control(instance, socket_path)
        print("serving", flush=True)
        await instance.stop.wait()
        await server.stop(5)  # lets the Down reply out
        socket_path.unlink(missing_ok=True)
        print("cleaned up", flush=True)

    asyncio.run(main())
    """
)


async def _start_instance(socket_path: Path, mode: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", INSTANCE, str(socket_path), mode, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"serving\n"
    return proc


async def test_down_waits_for_the_instance_to_exit(tmp_path: Path) -> None:
    paths = prepare(runtime_paths("dev", base=tmp_path))
    proc = await _start_instance(paths.control_socket, "obey")
    async with ControlClient(paths.control_socket) as client:
        result = await client.down(wait=True, wait_timeout=30)
    assert result.pid == proc.pid
    # down() returned only after the process exited: a zombie, or already reaped by asyncio's
    # child watcher (which, on a busy machine, may take a while to collect the status).
    assert process_has_exited(proc.pid)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert proc.stdout is not None
    assert await proc.stdout.read() == b"cleaned up\n"
    assert not paths.control_socket.exists()


def process_has_exited(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


async def test_down_reports_an_instance_that_does_not_stop(tmp_path: Path) -> None:
    paths = prepare(runtime_paths("dev", base=tmp_path))
    proc = await _start_instance(paths.control_socket, "ignore")
    try:
        async with ControlClient(paths.control_socket, name="dev") as client:
            with pytest.raises(ControlError, match=rf"'dev' \(pid {proc.pid}\) did not stop"):
                await client.down(wait=True, wait_timeout=0.3)
    finally:
        proc.kill()
        await proc.wait()


def test_wait_for_exit_of_an_already_dead_process() -> None:
    from localmesh.control import wait_for_exit

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert asyncio.run(wait_for_exit(proc.pid, 5)) is True
