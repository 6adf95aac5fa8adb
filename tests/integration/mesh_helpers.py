"""Helpers for the `localmesh mesh` tests on the sandbox.

The router agent does not exist yet: its Deployment runs the sandbox's testagent on the
health port instead (the rest of the pod spec is the real one). Shadow pods run the real
`localmesh agent shadow`; the sandbox's pods share one loopback, so its tunnel port binds the
pod's own IP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.marks import parse_expose, parse_version_mark
from localmesh.clustermesh.session import MeshOptions
from localmesh.sandbox import Sandbox
from tests.sandbox_fixtures import kubectl

ROUTER_STAND_IN = (
    "python",
    "-m",
    "localmesh.sandbox.testagent",
    "serve",
    "--port",
    str(m.ROUTER_HEALTH_PORT),
)
SHADOW_ENV = (("LOCALMESH_TUNNEL_BIND", "$(POD_IP)"),)
SERVER_FIELDS = ("resourceVersion", "managedFields", "generation")


def options(local_port: int, mark: str = "dev", **overrides: Any) -> MeshOptions:
    values: dict[str, Any] = {
        "namespace": "billing",
        "service": "billing-api",
        "mark": parse_version_mark(mark),
        "exposed": parse_expose(f"{local_port}:8080"),
        "router_command": ROUTER_STAND_IN,
        "router_ready_path": "/healthz",
        "shadow_env": SHADOW_ENV,
        "ready_timeout": 60.0,
    }
    values.update(overrides)
    return MeshOptions(**values)


@asynccontextmanager
async def local_server() -> AsyncIterator[int]:
    """A process on 'this machine' that the exposed port points at."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def service_json(sb: Sandbox, namespace: str = "billing", name: str = "billing-api") -> Any:
    """`kubectl get -o json` of the Service, without the fields the server manages."""
    out = (await kubectl(sb, "get", "service", name, "-n", namespace, "-o", "json")).check()
    obj = json.loads(out.stdout)
    for key in SERVER_FIELDS:
        obj["metadata"].pop(key, None)
    return obj


async def managed_objects(sb: Sandbox, namespace: str = "billing") -> list[str]:
    """Every object labelled as localmesh's in `namespace`, as kind/name (pods that are
    terminating excluded: they are on their way out)."""
    out = (
        await kubectl(
            sb,
            "get",
            "deployments,services,pods,leases,secrets,serviceaccounts,roles,rolebindings",
            "-n",
            namespace,
            "-l",
            m.managed_selector(),
            "-o",
            "json",
        )
    ).check()
    items = json.loads(out.stdout)["items"]
    return sorted(
        f"{i['kind']}/{i['metadata']['name']}"
        for i in items
        if not i["metadata"].get("deletionTimestamp")
    )


async def wait_managed_gone(sb: Sandbox, namespace: str = "billing", seconds: float = 30) -> None:
    """Until nothing of localmesh's is left in `namespace` (pods of a deleted Deployment
    go asynchronously, as in a real cluster)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while left := await managed_objects(sb, namespace):
        assert loop.time() < until, f"left behind: {left}"
        await asyncio.sleep(0.2)
