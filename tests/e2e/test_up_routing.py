"""`localmesh up` (the real CLI) on the seed's example: HTTP and gRPC routed by host.

One `up` serves the whole module (the tests only read from it): the seed's services.yaml
with only listener_port changed, a copy of a hosts file to edit, a private runtime dir.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from localmesh.sandbox import Sandbox
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    PF_LINE,
    UpProcess,
    curl,
    free_port,
    grpc_greet,
    http_get,
    private_runtime_dir,
    run_cli,
    seed_services,
    start_up,
    status_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

HOSTS_BEFORE = b"127.0.0.1 localhost\n::1 localhost ip6-localhost\n"


@dataclass
class Mesh:
    up: UpProcess
    port: int
    runtime_dir: Path
    hosts_file: Path
    sandbox: Sandbox


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(
    up_sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    tmp = tmp_path_factory.mktemp("up-routing")
    port = free_port()
    services = tmp / "services.yaml"
    services.write_text(seed_services(port))
    hosts_file = tmp / "hosts"
    hosts_file.write_bytes(HOSTS_BEFORE)
    runtime_dir = private_runtime_dir(tmp)
    up = await start_up(
        runtime_dir, services, up_sandbox.kubeconfig_path, "--hosts-file", hosts_file
    )
    try:
        yield Mesh(up, port, runtime_dir, hosts_file, up_sandbox)
    finally:
        code = await up.stop()
        assert code == 0, up.describe()


async def test_prints_the_lines_users_know(mesh: Mesh) -> None:
    lines = mesh.up.stdout
    assert lines[0] == f"{mesh.hosts_file} updated successfully", mesh.up.describe()
    pf = [PF_LINE.match(line) for line in lines if line.startswith("pf: ")]
    assert all(pf), lines
    targets = {(m["host"], m["ns"], m["svc"], m["port"]) for m in pf if m}
    assert targets == {
        ("users-api.localhost", "users", "users-api", "50051"),
        ("billing-api.localhost", "billing", "billing-api", "8080"),
        ("admin.localhost", "admin", "admin-web", "8080"),
    }
    bootstrap = next(line for line in lines if line.startswith("envoy config: "))
    path = Path(bootstrap.removeprefix("envoy config: "))
    assert path.is_relative_to(mesh.runtime_dir), bootstrap
    assert "ads_config" in json.loads(await asyncio.to_thread(path.read_text))["dynamic_resources"]
    assert lines[-1] == f"listen: 127.0.0.1:{mesh.port}"


async def test_http_routed_by_host_header(mesh: Mesh) -> None:
    for host, namespace in (("billing-api.localhost", "billing"), ("admin.localhost", "admin")):
        reply = await http_get(mesh.port, host, "/hello")
        assert reply.status == 200, reply
        data = reply.json()
        assert data["namespace"] == namespace
        assert data["path"] == "/hello"
        assert data["pod"] in {p["metadata"]["name"] for p in mesh.sandbox.pods(namespace)}


async def test_curl_resolves_the_localhost_name_itself(mesh: Mesh) -> None:
    reply = await curl(f"http://billing-api.localhost:{mesh.port}/")
    assert reply.status == 200, reply
    assert reply.json()["namespace"] == "billing"
    assert reply.json()["host"] == f"billing-api.localhost:{mesh.port}"


async def test_grpc_routed_by_authority_with_reflection(mesh: Mesh) -> None:
    reply = await grpc_greet(mesh.port, "users-api.localhost")
    assert reply.namespace == "users"
    assert reply.message.startswith("Hello, e2e!")
    assert "localmesh.api.sandbox.v1.Greeter" in reply.services
    assert "grpc.reflection.v1alpha.ServerReflection" in reply.services


async def test_unknown_host_gets_404_from_envoy(mesh: Mesh) -> None:
    reply = await http_get(mesh.port, "nobody.localhost")
    assert reply.status == 404, reply


async def test_hosts_file_has_the_entries_and_keeps_the_rest(mesh: Mesh) -> None:
    text = mesh.hosts_file.read_bytes()
    assert HOSTS_BEFORE in text
    for host in ("users-api.localhost", "billing-api.localhost", "admin.localhost"):
        assert f"127.0.0.1 {host}".encode() in text, text


async def test_status_json(mesh: Mesh) -> None:
    await http_get(mesh.port, "billing-api.localhost")
    code, status = await status_json(mesh.runtime_dir)
    assert code == 0, status
    assert status["pid"] == mesh.up.proc.pid
    assert status["listener_port"] == mesh.port
    assert status["envoy"]["running"] is True
    assert status["envoy"]["restarts"] == 0
    hosts = {h["host"]: h for h in status["hosts"]}
    assert set(hosts) == {"users-api.localhost", "billing-api.localhost", "admin.localhost"}
    billing = hosts["billing-api.localhost"]
    assert (billing["namespace"], billing["service"], billing["target_port"]) == (
        "billing",
        "billing-api",
        8080,
    )
    assert billing["type"] == "http" and hosts["users-api.localhost"]["type"] == "grpc"
    ready = {p["metadata"]["name"] for p in mesh.sandbox.pods("billing")}
    assert {p["name"] for p in billing["pods"]} == ready
    assert all(p["state"] == "ready" and p["local_port"] > 0 for p in billing["pods"])
    printed = {m["host"]: m["via"] for m in map(PF_LINE.match, mesh.up.stdout) if m}
    for host, entry in hosts.items():  # the forwarders `up` printed are the ones serving
        via = {f"127.0.0.1:{p['local_port']}" for p in entry["pods"]}
        assert set(printed[host].split(", ")) == via, (host, printed, entry["pods"])
    assert billing["requests"] >= 1
    assert all(x["acked_version"] == x["served_version"] for x in status["xds"]), status["xds"]


async def test_status_text(mesh: Mesh) -> None:
    result = await run_cli(mesh.runtime_dir, "status")
    assert result.returncode == 0, result
    assert "healthy" in result.stdout.splitlines()[0]
    assert f"listen: 127.0.0.1:{mesh.port}" in result.stdout
    for host in ("users-api.localhost", "billing-api.localhost", "admin.localhost"):
        assert host in result.stdout
    assert "billing/billing-api:http -> 8080" in result.stdout
    assert "Traceback" not in result.stderr


async def test_a_second_up_with_the_same_name_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    services = tmp_path / "services.yaml"
    services.write_text(seed_services(free_port()))
    result = await run_cli(
        mesh.runtime_dir,
        "up",
        "-f",
        services,
        "--no-edit-hosts",
        kubeconfig=mesh.sandbox.kubeconfig_path,
    )
    assert result.returncode != 0
    assert "localmesh: error:" in result.stderr and str(mesh.up.proc.pid) in result.stderr
    assert "Traceback" not in result.stderr
    assert (await http_get(mesh.port, "billing-api.localhost")).status == 200


async def test_dump_envoy_config_live(mesh: Mesh) -> None:
    result = await run_cli(mesh.runtime_dir, "dump-envoy-config", "--live", "-o", "json")
    assert result.returncode == 0, result
    _, status = await status_json(mesh.runtime_dir)
    for host in status["hosts"]:
        assert host["host"] in result.stdout
        for pod in host["pods"]:
            assert f'"port_value": {pod["local_port"]}' in result.stdout, pod
