"""Helpers for the port-forward tests: backends on pod-like loopback IPs, a minimal API
server that routes `pods/{pod}/portforward` to `handle_portforward`, and kubectl runs.

The minimal API answers just what `kubectl port-forward pod/NAME` asks (version,
discovery, the pod), over plain HTTP, so the port-forward protocols are tested on their
own; the full sandbox API server has its own kubectl tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from localmesh.sandbox.portforward import close_portforwards, handle_portforward
from tests.ports import free_port as free_port  # noqa: PLC0414 - re-exported for callers

POD_IP = "127.0.55.1"
REFUSING_IP = "127.0.55.2"  # nothing ever listens here


@dataclass
class EchoBackend:
    """A TCP echo server on a pod IP; counts accepted connections."""

    host: str
    port: int
    server: asyncio.Server
    accepted: int = 0
    open_connections: int = 0


@contextlib.asynccontextmanager
async def echo_backend(host: str = POD_IP) -> AsyncIterator[EchoBackend]:
    backend: EchoBackend

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend.accepted += 1
        backend.open_connections += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            backend.open_connections -= 1
            writer.close()

    server = await asyncio.start_server(serve, host, 0)
    port = server.sockets[0].getsockname()[1]
    backend = EchoBackend(host, port, server)
    try:
        yield backend
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def http_backend(host: str = POD_IP) -> AsyncIterator[int]:
    """An HTTP server on a pod IP: `/` names the pod, `/bytes/N` returns N bytes."""

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"pod": "billing-api-0", "path": request.path})

    async def many(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.match_info["n"]))

    async def upload(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/bytes/{n}", many)
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port: int = runner.addresses[0][1]
    try:
        yield port
    finally:
        await runner.cleanup()


@dataclass
class MiniApi:
    url: str
    kubeconfig: Path
    requests: list[tuple[str, str, str]]  # (method, path, Upgrade header)


@contextlib.asynccontextmanager
async def mini_api(
    tmp_path: Path,
    *,
    minor: int = 33,
    pod_ip: str = POD_IP,
    idle_timeout: float | None = None,
) -> AsyncIterator[MiniApi]:
    """Serve version, discovery and one Running pod `billing-api-0` in `default`."""
    requests: list[tuple[str, str, str]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        requests.append((request.method, request.path, request.headers.get("Upgrade", "")))
        result: web.StreamResponse = await handler(request)
        return result

    async def version(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "major": "1",
                "minor": str(minor),
                "gitVersion": f"v1.{minor}.0",
                "platform": "linux/amd64",
            }
        )

    async def api(_: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"]})

    async def apis(_: web.Request) -> web.Response:
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})

    async def api_v1(_: web.Request) -> web.Response:
        pods = {
            "name": "pods",
            "singularName": "pod",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["get", "list", "watch"],
            "shortNames": ["po"],
        }
        forward = {
            "name": "pods/portforward",
            "namespaced": True,
            "kind": "PodPortForwardOptions",
            "verbs": ["create", "get"],
        }
        return web.json_response(
            {"kind": "APIResourceList", "groupVersion": "v1", "resources": [pods, forward]}
        )

    async def pod(request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["pod"]
        if name != "billing-api-0":
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                    "message": f'pods "{name}" not found',
                },
                status=404,
            )
        return web.json_response(
            {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {"name": name, "namespace": ns, "uid": "0000-1111"},
                "spec": {"containers": [{"name": "app", "image": "http-echo"}]},
                "status": {"phase": "Running", "podIP": pod_ip},
            }
        )

    async def portforward(request: web.Request) -> web.StreamResponse:
        return await handle_portforward(request, pod_ip, idle_timeout=idle_timeout)

    app = web.Application(middlewares=[record])
    app.on_shutdown.append(close_portforwards)
    app.router.add_get("/version", version)
    app.router.add_get("/api", api)
    app.router.add_get("/apis", apis)
    app.router.add_get("/api/v1", api_v1)
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}", pod)
    app.router.add_route("GET", "/api/v1/namespaces/{ns}/pods/{pod}/portforward", portforward)
    app.router.add_route("POST", "/api/v1/namespaces/{ns}/pods/{pod}/portforward", portforward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: mini\n  cluster:\n    server: {url}\n"
        "users:\n- name: mini\n  user: {}\n"
        "contexts:\n- name: mini\n  context: {cluster: mini, user: mini, namespace: default}\n"
        "current-context: mini\n"
    )
    try:
        yield MiniApi(url, kubeconfig, requests)
    finally:
        await runner.cleanup()


def kubectl_binary(minor: int) -> str:
    """The versioned kubectl beside the dispatcher (`kubectl.1.<minor>`)."""
    dispatcher = shutil.which("kubectl")
    assert dispatcher is not None, "kubectl is not installed"
    real = Path(dispatcher).resolve()
    binary = real.parent / f"kubectl.1.{minor}"
    assert binary.exists(), f"{binary} is missing"
    return str(binary)


FORWARDING = re.compile(rb"Forwarding from 127\.0\.0\.1:(\d+)")


@dataclass
class KubectlForward:
    process: asyncio.subprocess.Process
    local_port: int
    stderr: bytearray


@contextlib.asynccontextmanager
async def kubectl_port_forward(
    kubeconfig: Path,
    target: str,
    remote_port: int,
    *,
    kubectl: str = "kubectl",
    env: Mapping[str, str] | None = None,
    namespace: str | None = None,
    startup: float = 30.0,
) -> AsyncIterator[KubectlForward]:
    """Run `kubectl port-forward TARGET :PORT`; yields once it prints its local port."""
    args = [kubectl, "--kubeconfig", str(kubeconfig)]
    if namespace:
        args += ["-n", namespace]
    args += ["port-forward", "--address", "127.0.0.1", target, f":{remote_port}"]
    # kubectl (and the dispatcher that picks kubectl's minor from the server's /version)
    # caches discovery per host:port: a server started earlier on the same port would
    # answer for this one. A private cache per forward keeps every run independent.
    cache_dir = tempfile.mkdtemp(prefix="kube-cache-")
    full_env = {**os.environ, "KUBECACHEDIR": cache_dir, **(env or {})}
    process = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
    )
    assert process.stdout is not None and process.stderr is not None
    stderr = bytearray()

    async def drain_stderr() -> None:
        assert process.stderr is not None
        while chunk := await process.stderr.read(4096):
            stderr.extend(chunk)

    stderr_task = asyncio.create_task(drain_stderr(), name="kubectl-stderr")
    try:
        async with asyncio.timeout(startup):
            while True:
                line = await process.stdout.readline()
                if not line:
                    await stderr_task
                    raise AssertionError(f"kubectl exited early: {bytes(stderr).decode()}")
                match = FORWARDING.search(line)
                if match:
                    break
        stdout_task = asyncio.create_task(_drain(process.stdout), name="kubectl-stdout")
        try:
            yield KubectlForward(process, int(match.group(1)), stderr)
        finally:
            stdout_task.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stderr_task
        shutil.rmtree(cache_dir, ignore_errors=True)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(4096):
        pass


async def run_curl(*args: str, max_time: float = 30.0) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        str(int(max_time)),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out, err


async def wait_until(predicate: Callable[[], bool], deadline: float = 30.0) -> None:
    """Re-check `predicate()` every few milliseconds; fail after `deadline` seconds."""
    async with asyncio.timeout(deadline):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.005)
