"""The programs a sandbox pod runs: real servers bound to the pod's own loopback IP.

`http-echo` answers every request with JSON naming the pod and echoing the request,
`grpc-greeter` serves localmesh.api.sandbox.v1.Greeter with reflection and health,
`tcp-echo` sends back whatever it receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from localmesh.api.sandbox.v1 import greeter_pb2, greeter_pb2_grpc

WORKLOADS = ("http-echo", "grpc-greeter", "tcp-echo")
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
IMAGE_PREFIX = "localmesh.dev/sandbox/"


def image_for(workload: str) -> str:
    return f"{IMAGE_PREFIX}{workload}:latest"


def workload_of_image(image: str) -> str | None:
    """`localmesh.dev/sandbox/http-echo:latest` (or any registry path ending so) -> http-echo."""
    last = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    return last if last in WORKLOADS else None


@dataclass(frozen=True)
class PodInfo:
    name: str
    namespace: str
    ip: str


class Listener(Protocol):
    """A running server of one container port; close() stops it and drops its connections."""

    async def close(self) -> None: ...


def _number(text: str | None, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default


class _HttpEcho:
    def __init__(self, pod: PodInfo) -> None:
        self.pod = pod
        self.server = web.Server(self.handle)
        self.asyncio_server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.asyncio_server = await loop.create_server(
            self.server, self.pod.ip, port, reuse_address=True
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path in ("/health", "/healthz"):
            return web.json_response({"status": "ok", "pod": self.pod.name})
        body = await request.read()
        delay = _number(request.query.get("delay"), 0.0)
        if delay > 0:
            await asyncio.sleep(min(delay, 30.0))  # a slow backend, on request
        status = int(_number(request.query.get("status"), 200))
        if not 200 <= status <= 599:
            status = 400
        payload: dict[str, Any] = {
            "pod": self.pod.name,
            "namespace": self.pod.namespace,
            "pod_ip": self.pod.ip,
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "host": request.host,
            "headers": dict(request.headers),
            "body_bytes": len(body),
        }
        return web.json_response(payload, status=status)

    async def close(self) -> None:
        if self.asyncio_server is not None:
            self.asyncio_server.close()
        await self.server.shutdown(0.1)
        if self.asyncio_server is not None:
            await self.asyncio_server.wait_closed()


class _TcpEcho:
    def __init__(self, pod: PodInfo) -> None:
        self.pod = pod
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self.handle, self.pod.ip, port, reuse_address=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.writers):
            w.close()
        if self.server is not None:
            await self.server.wait_closed()


class _Greeter(greeter_pb2_grpc.GreeterServicer):
    def __init__(self, pod: PodInfo) -> None:
        self.pod = pod

    def _reply(self, request: Any, context: Any, index: int | None = None) -> Any:
        suffix = f" #{index}" if index is not None else ""
        return greeter_pb2.HelloReply(
            message=f"Hello, {request.name or 'world'}{suffix}! (from {self.pod.name})",
            pod=self.pod.name,
            namespace=self.pod.namespace,
            pod_ip=self.pod.ip,
            metadata={k: v for k, v in context.invocation_metadata() if isinstance(v, str)},
        )

    async def SayHello(self, request: Any, context: Any) -> Any:
        return self._reply(request, context)

    async def SayHelloStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for i in range(max(1, request.count)):
            yield self._reply(request, context, i)


class _GrpcGreeter:
    def __init__(self, pod: PodInfo) -> None:
        self.pod = pod
        # No SO_REUSEPORT: a second bind of the same IP and port must fail, as in a real pod.
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        add_greeter: Any = greeter_pb2_grpc.add_GreeterServicer_to_server
        add_greeter(_Greeter(pod), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            greeter_pb2.DESCRIPTOR.services_by_name["Greeter"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            REFLECTION_V1,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        # grpcurl and recent clients ask grpc.reflection.v1 first; its messages are the
        # v1alpha ones under a new service name, so the same servicer answers both.
        servicer = reflection.aio.ReflectionServicer(names)
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    REFLECTION_V1, {"ServerReflectionInfo": handler}
                ),
            )
        )

    async def start(self, port: int) -> None:
        try:
            bound = self.server.add_insecure_port(f"{self.pod.ip}:{port}")
        except RuntimeError as exc:
            raise OSError(98, f"cannot bind {self.pod.ip}:{port}: {exc}") from None
        if bound != port:
            raise OSError(98, f"cannot bind {self.pod.ip}:{port}")
        await self.server.start()
        for service in ("", "localmesh.api.sandbox.v1.Greeter"):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self.server.stop(0)


_FACTORIES: dict[str, Callable[[PodInfo], Any]] = {
    "http-echo": _HttpEcho,
    "tcp-echo": _TcpEcho,
    "grpc-greeter": _GrpcGreeter,
}


async def start_listener(workload: str, pod: PodInfo, port: int) -> Listener:
    """Start `workload` on pod.ip:port; OSError if the address is taken."""
    server = _FACTORIES[workload](pod)
    start: Callable[[int], Awaitable[None]] = server.start
    await start(port)
    listener: Listener = server
    return listener


def default_port(workload: str) -> int:
    return {"http-echo": 8080, "grpc-greeter": 50051, "tcp-echo": 9000}[workload]
