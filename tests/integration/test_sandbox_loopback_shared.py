"""The sandbox as on macOS (only 127.0.0.1 binds), forced with `loopback="shared"`: pods keep
distinct pod IPs but serve on ports of 127.0.0.1; real kubectl port-forward and node ports
reach them, and so do the pods' own calls by service name; cluster IPs (to other clients)
and process containers say why they are not available."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from localmesh.sandbox import Sandbox
from localmesh.sandbox.ips import SHARED, dial
from localmesh.sandbox.resources import PODS
from tests import sandbox_fixtures
from tests.integration.test_sandbox_portforward_helpers import kubectl_port_forward, run_curl
from tests.sandbox_fixtures import SandboxFactory, kubectl

pytestmark = pytest.mark.integration
sandbox_factory = sandbox_fixtures.sandbox_factory

NODE_PORT = """\
apiVersion: v1
kind: Service
metadata: {name: billing-node, namespace: billing}
spec:
  type: NodePort
  selector: {app: billing-api}
  ports: [{name: http, port: 8080, targetPort: http}]
"""

PROCESS_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: billing}
spec:
  containers:
  - name: agent
    image: ghcr.io/localmesh/localmesh:0.1.0
    command: [python, -m, localmesh.sandbox.testagent]
    args: [serve, --port, "8080"]
"""


def refused(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex((ip, port)) != 0


@pytest.fixture
async def shared(sandbox_factory: SandboxFactory) -> Sandbox:
    return await sandbox_factory(loopback="shared")


async def test_pods_keep_distinct_ips_and_serve_on_ports_of_127_0_0_1(shared: Sandbox) -> None:
    assert shared.loopback == SHARED
    pods = [p for ns in ("users", "billing", "admin") for p in shared.pods(ns)]
    ips = [p["status"]["podIP"] for p in pods]
    assert len(set(ips)) == len(pods) == 4 and "127.0.0.1" not in ips
    (pod,) = shared.service_pods("billing", "billing-api")
    ip = pod["status"]["podIP"]
    assert await asyncio.to_thread(refused, ip, 8080)  # nothing binds the pod IP itself
    host, port = dial(ip, 8080)
    assert host == "127.0.0.1" and port != 8080
    rc, out, err = await run_curl(f"http://{host}:{port}/hello")
    assert rc == 0, err
    answer = json.loads(out)
    assert (answer["pod"], answer["pod_ip"]) == (pod["metadata"]["name"], ip)


async def test_kubectl_port_forward_reaches_a_shared_pod(shared: Sandbox) -> None:
    (pod,) = shared.service_pods("billing", "billing-api")
    name = pod["metadata"]["name"]
    async with kubectl_port_forward(
        shared.kubeconfig_path, f"pod/{name}", 8080, namespace="billing"
    ) as forward:
        rc, out, err = await run_curl(f"http://127.0.0.1:{forward.local_port}/hello")
    assert rc == 0, err
    assert json.loads(out)["pod"] == name
    # The Service, too (kubectl picks a pod behind it).
    async with kubectl_port_forward(
        shared.kubeconfig_path, "svc/billing-api", 8080, namespace="billing"
    ) as forward:
        rc, out, err = await run_curl(f"http://127.0.0.1:{forward.local_port}/hello")
    assert rc == 0, err
    assert json.loads(out)["pod"] == name


async def test_node_ports_serve_and_cluster_ips_say_why_they_do_not(shared: Sandbox) -> None:
    (await kubectl(shared, "apply", "-f", "-", input=NODE_PORT)).check()
    service: Any = json.loads(
        (await kubectl(shared, "get", "-n", "billing", "svc/billing-node", "-o", "json"))
        .check()
        .stdout
    )
    node_port = service["spec"]["ports"][0]["nodePort"]
    rc, out, err = await run_curl(f"http://127.0.0.1:{node_port}/hello")
    assert rc == 0, err
    assert json.loads(out)["pod"].startswith("billing-api-")

    cluster_ip = service["spec"]["clusterIP"]
    assert await asyncio.to_thread(refused, cluster_ip, 8080)
    events = await kubectl(
        shared, "get", "events", "-n", "billing",
        "--field-selector", "involvedObject.name=billing-node,reason=ClusterIPNotServed",
        "-o", "jsonpath={.items[*].message}",
    )  # fmt: skip
    assert (
        f"cluster IP {cluster_ip} is not served on this machine, only to the sandbox's pods: "
        "this machine binds no loopback address but 127.0.0.1"
    ) in events.check().stdout


async def test_pods_still_call_services_by_name(shared: Sandbox) -> None:
    """The frontend calls http://billing-api.billing:8080: cluster DNS and the service
    proxy carry it to a billing-api pod, as on a machine with an address per pod."""
    (frontend,) = shared.service_pods("users", "frontend")
    host, port = dial(frontend["status"]["podIP"], 8080)
    rc, out, err = await run_curl("-H", "version: v2", f"http://{host}:{port}/chain")
    assert rc == 0, err
    answer = json.loads(out)
    downstream = answer["downstream"]
    assert downstream.get("status") == 200, answer
    assert downstream["body"]["pod"].startswith("billing-api-")
    assert downstream["body"]["headers"].get("version") == "v2"


async def test_a_process_container_says_it_needs_its_own_pod_ip(shared: Sandbox) -> None:
    (await kubectl(shared, "apply", "-f", "-", input=PROCESS_POD)).check()

    def waiting() -> dict[str, Any] | None:
        pod = shared.store.peek(PODS, "billing", "agent")
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or []
        state = statuses[0].get("state", {}).get("waiting") if statuses else None
        return state if state and state.get("reason") == "CreateContainerError" else None

    state = await shared.wait_for(waiting, 30, "the agent to be refused")
    assert state["message"].startswith("a process container needs its own pod IP: ")
    assert "LOCALMESH_SANDBOX_LOOPBACK=shared" in state["message"]
