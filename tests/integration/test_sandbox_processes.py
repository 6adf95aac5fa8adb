"""Pods whose image is localmesh's own run their command as real subprocesses: probes,
service-account tokens, logs, restarts with back-off, image pull failures, no orphans."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from localmesh.sandbox import Sandbox, Scenario
from localmesh.sandbox.resources import EVENTS, PODS
from tests import sandbox_fixtures
from tests.integration.test_sandbox_mesh_objects import MINORS
from tests.sandbox_fixtures import SandboxFactory, kubectl

pytestmark = pytest.mark.integration
sandbox_factory = sandbox_fixtures.sandbox_factory

AGENT_IMAGE = "ghcr.io/localmesh/localmesh:0.1.0"
NAMESPACE = "mesh"
EMPTY = Scenario(namespaces=(NAMESPACE,))


def agent_deployment(
    name: str = "agent",
    args: list[str] | None = None,
    image: str = AGENT_IMAGE,
    **container: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "agent",
        "image": image,
        "command": ["python", "-m", "localmesh.sandbox.testagent"],
        "args": args if args is not None else ["serve", "--port", "$(PORT)"],
        "env": [
            {"name": "PORT", "value": "8080"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        **container,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"serviceAccountName": "mesh-agent", "containers": [spec]},
            },
        },
    }


RBAC: list[dict[str, Any]] = [
    {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "mesh-agent", "namespace": NAMESPACE},
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "lease-reader", "namespace": NAMESPACE},
        "rules": [
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["get", "list"],  # no watch
            }
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "lease-reader", "namespace": NAMESPACE},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "lease-reader",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "mesh-agent"}],
    },
    {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "dev-alice", "namespace": NAMESPACE},
        "spec": {"holderIdentity": "alice"},
    },
]
# Probes answer in milliseconds: the 10 s timeout only keeps a busy machine from failing
# them, so a failure (and a liveness restart) comes from the agent's answer alone.
PROBE = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1, "timeoutSeconds": 10}
# A Python process may take several seconds to start serving on a busy machine (measured:
# 1.3-6 s beside two busy loops); a startup probe sized for that, as Kubernetes advises.
STARTUP_PROBE = {**PROBE, "failureThreshold": 120}


def container_status(sb: Sandbox, pod: dict[str, Any]) -> dict[str, Any]:
    live = sb.store.peek(PODS, NAMESPACE, pod["metadata"]["name"]) or pod
    statuses = live.get("status", {}).get("containerStatuses") or [{}]
    status: dict[str, Any] = statuses[0]
    return status


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json()


async def test_agent_deployment_gets_ready_and_uses_its_own_token(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(EMPTY)
    probes: dict[str, Any] = {
        "startupProbe": STARTUP_PROBE,
        "readinessProbe": PROBE,
        "livenessProbe": PROBE,
    }
    sb.apply([*RBAC, agent_deployment(**probes)])
    res = await kubectl(sb, "rollout", "status", "deploy/agent", "-n", NAMESPACE, "--timeout=60s")
    assert "successfully rolled out" in res.check().stdout
    (pod,) = sb.pods(NAMESPACE)
    ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    # The process reaches the API server through the in-cluster loader, as mesh-agent.
    assert await get_json(f"http://{ip}:8080/lease/dev-alice") == {"status": 200, "holder": "alice"}
    denied = await get_json(f"http://{ip}:8080/watch/leases")
    assert denied["status"] == 403
    assert json.loads(denied["body"])["message"] == (
        'leases.coordination.k8s.io is forbidden: User "system:serviceaccount:mesh:mesh-agent" '
        'cannot watch resource "leases" in API group "coordination.k8s.io" in the namespace "mesh"'
    )
    logs = (await kubectl(sb, "logs", "-n", NAMESPACE, name)).check().stdout
    assert logs.splitlines()[0] == f"testagent serving on {ip}:8080 as {name}"
    follow = await asyncio.create_subprocess_exec(
        "kubectl",
        "logs",
        "-f",
        "-n",
        NAMESPACE,
        "deploy/agent",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=sb.env(),
    )
    assert follow.stdout is not None
    first = await asyncio.wait_for(follow.stdout.readline(), 20)
    assert first.decode().startswith("testagent serving on")

    # A failing liveness probe restarts the container; the pod keeps its name and IP.
    async with aiohttp.ClientSession() as session, session.post(f"http://{ip}:8080/fail") as r:
        assert r.status == 200
    # `kubectl logs -f` ends with the run it followed.
    assert await asyncio.wait_for(follow.wait(), 60) == 0
    restarted = await sb.wait_for(
        lambda: (s := container_status(sb, pod)).get("restartCount") == 1 and s.get("ready") and s,
        seconds=60,
        what="the agent restarted by its liveness probe and ready again",
    )
    # SIGTERM: the agent's server shuts down cleanly, and is restarted all the same.
    assert restarted["lastState"]["terminated"]["reason"] == "Completed"
    reasons = {
        (e["reason"], e["message"])
        for e in sb.store.iter(EVENTS, NAMESPACE)
        if e["involvedObject"]["name"] == name
    }
    assert ("Killing", "Container agent failed liveness probe, will be restarted") in reasons
    assert (
        "Unhealthy",
        "Liveness probe failed: HTTP probe failed with statuscode: 500",
    ) in reasons
    previous = (await kubectl(sb, "logs", "-p", "-n", NAMESPACE, name)).check().stdout
    assert previous.startswith("testagent serving on")

    # Deleting the pod stops its process (SIGTERM); the replica set starts a new one.
    process = sb.cluster.kubelet.runtime(NAMESPACE, name).containers["agent"].process
    assert process is not None and process.proc is not None
    (await kubectl(sb, "delete", "pod", name, "-n", NAMESPACE)).check()
    assert process.proc.returncode is not None
    await sb.wait_all_ready(60)
    (replacement,) = sb.pods(NAMESPACE)
    assert replacement["metadata"]["name"] != name


@pytest.mark.parametrize("version", MINORS)
async def test_crash_loop_and_image_pull_back_off_through_kubectl(
    sandbox_factory: SandboxFactory, version: str
) -> None:
    sb = await sandbox_factory(EMPTY, kube_version=version, wait_ready=False)
    sb.faults.backoff_base = 60.0  # the second back-off outlasts the test: stable columns
    sb.apply(
        [
            *RBAC[:1],
            agent_deployment("crasher", args=["crash", "--code", "3"]),
            agent_deployment("typo", image="ghcr.io/localmesh/lcoalmesh:0.1.0"),
        ]
    )
    crasher = (await sb.wait_for(lambda: sb.pods(NAMESPACE, "app=crasher"), what="pod"))[0]
    typo = (await sb.wait_for(lambda: sb.pods(NAMESPACE, "app=typo"), what="pod"))[0]
    await sb.wait_for(
        lambda: (
            (s := container_status(sb, crasher)).get("restartCount") == 1
            and (s.get("state", {}).get("waiting") or {}).get("reason") == "CrashLoopBackOff"
        ),
        seconds=30,
        what="the crashing agent in CrashLoopBackOff",
    )
    await sb.wait_for(
        lambda: (
            (container_status(sb, typo).get("state", {}).get("waiting") or {}).get("reason")
            == "ImagePullBackOff"
        ),
        what="the mistyped image in ImagePullBackOff",
    )
    out = (await kubectl(sb, "get", "pods", "-n", NAMESPACE)).check().stdout
    rows = {r.split()[0]: r.split() for r in out.splitlines()[1:]}
    crash_row = rows[crasher["metadata"]["name"]]
    assert crash_row[1:4] == ["0/1", "CrashLoopBackOff", "1"] and crash_row[4].startswith("(")
    assert rows[typo["metadata"]["name"]][1:4] == ["0/1", "ImagePullBackOff", "0"]
    for follow in ((), ("-f",)):  # -f ends at once: the container is not running
        logs = await kubectl(sb, "logs", *follow, "-n", NAMESPACE, crasher["metadata"]["name"])
        assert logs.check().stdout == "testagent crashing with exit code 3\n"
    logs = await kubectl(sb, "logs", "-n", NAMESPACE, typo["metadata"]["name"])
    assert logs.returncode == 1
    assert "is waiting to start: trying and failing to pull image" in logs.stderr
    events = await kubectl(
        sb,
        "get",
        "events",
        "-n",
        NAMESPACE,
        "--field-selector",
        f"involvedObject.name={typo['metadata']['name']}",
        "-o",
        "json",
    )
    messages = [e["message"] for e in json.loads(events.check().stdout)["items"]]
    image = "ghcr.io/localmesh/lcoalmesh:0.1.0"
    assert f'Pulling image "{image}"' in messages
    assert any(m.startswith(f'Failed to pull image "{image}": rpc error') for m in messages)
    assert "Error: ErrImagePull" in messages and "Error: ImagePullBackOff" in messages
    assert f'Back-off pulling image "{image}"' in messages
    status = json.loads(
        (
            await kubectl(
                sb, "get", "pod", crasher["metadata"]["name"], "-n", NAMESPACE, "-o", "json"
            )
        )
        .check()
        .stdout
    )["status"]
    terminated = status["containerStatuses"][0]["lastState"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"


SCENARIO = """
namespaces: [mesh]
deployments:
  - name: agent
    namespace: mesh
    image: localmesh:dev
    command: [localmesh-never-installed]
    args: []
    serviceAccountName: default
  - name: served
    namespace: mesh
    image: localmesh:dev
    command: [python, -m, localmesh.sandbox.testagent]
    args: [serve, --port, "9090"]
    env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    ports: [{name: http, containerPort: 9090}]
    readinessProbe: {tcpSocket: {port: http}, periodSeconds: 1}
