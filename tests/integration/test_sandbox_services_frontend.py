"""The frontend workload: a second hop through cluster DNS and the service proxy, carrying
the propagated headers (how a header mark reaches billing-api in the default scenario)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from localmesh.sandbox import Sandbox, Scenario
from tests import sandbox_fixtures
from tests.sandbox_fixtures import SandboxFactory, kubectl

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

MARKS = {
    "version": "dev",
    "baggage": "tenant=acme",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "x-request-id": "req-42",
}


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return resp.status, body


def names(sb: Sandbox, namespace: str, selector: str) -> set[str]:
    return {p["metadata"]["name"] for p in sb.pods(namespace, selector)}


async def test_frontend_propagates_version_to_billing_api(sandbox: Sandbox) -> None:
    ip = sandbox.cluster.dns.service_ip("frontend.users")
    status, body = await get(
        f"http://{ip}:8080/orders/7?full=1", {**MARKS, "x-private": "not for billing"}
    )
    assert status == 200, body
    assert body["pod"] in names(sandbox, "users", "app=frontend")
    assert body["propagated"] == MARKS
    downstream = body["downstream"]
    assert downstream["url"] == "http://billing-api.billing:8080/orders/7?full=1"
    billing = downstream["body"]
    assert billing["pod"] in names(sandbox, "billing", "app=billing-api")
    assert (billing["path"], billing["query"]) == ("/orders/7", "full=1")
    seen = {k.lower(): v for k, v in billing["headers"].items()}
    assert {k: seen.get(k) for k in MARKS} == MARKS
    assert "x-private" not in seen


BILLING_DEV = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: billing-api-dev, namespace: billing}
spec:
  selector: {matchLabels: {app: billing-api-dev}}
  template:
    metadata: {labels: {app: billing-api-dev}}
    spec:
      containers:
        - name: http-echo
          image: localmesh.dev/sandbox/http-echo:latest
          ports: [{name: http, containerPort: 8080}]
"""


async def test_frontend_follows_a_selector_swap_of_its_downstream(sandbox: Sandbox) -> None:
    (await kubectl(sandbox, "apply", "-f", "-", input=BILLING_DEV)).check()
    await sandbox.wait_all_ready()
    (dev,) = names(sandbox, "billing", "app=billing-api-dev")
    patch = json.dumps({"spec": {"selector": {"app": "billing-api-dev"}}})
    (await kubectl(sandbox, "patch", "svc", "billing-api", "-n", "billing", "-p", patch)).check()
    dev_ip = sandbox.pods("billing", "app=billing-api-dev")[0]["status"]["podIP"]
    await sandbox.wait_for(
        lambda: sandbox.ready_endpoints("billing", "billing-api") == [dev_ip], 10, "dev slices"
    )
    ip = sandbox.cluster.dns.service_ip("frontend.users")
    for _ in range(3):  # one downstream connection per request: each sees the new selector
        status, body = await get(f"http://{ip}:8080/", {"version": "dev"})
        assert status == 200 and body["downstream"]["body"]["pod"] == dev


FRONTENDS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: short, namespace: shop}
spec:
  selector: {matchLabels: {app: short}}
  template:
    metadata: {labels: {app: short}}
    spec:
      containers:
        - name: frontend
          image: registry.example/localmesh.dev/sandbox/frontend:1.0
          ports: [{containerPort: 8080}]
          env:
            - {name: DOWNSTREAM_URL, value: "http://echo:8080/base"}
            - {name: PROPAGATE_HEADERS, value: "x-tenant"}
---
apiVersion: v1
kind: Pod
metadata: {name: offsite, namespace: shop}
spec:
  containers:
    - name: frontend
      image: localmesh.dev/sandbox/frontend:latest
      ports: [{containerPort: 8080}]
      env: [{name: DOWNSTREAM_URL, value: "http://192.0.2.1:8080/"}]
"""


async def test_dns_forms_custom_headers_and_downstream_failures(
    sandbox_factory: SandboxFactory,
) -> None:
    scenario = Scenario.from_dict(
        {
            "deployments": [
                {"name": "echo", "namespace": "shop"},
                {
                    "name": "full",
                    "namespace": "shop",
                    "workload": "frontend",
                    "downstream": "http://echo.shop.svc.cluster.local:8080",
                },
                {
                    "name": "dangling",
                    "namespace": "shop",
                    "workload": "frontend",
                    "downstream": "http://nowhere.shop.svc:8080",
                },
            ],
            "services": [
                {"name": n, "namespace": "shop", "selector": {"app": n}, "ports": [8080]}
                for n in ("echo", "full", "dangling")
            ],
        }
    )
    sb = await sandbox_factory(scenario)
    (await kubectl(sb, "apply", "-f", "-", input=FRONTENDS)).check()
    await sb.wait_all_ready()
    (echo,) = names(sb, "shop", "app=echo")
    dns = sb.cluster.dns
    assert dns.lookup("echo", "shop") == dns.lookup("echo.shop.svc.cluster.local.")
    alias = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "alias", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "echo.shop.svc.cluster.local"},
    }
    (await kubectl(sb, "apply", "-f", "-", input=json.dumps(alias))).check()
    assert dns.lookup("alias.shop") == dns.lookup("echo.shop")  # a CNAME inside the cluster
    assert sb.cluster.service_proxy.listening("shop", "alias") == []

    status, body = await get(f"http://{dns.service_ip('full.shop')}:8080/a", MARKS)
    assert status == 200 and body["downstream"]["body"]["pod"] == echo
    assert body["downstream"]["url"] == "http://echo.shop.svc.cluster.local:8080/a"

    # A kubectl-made frontend: a bare service name, a base path, its own header list.
    short_ip = sb.pods("shop", "app=short")[0]["status"]["podIP"]
    status, body = await get(f"http://{short_ip}:8080/x", {**MARKS, "x-tenant": "acme"})
    assert status == 200, body
    assert body["propagated"] == {"x-tenant": "acme"}
    assert body["downstream"]["body"]["path"] == "/base/x"
    seen = {k.lower() for k in body["downstream"]["body"]["headers"]}
    assert "x-tenant" in seen and "version" not in seen

    # A downstream off this machine is refused, and said so on every request.
    offsite = await sb.wait_for(lambda: sb.ready_pod("shop", "offsite"), 10, "offsite Ready")
    status, body = await get(f"http://{offsite['status']['podIP']}:8080/")
    assert status == 500 and "http://192.0.2.1:8080/ is not on this machine" in body["error"]

    status, body = await get(f"http://{dns.service_ip('dangling.shop')}:8080/")
    assert status == 502 and "no such service" in body["downstream"]["error"]
    (await kubectl(sb, "scale", "deployment/echo", "-n", "shop", "--replicas=0")).check()
    await sb.wait_for(lambda: sb.ready_endpoints("shop", "echo") == [], 10, "no echo endpoint")
    status, body = await get(f"http://{dns.service_ip('full.shop')}:8080/")
    assert status == 502 and body["downstream"]["error"]
