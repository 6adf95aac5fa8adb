"""A tiny in-cluster program for sandbox tests, run as the command of a localmesh-image pod.

    python -m localmesh.sandbox.testagent serve [--port 8080]
        HTTP on $POD_IP:PORT: /healthz (200, or 500 after POST /fail), /lease/NAME reads a
        Lease of its namespace, /watch/leases opens a watch, both with the pod's own
        service-account token through the official client's in-cluster loader; /ws is a
        websocket answering each text message with "<pod name> echoes <message>".
    python -m localmesh.sandbox.testagent crash [--code 3]
        prints a line and exits with that code (a crashing container).

The service-account directory is $LOCALMESH_SERVICEACCOUNT_DIR when set (the sandbox),
else the path a kubelet mounts it at.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

SERVICEACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def serviceaccount_dir() -> Path:
    return Path(os.environ.get("LOCALMESH_SERVICEACCOUNT_DIR") or SERVICEACCOUNT_MOUNT)


def _client() -> tuple[Any, str]:
    from kubernetes import client
    from kubernetes.config import incluster_config

    directory = serviceaccount_dir()
    configuration = client.Configuration()
    make_loader: Any = incluster_config.InClusterConfigLoader
    loader = make_loader(
        token_filename=str(directory / "token"), cert_filename=str(directory / "ca.crt")
    )
    loader.load_and_set(configuration)
    return client.ApiClient(configuration), (directory / "namespace").read_text().strip()


def _read_lease(name: str) -> dict[str, Any]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api, namespace = _client()
    try:
        lease: Any = client.CoordinationV1Api(api).read_namespaced_lease(name, namespace)
    except ApiException as exc:
        return {"status": exc.status, "body": str(exc.body)}
    return {"status": 200, "holder": lease.spec.holder_identity}


def _watch_leases() -> dict[str, Any]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api, namespace = _client()
    try:
        resp: Any = client.CoordinationV1Api(api).list_namespaced_lease(
            namespace, watch=True, timeout_seconds=1, _preload_content=False
        )
        resp.release_conn()
    except ApiException as exc:
        return {"status": exc.status, "body": str(exc.body)}
    return {"status": 200}


def serve(port: int) -> None:
    host = os.environ.get("POD_IP")
    if not host:
        sys.exit("testagent: POD_IP is not set (give it status.podIP through the pod's env)")
    healthy = True

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok" if healthy else "failing", status=200 if healthy else 500)

    async def fail(_: web.Request) -> web.Response:
        nonlocal healthy
        healthy = False
        return web.Response(text="failing from now on")

    async def lease(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(_read_lease, request.match_info["name"]))

    async def watch(_: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(_watch_leases))

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        pod = os.environ.get("HOSTNAME", "?")
        async for msg in ws:
            if msg.type == web.WSMsgType.TEXT:
                await ws.send_str(f"{pod} echoes {msg.data}")
        return ws

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", ws_echo)
    app.router.add_post("/fail", fail)
    app.router.add_get("/lease/{name}", lease)
    app.router.add_get("/watch/leases", watch)
    print(f"testagent serving on {host}:{port} as {os.environ.get('HOSTNAME', '?')}", flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testagent")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=8080)
    c = sub.add_parser("crash")
    c.add_argument("--code", type=int, default=1)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.port)
        return 0
    print(f"testagent crashing with exit code {args.code}", flush=True)
    return int(args.code)


if __name__ == "__main__":
    raise SystemExit(main())
