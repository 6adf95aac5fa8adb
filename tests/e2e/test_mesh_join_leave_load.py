"""A second developer joins and leaves a meshed Service under steady unmarked load, then the
last developer leaves: not one unmarked request may fail, whatever the client holds. The
loads go to the Service's cluster IP, as an in-cluster client's would: a new connection per
request (real curl's way), HTTP/1.1 keep-alive connections held across everything, and one
gRPC channel (real grpcio) making unary calls on its one HTTP/2 connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from localmesh.api.sandbox.v1 import greeter_pb2, greeter_pb2_grpc
from localmesh.clustermesh import manifests as m
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.test_mesh_router import (
    UnmarkedLoad,
    body_of,
    cluster_ip,
    comparable,
    local_app,
    start_mesh,
    stop_mesh,
)
from tests.e2e.test_mesh_router_streams import local_greeter
from tests.e2e.up_helpers import eventually
from tests.integration.mesh_helpers import service_json, wait_managed_gone

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory


class KeepAliveLoad:
    """Unmarked GETs one after another on each of `connections` HTTP/1.1 keep-alive
    connections. Strict, with no retry: a request written and not answered 200 is a
    failure. A connection the server closes *after* a complete answer (an announced
    `Connection: close`, or a clean end between requests) is reopened and counted."""

    def __init__(self, ip: str, port: int, host: str, connections: int = 2) -> None:
        self.ip, self.port, self.host = ip, port, host
        self.connections = connections
        self.ok = 0
        self.opened = 0
        self.failures: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self.connections)]

    async def answered(self, count: int = 5) -> bool:
        return self.ok >= count

    async def _run(self) -> None:
        request = f"GET /keepalive HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.ip, self.port)
            except OSError as exc:
                self.failures.append(f"connect: {exc!r}")
                return  # the failure stands; the test's next wait for answers says so
            self.opened += 1
            try:
                while True:
                    writer.write(request)
                    try:
                        async with asyncio.timeout(10):
                            status, body, closing = await _response(reader)
                    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                        self.failures.append(f"connection {self.opened}: {exc!r}")
                        break
                    if status == 200 and body.startswith(b"{"):
                        self.ok += 1
                    else:
                        self.failures.append(f"{status} {body[:80]!r}")
                    if closing:
                        break
            finally:
                writer.close()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 answer with a Content-Length body: status, body, whether it closes."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    body = await reader.readexactly(int(fields.get("content-length", "0")))
    return status, body, fields.get("connection", "").lower() == "close"


class GrpcLoad:
    """Unmarked unary calls one after another on one channel (one HTTP/2 connection)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.ok = 0
        self.failures: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def answered(self, count: int = 5) -> bool:
        return self.ok >= count

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = greeter_pb2_grpc.GreeterStub(channel)  # type: ignore[no-untyped-call]
            while True:
                try:
                    reply = await stub.SayHello(greeter_pb2.HelloRequest(name="load"), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")
                    continue
                if reply.pod.startswith("users-api"):  # a pod (the local greeters fill no pod)
                    self.ok += 1
                else:
                    self.failures.append(f"answered by {reply.pod!r}: {reply.message!r}")

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


Load = UnmarkedLoad | KeepAliveLoad | GrpcLoad


async def progressed(loads: list[Load], what: str, more: int = 20) -> None:
    """Until every load has `more` further answers (each one is still being served)."""
    for load in loads:
        await eventually(
            lambda load=load, seen=load.ok: load.answered(seen + more),  # type: ignore[misc]
            seconds=30,
            what=f"{what}: {type(load).__name__} (failures: {load.failures[:3]})",
        )


async def _true(value: bool) -> bool:
    return value


def failures(loads: list[Load]) -> dict[str, list[str]]:
    return {type(load).__name__: load.failures[:5] for load in loads if load.failures}


MarkServed = Callable[[tuple[str, str], str], Awaitable[bool]]


async def two_developers_come_and_go(
    sandbox: Sandbox,
    tmp_path: Path,
    *,
    target: str,
    remote: int,
    local_ports: tuple[int, int],
    loads: list[Load],
    served_by: MarkServed,
) -> None:
    """Under the loads: ana is meshed (creating the router); bob joins, is served, leaves;
    ana, the last one, leaves and the Service is restored. No load may see a failure."""
    namespace, service = target.split("/")
    before = comparable(await service_json(sandbox, namespace, service))
    ana_port, bob_port = local_ports
    ana = await start_mesh(sandbox, tmp_path, target, f"{ana_port}:{remote}", "dev")
    try:
        for load in loads:
            load.start()
        await progressed(loads, "load through ana's router")
        bob = await start_mesh(sandbox, tmp_path, target, f"{bob_port}:{remote}", "baggage:bob")
        try:
            await eventually(
                lambda: served_by(("baggage", "bob"), "bob"), seconds=30, what="bob served"
            )
            await progressed(loads, "load while bob is meshed")
        finally:
            await stop_mesh(bob)
        assert bob.returncode == 0
        await progressed(loads, "load after bob left")
        assert await served_by(("version", "dev"), "ana")
        assert failures(loads) == {}, "failed during the second developer's join or leave"

        # The last one out: the selector is restored, then the router goes (with the
        # connections the loads hold to it).
        await stop_mesh(ana)
        assert ana.returncode == 0
        assert comparable(await service_json(sandbox, namespace, service)) == before
        await wait_managed_gone(sandbox, namespace)
        # The router pod keeps serving until new connections stop reaching it, then
        # drains the held ones: wait until it has ended, terminating included.
        router = f"{m.COMPONENT_LABEL}=router"
        await eventually(
            lambda: _true(not sandbox.pods(namespace, router)), seconds=30, what="router ended"
        )
        await progressed(loads, "load once the router is gone")
        assert failures(loads) == {}, "failed during the last developer's leave"
    finally:
        await stop_mesh(ana)
        for load in loads:
            await load.stop()


async def test_http_loads_see_no_failure_as_developers_join_and_leave(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    ip = await cluster_ip(sandbox, "billing", "billing-api")
    url = f"http://{ip}:8080/x"
    keepalive = KeepAliveLoad(ip, 8080, "billing-api.billing:8080")

    async def served_by(mark: tuple[str, str], name: str) -> bool:
        body = await body_of(url, dict([mark]))
        return body is not None and body.startswith(name)

    async with local_app("ana") as ana_port, local_app("bob") as bob_port:
        await two_developers_come_and_go(
            sandbox,
            tmp_path,
            target="billing/billing-api",
            remote=8080,
            local_ports=(ana_port, bob_port),
            loads=[UnmarkedLoad(url), keepalive],
            served_by=served_by,
        )
    # The keep-alive connections were held to the router until it went: it closed each
    # after a complete answer, and the client's next connections reached the pods.
    assert keepalive.opened > keepalive.connections


async def test_a_grpc_channel_sees_no_failure_as_developers_join_and_leave(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    ip = await cluster_ip(sandbox, "users", "users-api")
    target = f"{ip}:50051"
    async with (
        local_greeter("ana") as ana_port,
        local_greeter("bob") as bob_port,
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = greeter_pb2_grpc.GreeterStub(channel)  # type: ignore[no-untyped-call]

        async def served_by(mark: tuple[str, str], name: str) -> bool:
            reply = await stub.SayHello(
                greeter_pb2.HelloRequest(name=name), metadata=(mark,), timeout=5
            )
            return bool(reply.message == f"{name} hello {name}")

        await two_developers_come_and_go(
            sandbox,
            tmp_path,
            target="users/users-api",
            remote=50051,
            local_ports=(ana_port, bob_port),
            loads=[GrpcLoad(target)],
            served_by=served_by,
        )
