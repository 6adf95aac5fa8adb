"""`localmesh mesh` end to end on the sandbox: the real CLI process, the real router (the
`localmesh agent router` and its Envoy) and shadow agent, the reverse tunnel through the
port-forwarder, real curl and kubectl beside.

These tests reach the shadow pod directly, as the router does for a marked request; the
routing itself through the Service's ClusterIP is tested in test_mesh_router."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from localmesh.cli.demo_mesh import serve_on_loopback
from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.session import Permission
from localmesh.kube.objects import KubeObjects
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.up_helpers import LOCALMESH, ROOT, cli_env, curl, eventually, run_cli
from tests.integration.mesh_helpers import (
    as_rules,
    kubeconfig_with,
    managed_objects,
    routed_selector,
    service_json,
    wait_managed_gone,
)

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory


@pytest.fixture
async def local_app() -> AsyncIterator[int]:
    """The developer's process: answers every request with a fixed body."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=f"served locally {request.path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serve_on_loopback(app) as port:
        yield port


def mesh_args(sb: Sandbox, port: int) -> list[str]:
    return [
        "mesh",
        "billing/billing-api",
        "--expose",
        f"{port}:8080",
        "--versionMark",
        "dev",
        "--kubeconfig",
        str(sb.kubeconfig_path),
    ]


async def start_mesh(
    sb: Sandbox, port: int, tmp_path: Path
) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        str(LOCALMESH),
        *mesh_args(sb, port),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(tmp_path, sb.kubeconfig_path),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(90):
        while not any(line.startswith("Ctrl-C") for line in lines):
            raw = await proc.stdout.readline()
            if not raw:
                assert proc.stderr is not None
                err = (await proc.stderr.read()).decode()
                raise AssertionError(f"mesh exited: {''.join(lines)}{err}")
            lines.append(raw.decode())
    return proc, "".join(lines)


def readme_example(output: str, local_port: int) -> list[str]:
    """The README's example output of `mesh`, with this run's session id and local port
    (the README shows the same command as mesh_args, with local port 9090)."""
    found = re.search(r"billing-api-localmesh-dev-([0-9a-f]{6})", output)
    assert found, output
    text = (ROOT / "README.md").read_text()
    start = text.index("\nmeshed billing/billing-api (mode auto)\n")
    end = text.index("\n```", start)
    example = text[start + 1 : end].replace("4f2a9c", found.group(1))
    return example.replace("127.0.0.1:9090", f"127.0.0.1:{local_port}").splitlines()


async def shadow_ip(sb: Sandbox) -> str:
    out = (
        await sandbox_fixtures.kubectl(
            sb, "get", "pods", "-n", "billing", "-l", f"{m.COMPONENT_LABEL}=shadow", "-o", "json"
        )
    ).check()
    (pod,) = json.loads(out.stdout)["items"]
    return str(pod["status"]["podIP"])


