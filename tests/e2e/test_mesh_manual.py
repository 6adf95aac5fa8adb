"""`localmesh mesh --mode manual` end to end on the sandbox: the real CLI, the real shadow
agent and tunnel, real kubectl and curl beside. The sandbox runs no Istio: requests are
sent to the shadow pod's IP as a mesh would route them, and the rules are checked against
Istio's typed models and the Gateway API CRD schema (as the unit tests do)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from localmesh.cli.demo_mesh import serve_on_loopback
from localmesh.clustermesh import manifests as m
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.up_helpers import LOCALMESH, cli_env, curl, eventually, run_cli
from tests.integration.mesh_helpers import managed_objects, service_json, wait_managed_gone
from tests.unit.test_clustermesh_manual import istio_round_trip, validate_http_route

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

KINDS = "services,pods,secrets,leases,deployments,serviceaccounts,roles,rolebindings"
REQUESTS = 12


@pytest.fixture
async def local_app() -> AsyncIterator[int]:
    """The developer's process: answers every request with a fixed body."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=f"served locally {request.path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serve_on_loopback(app) as port:
        yield port


async def kubectl_json(sb: Sandbox, *args: str) -> Any:
    return json.loads((await sandbox_fixtures.kubectl(sb, *args, "-o", "json")).check().stdout)


async def namespace_objects(sb: Sandbox) -> list[Any]:
    """The namespace's objects without what the server manages (versions, status), and
    without pods on their way out."""
    items = (await kubectl_json(sb, "get", KINDS, "-n", "billing"))["items"]
    out = []
    for item in items:
        if item["metadata"].get("deletionTimestamp"):
            continue
        for key in ("resourceVersion", "managedFields", "generation"):
            item["metadata"].pop(key, None)
        item.pop("status", None)
        out.append(item)
    return sorted(out, key=lambda i: (i["kind"], i["metadata"]["name"]))


async def wait_unchanged(sb: Sandbox, before: list[Any]) -> None:
    async def same() -> bool:
        return await namespace_objects(sb) == before

    await eventually(same, seconds=30, what="the namespace as it was", every=0.2)


async def start_manual(
    sb: Sandbox, port: int, tmp_path: Path, *extra: str
) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        str(LOCALMESH),
        "mesh",
        "billing/billing-api",
        "--mode",
        "manual",
        "--expose",
        f"{port}:8080",
        "--versionMark",
        "dev",
        "--kubeconfig",
        str(sb.kubeconfig_path),
        *extra,
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


async def stop(proc: asyncio.subprocess.Process) -> str:
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def ready_shadow(sb: Sandbox) -> Any:
    """The shadow pod, once Ready (while this machine's tunnel is connected)."""
    selector = f"{m.COMPONENT_LABEL}=shadow"
    ready = await sandbox_fixtures.kubectl(
        sb, "wait", "--for=condition=Ready", "pod", "-n", "billing", "-l", selector, "--timeout=30s"
    )
    assert ready.returncode == 0, ready.stderr
    (pod,) = (await kubectl_json(sb, "get", "pods", "-n", "billing", "-l", selector))["items"]
    return pod


async def cluster_ip(sb: Sandbox, name: str) -> str:
    return str(
        (await kubectl_json(sb, "get", "service", name, "-n", "billing"))["spec"]["clusterIP"]
    )


async def served_locally(url: str, count: int) -> int:
    """How many of `count` requests (a new connection each) the local process served."""
    replies = [await curl(url) for _ in range(count)]
    assert all(r.status == 200 for r in replies), [r.status for r in replies]
    return sum(r.body.startswith("served locally") for r in replies)


def printed_rules(output: str) -> list[Any]:
    """The YAML stream printed between 'rules to apply' and '...'."""
    block = output.split("rules to apply (kubectl apply -f -):\n", 1)[1].split("\n...\n", 1)[0]
    return [d for d in yaml.safe_load_all(block) if d is not None]


