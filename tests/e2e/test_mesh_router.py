"""The real router on the sandbox: `localmesh mesh` (the real CLI) creates the router pod,
whose process is `localmesh agent router` with its own real Envoy; requests go through the
Service's cluster IP as any in-cluster client's would, with real curl, aiohttp and grpcio."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from localmesh.api.sandbox.v1 import greeter_pb2, greeter_pb2_grpc
from localmesh.cli.demo_mesh import SERVER_FIELDS, serve_on_loopback
from localmesh.clustermesh import manifests as m
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.up_helpers import LOCALMESH, cli_env, curl, eventually, run_cli
from tests.integration.mesh_helpers import (
    managed_objects,
    namespace_objects,
    service_json,
    wait_managed_gone,
)

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

IDLE_TIMEOUT = 2  # seconds without a live session before the router restores the Service


@asynccontextmanager
async def local_app(name: str) -> AsyncIterator[int]:
    """A developer's process on this machine: HTTP answers name it; /ws echoes."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str(f"{name} echoes {msg.data}")
            return ws
        return web.Response(text=f"{name} served {request.path} for {request.host}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serve_on_loopback(app) as port:
        yield port


async def start_mesh(
    sb: Sandbox, tmp_path: Path, target: str, expose: str, mark: str
) -> asyncio.subprocess.Process:
    runtime = tmp_path / f"rt-{mark.replace(':', '-')}"
    runtime.mkdir()
    proc = await asyncio.create_subprocess_exec(
        str(LOCALMESH),
        "mesh",
        target,
        "--expose",
        expose,
        "--version-mark",
        mark,
        "--kubeconfig",
        str(sb.kubeconfig_path),
        "--router-idle-timeout",
        str(IDLE_TIMEOUT),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(runtime, sb.kubeconfig_path),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(120):
        while not any(line.startswith("Ctrl-C") for line in lines):
            raw = await proc.stdout.readline()
            if not raw:
                assert proc.stderr is not None
                err = (await proc.stderr.read()).decode()
                raise AssertionError(f"mesh exited: {''.join(lines)}{err}")
            lines.append(raw.decode())
    return proc


async def stop_mesh(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            await proc.communicate()


async def router_ip(sb: Sandbox, namespace: str = "billing") -> str:
    out = (
        await sandbox_fixtures.kubectl(
            sb, "get", "pods", "-n", namespace, "-l", f"{m.COMPONENT_LABEL}=router", "-o", "json"
        )
    ).check()
    items = json.loads(out.stdout)["items"]
    (pod,) = [p for p in items if not p["metadata"].get("deletionTimestamp")]
    return str(pod["status"]["podIP"])


async def cluster_ip(sb: Sandbox, namespace: str, service: str) -> str:
    return str((await service_json(sb, namespace, service))["spec"]["clusterIP"])


def comparable(service: Any) -> Any:
    meta = service["metadata"]
    for name in SERVER_FIELDS:
        meta.pop(name, None)
    service.pop("status", None)
    return service


async def body_of(url: str, headers: dict[str, str] | None = None) -> str | None:
    """One request on a new connection; None unless it answered 200."""
    extra = [arg for k, v in (headers or {}).items() for arg in ("-H", f"{k}: {v}")]
    reply = await curl(url, extra=extra)
    return reply.body if reply.status == 200 else None


class UnmarkedLoad:
    """Unmarked requests, each on a new connection, one after another until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def answered(self, count: int = 5) -> bool:
        return self.ok >= count

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        while True:
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                try:
                    async with session.get(self.url) as resp:
                        body = await resp.text()
                        if resp.status == 200 and body.startswith("{"):
                            self.ok += 1
                        else:
                            self.failures.append(f"{resp.status} {body[:80]}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failures.append(repr(exc))

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_marked_http_and_websocket_reach_this_machine_the_rest_the_pods(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    before = comparable(await service_json(sandbox))
    ip = await cluster_ip(sandbox, "billing", "billing-api")
    url = f"http://{ip}:8080/orders"
    # Steady unmarked load across the join and the leave: not one request may fail.
    load = UnmarkedLoad(url)
    load.start()
    await eventually(load.answered, seconds=30, what="unmarked load before the mesh")
    async with contextlib.AsyncExitStack() as app_stack:
        port = await app_stack.enter_async_context(local_app("ana"))
        proc = await start_mesh(sandbox, tmp_path, "billing/billing-api", f"{port}:8080", "dev")
        try:
            # `mesh` says "try ..." only once the router's Envoy routes the mark: the very
            # first marked request to the router pod is served locally, no retry.
            router = await router_ip(sandbox)
            first = await body_of(f"http://{router}:8080/first", {"version": "dev"})
            assert first == f"ana served /first for {router}:8080"

            async def marked() -> str | None:
                body = await body_of(url, {"version": "dev"})
                return body if body and body.startswith("ana") else None

            body = await eventually(marked, seconds=30, what="a marked request served locally")
            # Host is kept: the local process sees the cluster's name for the Service.
            assert body == f"ana served /orders for {ip}:8080"
            plain = await body_of(url)
            assert plain is not None and json.loads(plain)["pod"].startswith("billing-api")
            other = await body_of(url, {"version": "prod"})
            assert other is not None and json.loads(other)["pod"].startswith("billing-api")

            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(f"http://{ip}:8080/ws", headers={"version": "dev"}) as ws,
            ):
                for text in ("one", "two"):
                    await ws.send_str(text)
                    assert (await ws.receive_str()) == f"ana echoes {text}"

            # The local process stops: marked requests get a 503 that says so.
            await app_stack.aclose()
            reply = await curl(url, extra=["-H", "version: dev"])
            assert reply.status == 503
            assert reply.body.startswith(
                "localmesh: the local process behind version: dev is not answering"
            )
            plain = await body_of(url)
            assert plain is not None and json.loads(plain)["pod"].startswith("billing-api")
        finally:
            await stop_mesh(proc)
    assert proc.returncode == 0
    assert comparable(await service_json(sandbox)) == before
    seen = load.ok
    await eventually(lambda: load.answered(seen + 5), seconds=30, what="load after the leave")
    await load.stop()
    assert load.failures == [], load.failures[:5]
    await wait_managed_gone(sandbox)


async def test_a_mark_propagated_by_a_caller_reaches_this_machine_at_the_second_hop(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """users/frontend calls billing-api.billing:8080 for every request, passing on the
    propagated headers (version among them): meshing billing-api catches its marked calls."""
    async with local_app("ana") as port:
        proc = await start_mesh(sandbox, tmp_path, "billing/billing-api", f"{port}:8080", "dev")
        try:
            ip = await cluster_ip(sandbox, "users", "frontend")
            url = f"http://{ip}:8080/checkout"

            async def marked() -> Any:
                reply = await curl(url, extra=["-H", "version: dev", "-H", "x-request-id: r-1"])
                if reply.status != 200:
                    return None
                answer = json.loads(reply.body)
                second = answer["downstream"]["body"]
                return answer if isinstance(second, str) and second.startswith("ana") else None

            answer = await eventually(marked, seconds=30, what="the second hop served locally")
            assert answer["pod"].startswith("frontend")  # the first hop is the cluster's
            assert answer["propagated"] == {"version": "dev", "x-request-id": "r-1"}
            # The caller's Host (the Service's name) reaches the local process unchanged.
            assert (
                answer["downstream"]["body"] == "ana served /checkout for billing-api.billing:8080"
            )
            for headers in ([], ["-H", "version: prod"]):
                reply = await curl(url, extra=headers)
                assert reply.status == 200, reply.body
                second = json.loads(reply.body)["downstream"]["body"]
                assert isinstance(second, dict) and second["pod"].startswith("billing-api")
        finally:
            await stop_mesh(proc)
    assert proc.returncode == 0


async def test_grpc_metadata_marks_unary_and_streaming_calls(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """users-api is a gRPC greeter; the developer's greeter answers in its own words."""

    class LocalGreeter(greeter_pb2_grpc.GreeterServicer):
        async def SayHello(self, request: Any, context: Any) -> Any:
            return greeter_pb2.HelloReply(message=f"local hello {request.name}")

        async def SayHelloStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
            for i in range(3):
                yield greeter_pb2.HelloReply(message=f"local hello {request.name} {i}")

    server = grpc.aio.server()
    greeter_pb2_grpc.add_GreeterServicer_to_server(LocalGreeter(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    proc = await start_mesh(sandbox, tmp_path, "users/users-api", f"{port}:50051", "dev")
    try:
        ip = await cluster_ip(sandbox, "users", "users-api")
        async with grpc.aio.insecure_channel(f"{ip}:50051") as channel:
            stub = greeter_pb2_grpc.GreeterStub(channel)  # type: ignore[no-untyped-call]
            mark = (("version", "dev"),)

            async def marked() -> str | None:
                try:
                    reply = await stub.SayHello(
                        greeter_pb2.HelloRequest(name="ana"), metadata=mark, timeout=5
                    )
                except grpc.aio.AioRpcError:
                    return None
                return str(reply.message) if reply.message.startswith("local") else None

            assert await eventually(marked, seconds=30, what="a marked call") == "local hello ana"
            plain = await stub.SayHello(greeter_pb2.HelloRequest(name="ana"), timeout=5)
            assert not plain.message.startswith("local")
            streamed = [
                r.message
                async for r in stub.SayHelloStream(
                    greeter_pb2.HelloRequest(name="ana", count=3), metadata=mark, timeout=10
                )
            ]
            assert streamed == [f"local hello ana {i}" for i in range(3)]
            pods = [
                r.message
                async for r in stub.SayHelloStream(
                    greeter_pb2.HelloRequest(name="ana", count=3), timeout=10
                )
            ]
            assert pods and not any(text.startswith("local") for text in pods)
    finally:
        await stop_mesh(proc)
        await server.stop(0)
    assert proc.returncode == 0


async def test_two_developers_a_killed_session_falls_back_and_the_router_restores(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    before = comparable(await service_json(sandbox))
    objects_before = namespace_objects(sandbox)
    async with local_app("ana") as ana_port, local_app("bob") as bob_port:
        ana = await start_mesh(sandbox, tmp_path, "billing/billing-api", f"{ana_port}:8080", "dev")
        bob = await start_mesh(
            sandbox, tmp_path, "billing/billing-api", f"{bob_port}:8080", "baggage:bob"
        )
        try:
            ip = await cluster_ip(sandbox, "billing", "billing-api")
            url = f"http://{ip}:8080/x"

            async def served_by(name: str, headers: dict[str, str]) -> bool:
                body = await body_of(url, headers)
                return body is not None and body.startswith(name)

            async def both() -> bool:
                return await served_by("ana", {"version": "dev"}) and await served_by(
                    "bob", {"baggage": "bob"}
                )

            await eventually(both, seconds=30, what="both marks served locally")
            plain = await body_of(url)
            assert plain is not None and json.loads(plain)["pod"].startswith("billing-api")

            # ana's machine dies: no leave, its Lease stops being renewed.
            ana.kill()
            await ana.wait()

            async def fell_back() -> bool:
                body = await body_of(url, {"version": "dev"})
                return body is not None and body.startswith("{")

            # Within the lease duration (plus the time to notice and push).
            await eventually(
                fell_back,
                seconds=m.LEASE_DURATION_SECONDS + 10,
                what="ana's mark back on the pods",
            )
            assert await served_by("bob", {"baggage": "bob"})

            # Dead beyond doubt (5 s past expiry), ana's session loses its Lease to the
            # router, and its shadow pod and Secret with it; bob's is untouched.
            async def anas_session_gone() -> bool:
                return not any("-localmesh-dev-" in n for n in await managed_objects(sandbox))

            await eventually(anas_session_gone, seconds=30, what="ana's session removed")
            assert await served_by("bob", {"baggage": "bob"})

            # bob's machine dies too: nobody is left, the router restores the Service.
            bob.kill()
            await bob.wait()

            async def restored() -> bool:
                return bool(comparable(await service_json(sandbox)) == before)

            await eventually(
                restored,
                seconds=m.LEASE_DURATION_SECONDS + IDLE_TIMEOUT + 30,
                what="the router to restore the Service",
                every=0.2,
            )

            # ... and, with the dead sessions' Leases and the origin Service deleted, the
            # garbage collector removes everything else: the namespace is as it was.
            async def as_before() -> bool:
                assert namespace_objects(sandbox) == objects_before
                return True

            await eventually(as_before, seconds=60, what="the namespace as before", every=0.2)
            kc = sandbox.kubeconfig_path
            cleaned = await run_cli(tmp_path, "mesh", "clean", "-n", "billing", kubeconfig=kc)
            assert cleaned.returncode == 0, cleaned.stderr
            assert cleaned.stdout.strip() == "nothing to clean"
            assert comparable(await service_json(sandbox)) == before
        finally:
            for proc in (ana, bob):
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