async def test_mesh_serves_through_the_shadow_and_ctrl_c_restores(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    before = await service_json(sandbox)
    proc, output = await start_mesh(sandbox, local_app, tmp_path)
    try:
        assert readme_example(output, local_app) == output.splitlines()
        assert "created Deployment billing/billing-api-localmesh-router" in output
        assert "send the header  version: dev" in output
        assert "curl -H 'version: dev' http://billing-api.billing:8080/" in output
        meshed = await service_json(sandbox)
        assert meshed["spec"]["selector"] == routed_selector(sandbox)

        # What the router will do for a marked request: connect to the shadow's port.
        ip = await shadow_ip(sandbox)

        async def served() -> str | None:
            reply = await curl(f"http://{ip}:8080/orders")
            return reply.body if reply.status == 200 else None

        body = await eventually(served, seconds=30, what="a request through the tunnel")
        assert body == "served locally /orders"
        # The shadow is Ready while this machine's tunnel is connected (the router's cue).
        ready = await sandbox_fixtures.kubectl(
            sandbox,
            "wait",
            "--for=condition=Ready",
            "pod",
            "-n",
            "billing",
            "-l",
            f"{m.COMPONENT_LABEL}=shadow",
            "--timeout=30s",
        )
        assert ready.returncode == 0, ready.stderr

        listing = await run_cli(tmp_path, "mesh", "list", kubeconfig=sandbox.kubeconfig_path)
        assert listing.returncode == 0, listing.stderr
        header, row = listing.stdout.splitlines()
        assert header.split()[:4] == ["NAMESPACE", "SERVICE", "MARK", "MODE"]
        assert row.split()[:5] == ["billing", "billing-api", "version:", "dev", "auto"]
        assert f"{local_app}:8080:8080" in row and "live" in row
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "restored billing/billing-api; removed the router" in out.decode()
    assert await service_json(sandbox) == before
    await wait_managed_gone(sandbox)


async def test_killed_mesh_is_undone_by_clean(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    before = await service_json(sandbox)
    proc, _ = await start_mesh(sandbox, local_app, tmp_path)
    proc.kill()
    await proc.wait()
    assert (await service_json(sandbox))["spec"]["selector"] == routed_selector(sandbox)

    async def expired() -> bool:
        listing = await run_cli(tmp_path, "mesh", "list", kubeconfig=sandbox.kubeconfig_path)
        return "expired" in listing.stdout

    await eventually(expired, seconds=40, what="the session's lease to expire", every=0.5)
    kc = sandbox.kubeconfig_path

    async def would_restore() -> str | None:
        dry = await run_cli(tmp_path, "mesh", "clean", "-n", "billing", "--dry-run", kubeconfig=kc)
        assert dry.returncode == 0, dry.stderr
        return dry.stdout if "would restore" in dry.stdout else None

    # Past expiry plus the clock-skew grace, clean takes the session for dead.
    dry = await eventually(would_restore, seconds=40, what="clean to see it dead", every=0.5)
    assert "would restore Service billing/billing-api (selector app=billing-api)" in dry
    assert (await service_json(sandbox))["spec"]["selector"] == routed_selector(sandbox)

    done = await run_cli(tmp_path, "mesh", "recover", "billing/billing-api", kubeconfig=kc)
    assert done.returncode == 0, done.stderr
    assert "restored Service billing/billing-api (selector app=billing-api)" in done.stdout
    assert "deleted Deployment billing/billing-api-localmesh-router" in done.stdout
    assert await service_json(sandbox) == before
    await wait_managed_gone(sandbox)
    again = await run_cli(tmp_path, "mesh", "clean", kubeconfig=kc)
    assert again.stdout.strip() == "nothing to clean"
    assert await managed_objects(sandbox) == []


async def test_cli_errors_are_one_line_and_change_nothing(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    before = await service_json(sandbox)
    kc = sandbox.kubeconfig_path
    cases = {
        ("--expose", f"{local_app}:9999"): "has no port 9999; its ports: http:8080->http",
        ("--expose", "8080", "--shadow-service"): "--shadow-service belongs to --mode manual",
        ("--expose", "1:8080"): "nothing accepts connections on local port 1",
        ("--expose", "x"): "--expose 'x': the port 'x' is not a number",
        ("--expose", "8080", "--versionMark", "host:x"): "'host' is a header proxies",
    }
    for extra, message in cases.items():
        result = await run_cli(tmp_path, "mesh", "billing/billing-api", *extra, kubeconfig=kc)
        assert result.returncode != 0
        assert message in result.stderr
        assert result.stderr.startswith("localmesh: error:") and "Traceback" not in result.stderr
    missing = await run_cli(
        tmp_path, "mesh", "-n", "billing", "nope", "--expose", "1", kubeconfig=kc
    )
    assert "service billing/nope not found" in missing.stderr
    assert await service_json(sandbox) == before
    assert await managed_objects(sandbox) == []


async def test_ctrl_c_while_joining_puts_everything_back(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    before = await service_json(sandbox)
    args = mesh_args(sandbox, local_app)
    # A router that never becomes Ready: the join waits for it until interrupted.
    sandbox.faults.hold_unready("billing", m.router_selector("billing-api"))
    proc = await asyncio.create_subprocess_exec(
        str(LOCALMESH),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(tmp_path, sandbox.kubeconfig_path),
    )

    async def router_created() -> bool:
        return "Deployment/billing-api-localmesh-router" in await managed_objects(sandbox)

    await eventually(router_created, seconds=30, what="the router deployment", every=0.2)
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 130, err.decode()
    assert "interrupted; nothing was left changed" in out.decode()
    assert await service_json(sandbox) == before
    await wait_managed_gone(sandbox)


async def test_list_in_one_namespace_without_cluster_rights(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    admin = KubeObjects.connect(str(sandbox.kubeconfig_path))
    rules = as_rules([Permission("list", "leases", "coordination.k8s.io")])
    kubeconfig = Path(await kubeconfig_with(sandbox, admin, rules))
    everywhere = await run_cli(tmp_path, "mesh", "list", kubeconfig=kubeconfig)
    assert everywhere.returncode == 1
    assert everywhere.stderr.startswith("localmesh: error: forbidden by RBAC (403)")
    assert everywhere.stderr.rstrip().endswith("pass -n NAMESPACE to look in one namespace")
    here = await run_cli(tmp_path, "mesh", "list", "-n", "billing", kubeconfig=kubeconfig)
    assert here.returncode == 0, here.stderr
    assert here.stdout.strip() == "no mesh sessions in namespace billing"
    await admin.close()


async def test_api_server_gone_at_exit_says_how_to_recover(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    before = await service_json(sandbox)
    proc, _ = await start_mesh(sandbox, local_app, tmp_path)
    outage = asyncio.create_task(sandbox.faults.restart_apiserver(downtime=15))

    async def api_down() -> bool:
        result = await sandbox_fixtures.kubectl(sandbox, "get", "ns", "--request-timeout=2s")
        return result.returncode != 0

    await eventually(api_down, seconds=10, what="the API server to stop", every=0.2)
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    assert proc.returncode == 1
    # Lease renewals failing during the outage are logged before the error (as they should).
    message = err.decode()
    assert "localmesh: error: could not leave the mesh of billing/billing-api" in message, message
    assert "`localmesh mesh clean -n billing billing-api` puts the Service back" in message
    await outage
    kc = sandbox.kubeconfig_path

    async def cleaned() -> str | None:
        done = await run_cli(
            tmp_path, "mesh", "clean", "-n", "billing", "billing-api", kubeconfig=kc
        )
        return done.stdout if "restored" in done.stdout else None

    await eventually(cleaned, seconds=60, what="clean to restore the Service", every=1.0)
    assert await service_json(sandbox) == before
    await wait_managed_gone(sandbox)
