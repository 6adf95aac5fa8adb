"""The programs a sandbox pod runs: real servers bound to the pod's own loopback IP.

`http-echo` answers every request with JSON naming the pod and echoing the request,
`grpc-greeter` serves localmesh.api.sandbox.v1.Greeter with reflection and health,
`tcp-echo` sends back whatever it receives, `tcp-banner` first sends a line naming the
pod (a server that speaks first, as SMTP's greeting) then echoes, `frontend` forwards each
request to its downstream service (container env DOWNSTREAM_URL), passing on the headers
that carry a request's identity (PROPAGATE_HEADERS), and answers with its own name and the
downstream's answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from localmesh.api.sandbox.v1 import greeter_pb2, greeter_pb2_grpc
from localmesh.sandbox.dns import ClusterDNS, ClusterResolver
from localmesh.sandbox.ips import share_port, unshare_port

WORKLOADS = ("http-echo", "grpc-greeter", "tcp-echo", "tcp-banner", "frontend")
DOWNSTREAM_ENV = "DOWNSTREAM_URL"
PROPAGATE_ENV = "PROPAGATE_HEADERS"
KEEPALIVE_ENV = "DOWNSTREAM_KEEPALIVE"
# The headers that carry a request's identity and routing mark from hop to hop.
DEFAULT_PROPAGATED = ("version", "baggage", "traceparent", "x-request-id")
DOWNSTREAM_TIMEOUT = 30.0
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
    env: Mapping[str, str] = field(default_factory=dict)  # the container's plain env values
    dns: ClusterDNS | None = None  # the cluster's DNS, for workloads that call services
    listen_host: str | None = None  # a shared sandbox (ips.py): here, at a port of its own

    def listen_on(self, port: int) -> tuple[str, int]:
        """Where the server of container port `port` binds."""
        return (self.listen_host, 0) if self.listen_host else (self.ip, port)


def plain_env(pod: Mapping[str, Any] | None, container: str) -> dict[str, str]:
    """A container's env entries that have a plain value (valueFrom is not resolved)."""
    for c in ((pod or {}).get("spec") or {}).get("containers") or []:
        if c.get("name") == container:
            return {
                str(e["name"]): str(e["value"])
                for e in c.get("env") or []
                if isinstance(e, dict) and "name" in e and isinstance(e.get("value"), str)
            }
    return {}


class Listener(Protocol):
    """A running server of one container port; close() stops it and drops its connections."""

    async def close(self) -> None: ...


def _bound_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


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
        self.bound = 0

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        host, at = self.pod.listen_on(port)
        self.asyncio_server = await loop.create_server(self.server, host, at, reuse_address=True)
        self.bound = _bound_port(self.asyncio_server)

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
        self.bound = 0

    async def start(self, port: int) -> None:
        host, at = self.pod.listen_on(port)
        self.server = await asyncio.start_server(self.handle, host, at, reuse_address=True)
        self.bound = _bound_port(self.server)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await self.greet(writer)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def greet(self, writer: asyncio.StreamWriter) -> None:
        """Nothing: an echo server waits for the client."""

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
        self.bound = 0
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
        host, at = self.pod.listen_on(port)
        try:
            bound = self.server.add_insecure_port(f"{host}:{at}")
        except RuntimeError as exc:
            raise OSError(98, f"cannot bind {host}:{at}: {exc}") from None
        if bound == 0 or (at and bound != at):
            raise OSError(98, f"cannot bind {host}:{at}")
        self.bound = bound
        await self.server.start()
        for service in ("", "localmesh.api.sandbox.v1.Greeter"):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self.server.stop(0)


def check_downstream(url: str) -> str | None:
    """Why `url` cannot be a frontend's downstream, or None when it can."""
    try:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname
        _ = parsed.port  # raises on a bad port
    except ValueError:
        host = None
    if not host or parsed.scheme != "http":
        return f"{url!r} is not an http:// URL"
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: the cluster resolver answers with loopback addresses only
    return None if literal.is_loopback else f"{url} is not on this machine"


