"""Tiny real backends on loopback ephemeral ports, for routing tests through a real Envoy.

    HttpBackend("alpha")   aiohttp server; every request gets JSON
                           {"backend": "alpha", "host": <Host header>, "method", "path"},
                           after `?delay=SECONDS` if asked
    GrpcBackend("beta")    grpc.aio server with the standard health service and server
                           reflection; its health status for the service name
                           `backend_service("beta")` is SERVING, so a Check for that name
                           tells which backend answered (others say NOT_FOUND)

Both are async context managers and expose `port` and `requests` (requests served).

Clients and waiting:
    await curl(port, host, path="/")             real curl through Envoy: (status, body)
    await curl_json(port, host, path="/")        the same, JSON body of a 200 answer
    await grpc_health_check(channel, service)    Health/Check status name
    await grpc_list_services(channel)            names listed by server reflection
    KeepAliveClient(port)                        ONE HTTP/1.1 connection; fails if it is
                                                 ever replaced or closed
    await eventually(check, within=5.0)          retry an async check until it passes
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

LOOPBACK = "127.0.0.1"


def backend_service(name: str) -> str:
    """The gRPC service name a GrpcBackend reports SERVING for (and lists in reflection)."""
    return f"localmesh.test.{name}.Backend"


@dataclass
class HttpBackend:
    name: str
    port: int = 0
    requests: int = 0
    _runner: web.AppRunner | None = field(default=None, repr=False)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        delay = float(request.query.get("delay", "0"))
        if delay:
            await asyncio.sleep(delay)  # a slow answer, to have a request in flight
        return web.json_response(
            {
                "backend": self.name,
                "host": request.headers.get("Host", ""),
                "method": request.method,
                "path": request.path_qs,
            }
        )

    async def start(self) -> HttpBackend:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((LOOPBACK, 0))  # bound here so the ephemeral port is known
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> HttpBackend:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _CountingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, backend: GrpcBackend) -> None:
        self._backend = backend

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        self._backend.requests += 1
        return await continuation(handler_call_details)


@dataclass
class GrpcBackend:
    name: str
    port: int = 0
    requests: int = 0
    _server: grpc.aio.Server | None = field(default=None, repr=False)

    @property
    def service(self) -> str:
        return backend_service(self.name)

    async def start(self) -> GrpcBackend:
        server = grpc.aio.server(interceptors=[_CountingInterceptor(self)])
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await servicer.set(self.service, health_pb2.HealthCheckResponse.SERVING)
        names = (
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
            self.service,
        )
        reflection.enable_server_reflection(names, server)
        self.port = server.add_insecure_port(f"{LOOPBACK}:0")
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=None)

    async def __aenter__(self) -> GrpcBackend:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def grpc_health_check(channel: grpc.aio.Channel, service: str = "") -> str:
    """Health/Check through `channel`; the status name (SERVING, NOT_FOUND via RpcError...)."""
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def grpc_list_services(channel: grpc.aio.Channel) -> list[str]:
    """The service names server reflection lists through `channel`."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    names: list[str] = []
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    async for reply in call:
        names.extend(s.name for s in reply.list_services_response.service)
    return sorted(names)


async def curl(
    port: int, host: str, path: str = "/", *, resolve: bool = False
) -> tuple[int, bytes]:
    """(status, body) of GET through a local listener with the real curl.

    By default the Host header is set (`-H Host:`); with `resolve` curl is told that `host`
    lives on 127.0.0.1 (`--resolve`) and sends `Host: host:port` itself, like a browser.
    """
    if resolve:
        target = ["--resolve", f"{host}:{port}:{LOOPBACK}", f"http://{host}:{port}{path}"]
    else:
        target = ["-H", f"Host: {host}", f"http://{LOOPBACK}:{port}{path}"]
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-w",
        "\n%{http_code}",
        *target,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"curl failed ({proc.returncode}): {err.decode().strip()}"
    body, _, status = out.rpartition(b"\n")
    return int(status), body


async def curl_json(
    port: int, host: str, path: str = "/", *, resolve: bool = False
) -> dict[str, Any]:
    """The JSON body of a 200 answer through a local listener (see `curl`)."""
    status, body = await curl(port, host, path, resolve=resolve)
    assert status == 200, f"HTTP {status} for {host}{path}: {body[:200]!r}"
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], within: float = 5.0, interval: float = 0.02
) -> T:
    """Run `check` until it returns without raising AssertionError (or an OSError-like
    transport error); re-raise its last failure when `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await check()
        except (AssertionError, OSError, grpc.aio.AioRpcError):
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)  # polling interval, bounded by the deadline


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection to a local listener.

    http.client would silently reconnect after a close; this refuses to: every request
    must travel on the socket opened first (same object, same local port), and a response
    saying `Connection: close` fails the request. The blocking client runs in a thread so
    the backends on this event loop keep serving.
    """

    def __init__(self, port: int) -> None:
        self._conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
        self._sock: socket.socket | None = None
        self.local_address: tuple[str, int] | None = None
        self.requests = 0

    def _request(self, host: str, path: str) -> tuple[int, bytes]:
        if self._sock is None:
            self._conn.connect()
            self._sock = self._conn.sock
            assert self._sock is not None
            self.local_address = self._sock.getsockname()
        assert self._conn.sock is self._sock, "the keep-alive connection was replaced"
        self._conn.request("GET", path, headers={"Host": host})
        response = self._conn.getresponse()
        body = response.read()
        assert self._conn.sock is self._sock, "the keep-alive connection was closed"
        assert response.getheader("connection", "").lower() != "close", (
            "the server closed the keep-alive connection"
        )
        self.requests += 1
        return response.status, body

    async def status(self, host: str, path: str = "/") -> int:
        """The status code of GET `path` with `Host: host` on the one connection."""
        status, _ = await asyncio.to_thread(self._request, host, path)
        return status

    async def get(self, host: str, path: str = "/") -> dict[str, Any]:
        """The JSON body of a 200 answer on the one connection."""
        status, body = await asyncio.to_thread(self._request, host, path)
        assert status == 200, f"HTTP {status} for {host}{path}: {body[:200]!r}"
        data = json.loads(body)
        assert isinstance(data, dict)
        return data

    def close(self) -> None:
        self._conn.close()
