"""Port-forward through the full sandbox API server (HTTPS, bearer token, services).

Real kubectl `port-forward svc/billing-api` in each flavour, with real curl through it,
and the official Python client; the sandbox's `/version` picks the kubectl that runs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.stream import portforward

from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.integration.test_sandbox_portforward_helpers import (
    kubectl_port_forward,
    run_curl,
    wait_until,
)

pytestmark = pytest.mark.integration

sandbox_factory = sandbox_fixtures.sandbox_factory

NO_WEBSOCKETS = {"KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}


@pytest.mark.parametrize(
    ("kube_version", "env"),
    [
        pytest.param("1.33", {}, id="kubectl-1.33-websocket-tunnel"),
        pytest.param("1.33", NO_WEBSOCKETS, id="kubectl-1.33-plain-spdy"),
        pytest.param("1.30", {}, id="kubectl-1.30-plain-spdy"),
    ],
)
async def test_kubectl_port_forward_service_with_curl(
    sandbox_factory: sandbox_fixtures.SandboxFactory, kube_version: str, env: dict[str, str]
) -> None:
    sb: Sandbox = await sandbox_factory(kube_version=kube_version)
    pods = {p["metadata"]["name"] for p in sb.service_pods("billing", "billing-api")}
    async with kubectl_port_forward(
        sb.kubeconfig_path, "svc/billing-api", 8080, namespace="billing", env=env
    ) as fwd:
        url = f"http://127.0.0.1:{fwd.local_port}/hello?x=1"
        rc, out, err = await run_curl("-H", "X-Probe: portforward", url)
        assert rc == 0, err
        echo = json.loads(out)
        assert echo["namespace"] == "billing"
        assert echo["pod"] in pods
        assert echo["path"].startswith("/hello")
        results = await asyncio.gather(*(run_curl(url) for _ in range(5)))
        assert all(rc == 0 for rc, _, _ in results)


async def test_kubectl_reports_a_port_the_pod_does_not_serve(
    sandbox_factory: sandbox_fixtures.SandboxFactory,
) -> None:
    sb: Sandbox = await sandbox_factory(kube_version="1.33")
    pod = sb.service_pods("billing", "billing-api")[0]["metadata"]["name"]
    async with kubectl_port_forward(
        sb.kubeconfig_path, f"pod/{pod}", 9999, namespace="billing"
    ) as fwd:
        rc, _, _ = await run_curl(f"http://127.0.0.1:{fwd.local_port}/")
        assert rc != 0
        async with asyncio.timeout(20):
            await fwd.process.wait()
        await wait_until(lambda: b"lost connection to pod" in fwd.stderr)
    text = bytes(fwd.stderr).decode()
    assert f"error forwarding port 9999 to pod {pod}" in text
    assert "connection refused" in text


def _python_client_get(api_client: Any, pod: str) -> bytes:
    api = client.CoreV1Api(api_client)
    forward = portforward(api.connect_get_namespaced_pod_portforward, pod, "billing", ports="8080")
    try:
        sock = forward.socket(8080)
        sock.setblocking(True)
        sock.settimeout(10)
        sock.sendall(b"GET /py HTTP/1.0\r\nHost: billing-api\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert forward.error(8080) is None
        return data
    finally:
        forward.close()


async def test_python_client_port_forward_over_tls(
    sandbox_factory: sandbox_fixtures.SandboxFactory,
) -> None:
    sb: Sandbox = await sandbox_factory()
    pod = sb.service_pods("billing", "billing-api")[0]["metadata"]["name"]
    api_client = sandbox_fixtures.kube_client(sb)
    data = await asyncio.to_thread(_python_client_get, api_client, pod)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200"
    echo = json.loads(body)
    assert echo["pod"] == pod
    assert echo["path"] == "/py"