"""


async def test_scenario_process_keys_and_no_process_left_after_down(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(Scenario.from_dict(yaml.safe_load(SCENARIO)), wait_ready=False)
    sb.faults.backoff_base = 60.0
    served = await sb.wait_for(
        lambda: [
            p
            for p in sb.pods(NAMESPACE, "app=served")
            if sb.ready_pod(NAMESPACE, p["metadata"]["name"])
        ],
        seconds=60,
        what="the served agent ready through its tcpSocket probe",
    )
    (broken,) = sb.pods(NAMESPACE, "app=agent")
    state = await sb.wait_for(
        lambda: container_status(sb, broken).get("lastState", {}).get("terminated"),
        what="the missing executable to fail the container",
    )
    assert state["reason"] == "StartError" and state["exitCode"] == 128
    assert '"localmesh-never-installed": executable file not found in $PATH' in state["message"]
    rt = sb.cluster.kubelet.runtime(NAMESPACE, served[0]["metadata"]["name"])
    process = rt.containers["served"].process
    assert process is not None and process.proc is not None
    pid = process.proc.pid
    os.kill(pid, 0)  # running
    await sb.down()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out |= {int(c) for c in (task / "children").read_text().split()}
    return out


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


async def _until(predicate: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll /proc (which has no change events) until `predicate` holds, or fail."""
    deadline = time.monotonic() + seconds
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_processes_die_with_a_killed_sandbox(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        json.dumps({"namespaces": [NAMESPACE], "objects": [*RBAC[:1], agent_deployment()]})
    )
    sandbox = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "localmesh",
        "sandbox",
        "up",
        "--scenario",
        str(scenario),
        "--kubeconfig",
        str(tmp_path / "kubeconfig"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        def agents() -> set[int]:
            found = set()
            for pid in _children(sandbox.pid):
                with contextlib.suppress(OSError):
                    if b"testagent" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        found.add(pid)
            return found

        (agent,) = await _until(agents, 60, "the agent process")
    finally:
        sandbox.kill()  # SIGKILL: no clean-up code runs in the sandbox
        await sandbox.wait()
    await _until(lambda: not _alive(agent), 30, "the orphaned agent to die")


async def test_kubectl_run_once_completes_or_fails_without_restarts(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(EMPTY)
    command = ["python", "-m", "localmesh.sandbox.testagent", "crash", "--code"]
    for name, code in (("once", "0"), ("fails", "2")):
        res = await kubectl(
            sb,
            "run",
            name,
            "-n",
            NAMESPACE,
            "--image=localmesh:dev",
            "--restart=Never",
            "--command",
            "--",
            *command,
            code,
        )
        res.check()
    await sb.wait_for(
        lambda: {p["status"].get("phase") for p in sb.pods(NAMESPACE)} == {"Succeeded", "Failed"},
        seconds=30,
        what="both pods to finish",
    )
    out = (await kubectl(sb, "get", "pods", "-n", NAMESPACE)).check().stdout
    rows = {r.split()[0]: r.split()[1:4] for r in out.splitlines()[1:]}
    assert rows == {"once": ["0/1", "Completed", "0"], "fails": ["0/1", "Error", "0"]}
    pod = sb.store.get(PODS, NAMESPACE, "fails")
    (status,) = pod["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 2 and status["lastState"] == {}


async def test_failing_startup_probe_restarts_the_container(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(EMPTY, wait_ready=False)
    never = {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2}
    sb.apply([*RBAC[:1], agent_deployment(startupProbe=never, readinessProbe=PROBE)])
    (pod,) = await sb.wait_for(lambda: sb.pods(NAMESPACE), what="the pod")
    status = await sb.wait_for(
        lambda: (s := container_status(sb, pod)).get("restartCount", 0) >= 1 and s,
        seconds=60,
        what="a restart after the startup probe failed",
    )
    assert status["ready"] is False
    messages = {e["message"] for e in sb.store.iter(EVENTS, NAMESPACE)}
    assert "Startup probe failed: dial tcp " in " ".join(messages)
    assert "Container agent failed startup probe, will be restarted" in messages


async def test_pod_waits_for_its_service_account(sandbox_factory: SandboxFactory) -> None:
    sb = await sandbox_factory(EMPTY, wait_ready=False)
    sb.apply([agent_deployment(readinessProbe=PROBE)])
    (pod,) = await sb.wait_for(lambda: sb.pods(NAMESPACE), what="the pod")
    await sb.wait_for(
        lambda: (
            (container_status(sb, pod).get("state", {}).get("waiting") or {}).get("reason")
            == "ContainerCreating"
        ),
        what="the container waiting for its service account token",
    )
    out = (await kubectl(sb, "get", "pods", "-n", NAMESPACE)).check().stdout
    assert out.splitlines()[1].split()[1:3] == ["0/1", "ContainerCreating"]
    messages = {e["message"] for e in sb.store.iter(EVENTS, NAMESPACE)}
    assert any(
        m.startswith('MountVolume.SetUp failed for volume "kube-api-access-')
        and m.endswith(': serviceaccount "mesh-agent" not found')
        for m in messages
    )
    sb.apply(RBAC[:1])  # the account appears: the kubelet mounts it and starts the container
    await sb.wait_all_ready(60)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_a_containers_child_processes_end_with_it(sandbox_factory: SandboxFactory) -> None:
    sb = await sandbox_factory(EMPTY)
    script = (
        "import subprocess, time; child = subprocess.Popen(['sleep', '300']); "
        "print(child.pid, flush=True); time.sleep(300)"
    )
    sb.apply([*RBAC[:1], agent_deployment(command=["python", "-c", script], args=[])])
    await sb.wait_all_ready(60)
    (pod,) = sb.pods(NAMESPACE)
    name = pod["metadata"]["name"]

    def child_pid() -> int | None:
        lines = sb.cluster.kubelet.logs(NAMESPACE, name, None)
        return int(lines[0][1]) if lines else None

    child = await _until(child_pid, 30, "the container to start its child")
    assert _alive(child)
    (await kubectl(sb, "delete", "pod", name, "-n", NAMESPACE, "--grace-period=1")).check()
    await _until(lambda: not _alive(child), 30, "the child to end with its container")
