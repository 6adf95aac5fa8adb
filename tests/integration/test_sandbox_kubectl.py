"""Real kubectl against the sandbox: get, describe, delete and replace, scale, auth."""

from __future__ import annotations

import asyncio
import json

import pytest

from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.sandbox_fixtures import SandboxFactory, kubectl

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory


@pytest.mark.parametrize("version", ["1.27", "1.30", "1.33"])
async def test_get_pods_all_namespaces(sandbox_factory: SandboxFactory, version: str) -> None:
    sb = await sandbox_factory(kube_version=version)
    res = (await kubectl(sb, "get", "pods", "-A")).check()
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    rows = {(cols[0], cols[1].rsplit("-", 2)[0]): cols for cols in map(str.split, lines[1:])}
    assert set(rows) == {
        ("users", "users-api"),
        ("users", "frontend"),
        ("billing", "billing-api"),
        ("admin", "admin-web"),
    }
    assert all(cols[2] == "1/1" and cols[3] == "Running" for cols in rows.values())
    client = (await kubectl(sb, "version", "-o", "json")).check()
    info = json.loads(client.stdout)
    assert info["serverVersion"]["minor"] == version.split(".")[1]
    assert f"v{version}" in info["clientVersion"]["gitVersion"]


async def test_get_services_and_endpoints(sandbox: Sandbox) -> None:
    res = (await kubectl(sandbox, "get", "svc", "-n", "billing")).check()
    header, row = res.stdout.splitlines()
    assert header.split()[:5] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"]
    assert row.split()[0] == "billing-api" and row.split()[4] == "8080/TCP"
    pod_ip = sandbox.pods("billing")[0]["status"]["podIP"]
    eps = (await kubectl(sandbox, "get", "endpoints", "billing-api", "-n", "billing")).check()
    assert f"{pod_ip}:8080" in eps.stdout
    out = (await kubectl(sandbox, "get", "svc", "users-api", "-n", "users", "-o", "json")).check()
    svc = json.loads(out.stdout)
    assert svc["spec"]["ports"][0] == {
        "name": "grpc",
        "port": 50051,
        "targetPort": "grpc",
        "protocol": "TCP",
    }


async def test_describe_pod(sandbox: Sandbox) -> None:
    pod = sandbox.pods("users")[0]
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    res = (await kubectl(sandbox, "describe", "pod", name, "-n", "users")).check()
    fields = {
        k.strip(): v.strip()
        for k, _, v in (
            line.partition(":") for line in res.stdout.splitlines() if not line.startswith(" ")
        )
    }
    assert fields["Name"] == name and fields["IP"] == ip
    assert fields["Service Account"] == "default"
    assert fields["Controlled By"] == f"ReplicaSet/{name.rsplit('-', 1)[0]}"
    assert "50051/TCP" in res.stdout
    ready = next(line for line in res.stdout.splitlines() if line.strip().startswith("Ready "))
    assert ready.split() == ["Ready", "True"]
    events = res.stdout.split("Events:", 1)[1]
    assert f"Successfully assigned users/{name} to sandbox-node" in events
    assert "Started container grpc-greeter" in events


async def test_delete_pod_brings_a_replacement(sandbox: Sandbox) -> None:
    old = sandbox.pods("billing")[0]
    old_name, old_ip = old["metadata"]["name"], old["status"]["podIP"]
    (await kubectl(sandbox, "delete", "pod", old_name, "-n", "billing")).check()
    res = await kubectl(
        sandbox,
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=billing-api",
        "-n",
        "billing",
        "--timeout=20s",
    )
    res.check()
    out = (await kubectl(sandbox, "get", "pods", "-n", "billing", "-o", "json")).check()
    pods = json.loads(out.stdout)["items"]
    assert len(pods) == 1
    assert pods[0]["metadata"]["name"] != old_name
    assert pods[0]["status"]["podIP"] != old_ip
    assert pods[0]["metadata"]["name"].startswith("billing-api-")


async def test_scale_deployment(sandbox: Sandbox) -> None:
    (await kubectl(sandbox, "scale", "deployment/admin-web", "-n", "admin", "--replicas=3")).check()
    ips = await sandbox.wait_ready_endpoints("admin", "admin-web", count=3)
    assert len(set(ips)) == 3
    (await kubectl(sandbox, "rollout", "status", "deployment/admin-web", "-n", "admin")).check()
    (await kubectl(sandbox, "scale", "deployment/admin-web", "-n", "admin", "--replicas=1")).check()
    await sandbox.wait_for(lambda: len(sandbox.pods("admin")) == 1, what="scale down to 1")