class _Frontend:
    """An HTTP service that calls another: each request goes on to the downstream URL (its
    path and query appended), carrying only the propagated headers."""

    def __init__(self, pod: PodInfo) -> None:
        self.pod = pod
        self.downstream = pod.env.get(DOWNSTREAM_ENV, "")
        problem = check_downstream(self.downstream)
        # A misconfigured frontend still starts and says what is wrong on every request.
        self.config_error = f"{DOWNSTREAM_ENV}: {problem}" if problem else None
        names = pod.env.get(PROPAGATE_ENV)
        listed = names.split(",") if names is not None else DEFAULT_PROPAGATED
        self.propagate = tuple(h.strip().lower() for h in listed if h.strip())
        # New connection per call unless asked: a selector change shows on the next request
        # (pooled connections keep their pod, as through a real kube-proxy).
        self.keepalive = pod.env.get(KEEPALIVE_ENV, "").lower() in ("1", "true", "yes")
        self.server = web.Server(self.handle)
        self.asyncio_server: asyncio.Server | None = None
        self.session: aiohttp.ClientSession | None = None
        self.bound = 0

    async def start(self, port: int) -> None:
        resolver = ClusterResolver(self.pod.dns, self.pod.namespace)
        connector = aiohttp.TCPConnector(resolver=resolver, force_close=not self.keepalive)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=DOWNSTREAM_TIMEOUT),
        )
        loop = asyncio.get_running_loop()
        host, at = self.pod.listen_on(port)
        try:
            self.asyncio_server = await loop.create_server(
                self.server, host, at, reuse_address=True
            )
        except OSError:
            await self.session.close()
            raise
        self.bound = _bound_port(self.asyncio_server)

    def _target(self, request: web.BaseRequest) -> str:
        return self.downstream.rstrip("/") + request.raw_path

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path in ("/health", "/healthz"):
            return web.json_response({"status": "ok", "pod": self.pod.name})
        assert self.session is not None
        if self.config_error is not None:
            return web.json_response({"pod": self.pod.name, "error": self.config_error}, status=500)
        body = await request.read()
        # A header sent several times (baggage may be) goes on as one comma-joined value.
        headers = {
            h: ",".join(request.headers.getall(h)) for h in self.propagate if h in request.headers
        }
        target = self._target(request)
        answer: dict[str, Any] = {
            "pod": self.pod.name,
            "namespace": self.pod.namespace,
            "pod_ip": self.pod.ip,
            "workload": "frontend",
            "propagated": headers,
        }
        try:
            async with self.session.request(
                request.method, target, headers=headers, data=body or None
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            answer["downstream"] = {"url": str(target), "error": str(exc) or type(exc).__name__}
            return web.json_response(answer, status=502)
        try:
            downstream_body: Any = json.loads(raw)
        except ValueError:
            downstream_body = raw.decode(errors="replace")
        answer["downstream"] = {"url": str(target), "status": status, "body": downstream_body}
        return web.json_response(answer, status=status)

    async def close(self) -> None:
        if self.asyncio_server is not None:
            self.asyncio_server.close()
        await self.server.shutdown(0.1)
        if self.asyncio_server is not None:
            await self.asyncio_server.wait_closed()
        if self.session is not None:
            await self.session.close()


class _TcpBanner(_TcpEcho):
    async def greet(self, writer: asyncio.StreamWriter) -> None:
        writer.write(f"banner from {self.pod.name}\n".encode())
        await writer.drain()


_FACTORIES: dict[str, Callable[[PodInfo], Any]] = {
    "http-echo": _HttpEcho,
    "tcp-echo": _TcpEcho,
    "tcp-banner": _TcpBanner,
    "grpc-greeter": _GrpcGreeter,
    "frontend": _Frontend,
}


class _SharedListener:
    """A server of a shared sandbox's pod: reachable as pod IP and port through `ips.dial`
    for as long as it runs."""

    def __init__(self, server: Any, pod_ip: str, port: int) -> None:
        self._server = server
        self._key = (pod_ip, port, int(server.bound))
        share_port(*self._key)

    async def close(self) -> None:
        unshare_port(*self._key)
        await self._server.close()


async def start_listener(workload: str, pod: PodInfo, port: int) -> Listener:
    """Start `workload` on pod.ip:port (a shared sandbox: a port of its own on
    pod.listen_host, see ips.py); OSError if the address is taken."""
    server = _FACTORIES[workload](pod)
    start: Callable[[int], Awaitable[None]] = server.start
    await start(port)
    if pod.listen_host:
        return _SharedListener(server, pod.ip, port)
    listener: Listener = server
    return listener


def default_port(workload: str) -> int:
    return {
        "http-echo": 8080,
        "grpc-greeter": 50051,
        "tcp-echo": 9000,
        "tcp-banner": 9001,
        "frontend": 8080,
    }[workload]
