"""`localmesh up --watch` with `routes:`: marked requests reach local processes (HTTP and
gRPC, real curl and grpcio), unmarked ones the sandbox's pods; path routes, a local-only
host, a dead local target's 503, a local process restarted, route edits under load."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from aiohttp import web

from localmesh.api.sandbox.v1 import greeter_pb2, greeter_pb2_grpc
from localmesh.sandbox import Sandbox
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    Load,
    UpProcess,
    curl,
    eventually,
    free_port,
    private_runtime_dir,
    run_cli,
    services_yaml,
    start_up,
    status_json,
    write_atomically,
)
from tests.integration.backends import KeepAliveClient

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]


class LocalHttp:
    """A developer's local HTTP build on a fixed port: answers JSON {"local": name}."""

    def __init__(self, name: str, port: int = 0, path: str = "") -> None:
        self.name, self.port, self.path = name, port, path  # a port, or a unix socket path
        self._runner: web.AppRunner | None = None

    async def start(self) -> LocalHttp:
        async def handle(request: web.Request) -> web.Response:
            return web.json_response({"local": self.name, "path": request.path})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site: web.BaseSite
        if self.path:
            site = web.UnixSite(self._runner, self.path)
        else:
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


class LocalGreeter(greeter_pb2_grpc.GreeterServicer):
    async def SayHello(
        self, request: greeter_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> greeter_pb2.HelloReply:
        return greeter_pb2.HelloReply(message=f"local hello {request.name}", namespace="local")

    async def SayHelloStream(
        self, request: greeter_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[greeter_pb2.HelloReply]:
        for i in range(request.count):
            yield greeter_pb2.HelloReply(message=f"local {i}", namespace="local")


@dataclass
class Mesh:
    up: UpProcess
    port: int
    runtime_dir: Path
    services: Path
    http: LocalHttp
    grpc_port: int
    dead_port: int
    entries: list[dict[str, Any]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(
    up_sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    tmp = tmp_path_factory.mktemp("up-routes")
    port, http_port, grpc_port, dead_port, web_port = (free_port() for _ in range(5))
    http = await LocalHttp("billing-dev", http_port).start()
    web_dev = await LocalHttp("web-dev", web_port).start()
    unix_dev = await LocalHttp("unix-dev", path=str(tmp / "dev.sock")).start()
    server = grpc.aio.server()
    greeter_pb2_grpc.add_GreeterServicer_to_server(LocalGreeter(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    entries: list[dict[str, Any]] = [
        {
            "host": "billing-api.localhost",
            "namespace": "billing",
            "service": "billing-api",
            "port_name": "http",
            "routes": [
                {"headers": {"x-dev": "alice"}, "local": http_port},
                {"headers": {"baggage": {"member": "dev=alice"}}, "local": http_port},
                {"headers": {"x-dev": "bob"}, "local": dead_port},
                {"headers": {"x-dev": "unix"}, "local": unix_dev.path},
                {"path_prefix": "/v2/", "namespace": "admin", "service": "admin-web", "port": 8080},
            ],
        },
        {
            "host": "users-api.localhost",
            "namespace": "users",
            "service": "users-api",
            "port_name": "grpc",
            "type": "grpc",
            "routes": [
                {"headers": {"x-dev": "alice"}, "local": f"127.0.0.1:{grpc_port}"},
                {"headers": {"x-dev": "bob"}, "local": dead_port},
            ],
        },
        {"host": "admin.localhost", "namespace": "admin", "service": "admin-web", "port": 8080},
        {"host": "web.localhost", "local": web_port},
    ]
    services = tmp / "services.yaml"
    services.write_text(services_yaml(port, entries))
    runtime_dir = private_runtime_dir(tmp)
    up = await start_up(
        runtime_dir, services, up_sandbox.kubeconfig_path, "--no-edit-hosts", "--watch"
    )
    try:
        yield Mesh(up, port, runtime_dir, services, http, grpc_port, dead_port, entries)
    finally:
        code = await up.stop()
        await http.stop()
        await web_dev.stop()
        await unix_dev.stop()
        await server.stop(None)
        assert code == 0, up.describe()


async def get(mesh: Mesh, host: str, path: str = "/", *headers: str) -> Any:
    extra = [arg for h in headers for arg in ("-H", h)]
    return await curl(f"http://127.0.0.1:{mesh.port}{path}", host=host, extra=extra)


async def test_marked_requests_reach_the_local_build_unmarked_the_pods(mesh: Mesh) -> None:
    marked = await get(mesh, "billing-api.localhost", "/a", "x-dev: alice")
    assert marked.status == 200, marked
    assert marked.json() == {"local": "billing-dev", "path": "/a"}
    unmarked = await get(mesh, "billing-api.localhost", "/a")
    assert unmarked.status == 200 and unmarked.json()["namespace"] == "billing", unmarked
    other = await get(mesh, "billing-api.localhost", "/a", "x-dev: carol")
    assert other.json()["namespace"] == "billing", other
    baggage = await get(mesh, "billing-api.localhost", "/", "baggage: team=x, dev=alice;p=1")
    assert baggage.json()["local"] == "billing-dev", baggage
    unix = await get(mesh, "billing-api.localhost", "/u", "x-dev: unix")
    assert unix.json() == {"local": "unix-dev", "path": "/u"}, unix


def _grpc(port: int, marked: bool, who: str = "alice") -> tuple[str, list[str]]:
    metadata = (("x-dev", who),) if marked else ()
    options = [("grpc.default_authority", "users-api.localhost")]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)  # type: ignore[no-untyped-call]
        request = greeter_pb2.HelloRequest(name="e2e", count=3)
        unary = stub.SayHello(request, metadata=metadata, timeout=5)
        stream = [r.namespace for r in stub.SayHelloStream(request, metadata=metadata, timeout=5)]
    return unary.namespace, stream


async def test_grpc_metadata_mark_reaches_the_local_grpc_server(mesh: Mesh) -> None:
    namespace, stream = await asyncio.to_thread(_grpc, mesh.port, True)
    assert (namespace, stream) == ("local", ["local", "local", "local"])
    namespace, stream = await asyncio.to_thread(_grpc, mesh.port, False)
    assert namespace == "users" and stream == ["users"] * 3


async def test_grpc_to_a_dead_local_target_is_unavailable_with_the_reason(mesh: Mesh) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        await asyncio.to_thread(_grpc, mesh.port, True, "bob")
    error: Any = failed.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert f"nothing listens on 127.0.0.1:{mesh.dead_port}" in error.details()
    assert "(users-api.localhost, x-dev: bob)" in error.details()


async def test_path_route_reaches_another_service(mesh: Mesh) -> None:
    reply = await get(mesh, "billing-api.localhost", "/v2/items")
    assert reply.status == 200 and reply.json()["namespace"] == "admin", reply


async def test_local_only_host(mesh: Mesh) -> None:
    reply = await get(mesh, "web.localhost", "/app")
    assert reply.json() == {"local": "web-dev", "path": "/app"}, reply


async def test_dead_local_target_answers_503_naming_route_and_address(mesh: Mesh) -> None:
    reply = await get(mesh, "billing-api.localhost", "/", "x-dev: bob")
    assert reply.status == 503, reply
    assert reply.body.strip() == (
        f"localmesh: nothing listens on 127.0.0.1:{mesh.dead_port} "
        "(billing-api.localhost, x-dev: bob)"
    )
    assert (await get(mesh, "billing-api.localhost")).status == 200  # others unaffected


async def test_status_shows_routes_and_checks_local_targets(mesh: Mesh) -> None:
    code, status = await status_json(mesh.runtime_dir)
    hosts = {h["host"]: h for h in status["hosts"]}
    routes = hosts["billing-api.localhost"]["routes"]
    assert [(r["match"], r["local"], r["listening"]) for r in routes] == [
        ("x-dev: alice", True, True),
        ("baggage ~ " + routes[1]["match"].split(" ~ ", 1)[1], True, True),
        ("x-dev: bob", True, False),
        ("x-dev: unix", True, True),
        ("path /v2/", False, False),
    ]
    assert routes[2]["target"] == f"local 127.0.0.1:{mesh.dead_port}"
    assert routes[3]["target"].startswith("local unix:/")
    assert routes[4]["target"] == "admin/admin-web:8080"
    assert hosts["web.localhost"]["local_listening"] is True
    assert code == 0, status["problems"]  # a dead route target is shown, not a failure
    text = await run_cli(mesh.runtime_dir, "status")
    assert "route x-dev: bob" in text.stdout and "NOT LISTENING" in text.stdout


async def test_a_restarted_local_process_is_picked_up_without_an_edit(mesh: Mesh) -> None:
    await mesh.http.stop()
    reply = await get(mesh, "billing-api.localhost", "/", "x-dev: alice")
    assert reply.status == 503 and "nothing listens" in reply.body, reply
    await mesh.http.start()

    async def back() -> bool:
        reply = await get(mesh, "billing-api.localhost", "/", "x-dev: alice")
        return bool(reply.status == 200 and reply.json()["local"] == "billing-dev")

    await eventually(back, seconds=10, what="the restarted local build")


async def test_route_edits_under_watch_touch_no_forwarder_and_fail_nothing(mesh: Mesh) -> None:
    _, before = await status_json(mesh.runtime_dir)
    load = Load(mesh.port, "admin.localhost")
    load.start()
    kept = KeepAliveClient(mesh.port)  # one connection across the edit, fails if replaced
    try:
        assert (await kept.get("billing-api.localhost"))["namespace"] == "billing"
        assert (await kept.get("admin.localhost"))["namespace"] == "admin"
        await load.wait_ok(5)
        entries = [dict(e) for e in mesh.entries]
        billing = entries[0]
        billing["routes"] = [
            {"headers": {"x-dev": "dave"}, "local": mesh.http.port},
            *billing["routes"],
        ]
        write_atomically(mesh.services, services_yaml(mesh.port, entries))

        async def applied() -> bool:
            reply = await get(mesh, "billing-api.localhost", "/", "x-dev: dave")
            return bool(reply.status == 200 and reply.json().get("local") == "billing-dev")

        await eventually(applied, seconds=15, what="the new route")
        await load.wait_ok(5)
        assert (await kept.get("billing-api.localhost"))["namespace"] == "billing"
        assert (await kept.get("admin.localhost"))["namespace"] == "admin"
    finally:
        kept.close()
        await load.stop()
    assert load.failures == []
    _, after = await status_json(mesh.runtime_dir)

    def forwarders(status: Any) -> dict[str, set[int]]:
        return {h["host"]: {p["local_port"] for p in h["pods"]} for h in status["hosts"]}

    assert forwarders(after) == forwarders(before)  # RDS only: no forwarder was replaced