async def test_manual_shadow_serves_locally_and_ctrl_c_leaves_nothing(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    before = await namespace_objects(sandbox)
    service = await service_json(sandbox)
    rules_file = tmp_path / "rules.yaml"
    proc, output = await start_manual(
        sandbox, local_app, tmp_path, "--istio-output", str(rules_file)
    )
    try:
        assert (
            "meshed billing/billing-api (mode manual): the Service's routing is unchanged" in output
        )
        assert "the plain Service also sends it a share of ordinary requests" in output
        assert "--no-selector-labels gives a shadow that receives only what rules send it" in output

        shadow = await ready_shadow(sandbox)
        labels = shadow["metadata"]["labels"]
        assert labels["app"] == "billing-api" and labels["version"] == "dev"
        assert labels[m.MANAGED_BY_LABEL] == m.MANAGER
        # The Service routes as before; two annotations say who uses it, and how.
        now = await service_json(sandbox)
        assert now["spec"] == service["spec"]
        notes = now["metadata"].pop("annotations")
        assert notes.pop(m.MODE_ANNOTATION) == "manual"
        assert notes.pop(m.SESSIONS_ANNOTATION) == shadow["metadata"]["name"]
        assert notes == service["metadata"].pop("annotations", {})
        assert now == service

        # The rules: printed and written alike, valid, built from the Service's ports and
        # the labels of its pods.
        docs = printed_rules(output)
        assert docs == [d for d in yaml.safe_load_all(rules_file.read_text()) if d]
        dr, vs = docs
        for doc in docs:
            istio_round_trip(doc)
        subsets = {s["name"]: s["labels"] for s in dr["spec"]["subsets"]}
        cluster_pods = (
            await kubectl_json(sandbox, "get", "pods", "-n", "billing", "-l", "app=billing-api")
        )["items"]
        theirs = [p for p in cluster_pods if p["metadata"]["name"] != shadow["metadata"]["name"]]
        assert theirs
        for pod in theirs:  # the cluster subset picks every cluster pod, not the shadow
            assert subsets["cluster"].items() <= pod["metadata"]["labels"].items()
        assert not subsets["cluster"].items() <= labels.items()
        assert subsets["localmesh-dev"].items() <= labels.items()
        service_ports = [p["port"] for p in service["spec"]["ports"]]
        marked, *defaults = vs["spec"]["http"]
        assert marked["match"] == [{"headers": {"version": {"exact": "dev"}}, "port": 8080}]
        assert [d["match"][0]["port"] for d in defaults] == service_ports

        # As a mesh routes a marked request: to the shadow pod's IP.
        ip = shadow["status"]["podIP"]

        async def through_shadow() -> str | None:
            reply = await curl(f"http://{ip}:8080/orders")
            return reply.body if reply.status == 200 else None

        body = await eventually(through_shadow, seconds=30, what="a request through the tunnel")
        assert body == "served locally /orders"

        # The caveat: without rules, the plain Service sends the shadow a share of ordinary
        # requests (one cluster pod + the shadow: some of them, not all).
        url = f"http://{await cluster_ip(sandbox, 'billing-api')}:8080/plain"

        async def some_local() -> int | None:
            return await served_locally(url, REQUESTS) or None

        share = await eventually(some_local, seconds=30, what="the Service to reach the shadow")
        assert 0 < share < REQUESTS

        # Auto mode refuses the Service while the manual session lives.
        auto = await run_cli(
            tmp_path,
            "mesh",
            "billing/billing-api",
            "--expose",
            f"{local_app}:8080",
            kubeconfig=sandbox.kubeconfig_path,
        )
        assert auto.returncode != 0
        assert "is meshed in manual mode" in auto.stderr
        listing = await run_cli(tmp_path, "mesh", "list", kubeconfig=sandbox.kubeconfig_path)
        header, row = (line.split() for line in listing.stdout.splitlines())
        assert header[:5] == ["NAMESPACE", "SERVICE", "MARK", "MODE", "DEVELOPER"]
        assert row[:5] == ["billing", "billing-api", "version:", "dev", "manual"]
    finally:
        out = await stop(proc)
    assert "left billing/billing-api; removed the shadow" in out
    await wait_unchanged(sandbox, before)


async def test_without_selector_labels_only_rules_reach_the_shadow_and_clean_after_kill(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    before = await namespace_objects(sandbox)
    proc, output = await start_manual(sandbox, local_app, tmp_path, "--no-selector-labels")
    try:
        shadow = await ready_shadow(sandbox)
        labels = shadow["metadata"]["labels"]
        assert "app" not in labels and labels["version"] == "dev"
        assert "share of ordinary requests" not in output

        docs = printed_rules(output)
        assert [d["kind"] for d in docs] == ["VirtualService", "HTTPRoute"]
        istio_round_trip(docs[0])
        validate_http_route(docs[1])
        shadow_svc = docs[1]["spec"]["rules"][0]["backendRefs"][0]["name"]
        assert docs[0]["spec"]["http"][0]["route"][0]["destination"]["host"] == shadow_svc

        # The shadow Service reaches the local process ...
        shadow_url = f"http://{await cluster_ip(sandbox, shadow_svc)}:8080/marked"

        async def via_shadow_service() -> int | None:
            return await served_locally(shadow_url, 1) or None

        await eventually(via_shadow_service, seconds=30, what="the shadow Service")
        # ... and the plain Service never does.
        url = f"http://{await cluster_ip(sandbox, 'billing-api')}:8080/plain"
        assert await served_locally(url, REQUESTS) == 0
    finally:
        proc.kill()
        await proc.wait()
    kc = sandbox.kubeconfig_path

    async def cleaned() -> str | None:
        done = await run_cli(tmp_path, "mesh", "clean", "-n", "billing", kubeconfig=kc)
        assert done.returncode == 0, done.stderr
        return done.stdout if "deleted Pod" in done.stdout else None

    # Once the Lease expires, clean takes the session for dead and removes all of it.
    report = await eventually(cleaned, seconds=60, what="clean to remove the session", every=1)
    assert f"deleted Service billing/{shadow_svc}" in report
    await wait_managed_gone(sandbox)
    await wait_unchanged(sandbox, before)
    assert await managed_objects(sandbox) == []


async def test_apply_without_istio_says_so_and_changes_nothing(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    """The sandbox serves no Istio kinds (no CRDs installed): `--apply` says so before it
    writes anything."""
    before = await namespace_objects(sandbox)
    version = sandbox.store.rv  # any write, anywhere, moves it
    result = await run_cli(
        tmp_path,
        "mesh",
        "billing/billing-api",
        "--mode",
        "manual",
        "--apply",
        "--expose",
        f"{local_app}:8080",
        "--versionMark",
        "dev",
        kubeconfig=sandbox.kubeconfig_path,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "localmesh: error: the cluster does not serve networking.istio.io/v1 DestinationRule "
        "and VirtualService: Istio's CRDs are not installed; nothing was changed: drop --apply "
        "to print the rules only\n"
    ), result.stderr
    assert sandbox.store.rv == version
    await wait_unchanged(sandbox, before)
