"""A meshed Service with more than HTTP on it: the router passes the ports no session
exposes through byte for byte (a server that speaks first keeps working through the cluster
IP), and `--expose` of a port declared as another protocol is refused before anything
changes. Real CLI, real router pod with its Envoy, real curl and sockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from localmesh.sandbox import Sandbox
from localmesh.sandbox.workloads import image_for
from tests import sandbox_fixtures
from tests.e2e.test_mesh_cli_refusals import error_lines
from tests.e2e.test_mesh_router import (
    body_of,
    cluster_ip,
    comparable,
    local_app,
    start_mesh,
    stop_mesh,
)
from tests.e2e.up_helpers import eventually, run_cli
from tests.integration.mesh_helpers import (
    local_server,
    managed_objects,
    namespace_objects,
    service_json,
    wait_managed_gone,
)

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

NAME = "kv-api"
HTTP, KV, TLS = 8080, 6379, 8443
# Bytes no HTTP parser would pass: a TLS record header, NUL, 0xff, a bare CR.
BINARY = b"\x16\x03\x01\x00\x05hello\x00\xff\rbinary\n"


def kv_api() -> list[dict[str, Any]]:
    """Pods serving HTTP on 8080 and a server-first TCP protocol on 6379 and 8443; the
    Service names those two as redis and https."""
    labels = {"app": NAME}
    containers = [
        {"name": "web", "image": image_for("http-echo"),
         "ports": [{"name": "http", "containerPort": HTTP}]},
        {"name": "kv", "image": image_for("tcp-banner"),
         "ports": [{"name": "kv", "containerPort": KV}, {"name": "tls", "containerPort": TLS}]},
    ]  # fmt: skip
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": "billing"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": NAME, "namespace": "billing"},
            "spec": {
                "selector": labels,
                "ports": [
                    {"name": "http", "port": HTTP, "targetPort": "http"},
                    {"name": "redis", "port": KV, "targetPort": KV},
                    {"name": "https", "port": TLS, "targetPort": TLS},
                ],
            },
        },
    ]


async def banner_and_echo(ip: str, port: int) -> str:
    """Connect, read the server's greeting, send bytes and read them back: the greeting."""
    reader, writer = await asyncio.open_connection(ip, port)
    try:
        async with asyncio.timeout(5):
            greeting = (await reader.readline()).decode()
            writer.write(BINARY)
            await writer.drain()
            echoed = await reader.readexactly(len(BINARY))
    finally:
        writer.close()
    assert echoed == BINARY
    return greeting


async def served_by_pods(ip: str) -> bool:
    for port in (KV, TLS):
        if not (await banner_and_echo(ip, port)).startswith(f"banner from {NAME}-"):
            return False
    plain = await body_of(f"http://{ip}:{HTTP}/")
    return plain is not None and json.loads(plain)["pod"].startswith(f"{NAME}-")


async def test_tcp_ports_pass_through_while_the_http_port_is_meshed(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.apply(kv_api())
    ip = await cluster_ip(sandbox, "billing", NAME)
    await eventually(lambda: served_by_pods(ip), seconds=60, what="kv-api's pods serving")
    before = comparable(await service_json(sandbox, "billing", NAME))
    async with local_app("ana") as port:
        proc = await start_mesh(sandbox, tmp_path, f"billing/{NAME}", f"{port}:{HTTP}", "dev")
        try:
            meshed = await service_json(sandbox, "billing", NAME)
            assert meshed["spec"]["selector"] != before["spec"]["selector"]  # the router's

            async def marked() -> str | None:
                return await body_of(f"http://{ip}:{HTTP}/x", {"version": "dev"})

            answer = await eventually(marked, seconds=30, what="the marked request served here")
            assert answer == f"ana served /x for {ip}:{HTTP}"
            # Unmarked HTTP to the pods; the server-first ports, through the router, keep
            # their greeting and carry any bytes both ways.
            assert await served_by_pods(ip)
        finally:
            await stop_mesh(proc)
    assert proc.returncode == 0
    await wait_managed_gone(sandbox)
    assert comparable(await service_json(sandbox, "billing", NAME)) == before
    assert await served_by_pods(ip)


@pytest.mark.parametrize("port", [TLS, KV], ids=["https", "redis"])
async def test_exposing_a_port_declared_not_http_is_one_line_and_changes_nothing(
    sandbox: Sandbox, tmp_path: Path, port: int
) -> None:
    sandbox.apply(kv_api())
    service_before = await service_json(sandbox, "billing", NAME)
    objects_before = namespace_objects(sandbox)
    async with local_server() as local:
        result = await run_cli(
            tmp_path, "mesh", f"billing/{NAME}", "--expose", f"{local}:{port}",
            "--version-mark", "dev", kubeconfig=sandbox.kubeconfig_path,
        )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    protocol = "https" if port == TLS else "redis"
    assert error_lines(result.stderr) == [
        f"service billing/{NAME} port {protocol}:{port}->{port} is declared {protocol} (its "
        "name or appProtocol), not HTTP: marks are HTTP headers, so only an HTTP or gRPC "
        "port can be exposed"
    ]
    assert result.stdout == ""
    assert await service_json(sandbox, "billing", NAME) == service_before
    assert namespace_objects(sandbox) == objects_before
    assert await managed_objects(sandbox) == []