async def test_create_patch_delete_configmap(sandbox: Sandbox) -> None:
    manifest = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "billing"},
            "data": {"a": "1"},
        }
    )
    (await kubectl(sandbox, "create", "-f", "-", input=manifest)).check()
    again = await kubectl(sandbox, "create", "-f", "-", input=manifest)
    assert again.returncode != 0 and "AlreadyExists" in again.stderr
    (await kubectl(sandbox, "label", "configmap", "settings", "-n", "billing", "tier=gold")).check()
    (
        await kubectl(
            sandbox,
            "patch",
            "configmap",
            "settings",
            "-n",
            "billing",
            "--type",
            "merge",
            "-p",
            '{"data": {"b": "2"}}',
        )
    ).check()
    out = (await kubectl(sandbox, "get", "cm", "settings", "-n", "billing", "-o", "json")).check()
    cm = json.loads(out.stdout)
    assert cm["data"] == {"a": "1", "b": "2"}
    assert cm["metadata"]["labels"] == {"tier": "gold"}
    (await kubectl(sandbox, "delete", "configmap", "settings", "-n", "billing")).check()
    gone = await kubectl(sandbox, "get", "configmap", "settings", "-n", "billing")
    assert gone.returncode != 0 and "NotFound" in gone.stderr


async def test_wrong_token_is_unauthorized(sandbox: Sandbox) -> None:
    res = await kubectl(sandbox, "get", "pods", "-A", "--token", "not-the-token")
    assert res.returncode != 0
    assert "You must be logged in to the server" in res.stderr


APPLY = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: extra, namespace: billing}
spec:
  replicas: REPLICAS
  selector: {matchLabels: {app: extra}}
  template:
    metadata: {labels: {app: extra}}
    spec:
      containers:
        - name: web
          image: localmesh.dev/sandbox/http-echo
          ports: [{containerPort: 8080, name: http}]
"""


async def test_apply_creates_then_configures(sandbox: Sandbox) -> None:
    res = await kubectl(sandbox, "apply", "-f", "-", input=APPLY.replace("REPLICAS", "1"))
    assert "deployment.apps/extra created" in res.check().stdout
    res = await kubectl(sandbox, "apply", "-f", "-", input=APPLY.replace("REPLICAS", "2"))
    assert "deployment.apps/extra configured" in res.check().stdout
    await sandbox.wait_for(
        lambda: (
            len([p for p in sandbox.pods("billing", "app=extra") if p["status"].get("podIP")]) == 2
        ),
        what="two pods of the applied deployment",
    )


async def test_get_watch_prints_table_rows(sandbox: Sandbox) -> None:
    old = sandbox.pods("billing")[0]["metadata"]["name"]
    proc = await asyncio.create_subprocess_exec(
        "kubectl",
        "get",
        "pods",
        "-n",
        "billing",
        "-w",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=sandbox.env(),
    )
    assert proc.stdout is not None
    try:
        header = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
        assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
        assert first[:3] == [old, "1/1", "Running"]
        sandbox.faults.delete_pod("billing", old)
        while True:
            row = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
            assert row, "kubectl get -w ended early"
            if row[0] != old and row[1:3] == ["1/1", "Running"]:
                break
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize("version", ["1.30", "1.33"])
async def test_auth_can_i(sandbox_factory: SandboxFactory, version: str) -> None:
    sb = await sandbox_factory(kube_version=version)
    res = await kubectl(sb, "auth", "can-i", "delete", "pods", "-n", "billing")
    assert res.check().stdout.strip() == "yes"
    viewer = ("--token", sb.readonly_token)
    res = await kubectl(sb, "auth", "can-i", "list", "pods", *viewer)
    assert res.check().stdout.strip() == "yes"
    res = await kubectl(sb, "auth", "can-i", "create", "configmaps", *viewer)
    assert res.returncode == 1 and res.stdout.startswith("no")
    res = await kubectl(sb, "delete", "pod", "-n", "billing", "--all", *viewer)
    assert res.returncode != 0 and "Forbidden" in res.stderr
