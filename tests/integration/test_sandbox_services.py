"""Service traffic inside the sandbox: cluster IPs answer through the service proxy and
follow selector patches, scaling and pod deletion, with real kubectl and the official client."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from localmesh.sandbox import Sandbox, Scenario
from localmesh.sandbox.ips import NODE_IP, SERVICE_CIDR
from localmesh.sandbox.resources import PODS
from tests import sandbox_fixtures
from tests.sandbox_fixtures import SandboxFactory, kube_client, kubectl

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

BLUE_GREEN = Scenario.from_dict(
    {
        "deployments": [
            {
                "name": name,
                "namespace": "shop",
                "replicas": 2,
                "labels": {"app": "web", "track": name},
                "ports": [{"name": "http", "containerPort": 8080}],
            }
            for name in ("blue", "green")
        ],
        "services": [
            {
                "name": "web",
                "namespace": "shop",
                "selector": {"app": "web", "track": "blue"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            }
        ],
    }
)
ONE_WEB = Scenario.from_dict(
    {
        "deployments": [{"name": "web", "namespace": "shop", "ports": [8080]}],
        "services": [
            {"name": "web", "namespace": "shop", "selector": {"app": "web"}, "ports": [8080]}
        ],
    }
)


def core(sb: Sandbox) -> Any:
    return client.CoreV1Api(kube_client(sb))


async def new_connection_get(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One request on a connection of its own; the echo's JSON answer."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def pods_reached(url: str, requests: int) -> set[str]:
    return {(await new_connection_get(url))["pod"] for _ in range(requests)}


def pod_names(sb: Sandbox, namespace: str, selector: str) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in sb.pods(namespace, selector)
        if not p["metadata"].get("deletionTimestamp")
    }


def pod_ips(sb: Sandbox, namespace: str, selector: str) -> set[str]:
    return {p["status"]["podIP"] for p in sb.pods(namespace, selector)}


@pytest.mark.parametrize("version", ["1.27", "1.30", "1.33"])
async def test_kubectl_get_svc_shows_loopback_cluster_ips_that_answer(
    sandbox_factory: SandboxFactory, version: str
) -> None:
    sandbox = await sandbox_factory(kube_version=version)
    res = (await kubectl(sandbox, "get", "svc", "-A", "--no-headers")).check()
    rows = {(cols[0], cols[1]): cols for cols in map(str.split, res.stdout.splitlines())}
    assert set(rows) == {
        ("users", "users-api"),
        ("users", "frontend"),
        ("billing", "billing-api"),
        ("admin", "admin-web"),
    }
    network = ipaddress.ip_network(SERVICE_CIDR)
    for (ns, name), cols in rows.items():
        assert cols[2] == "ClusterIP" and ipaddress.ip_address(cols[3]) in network
        assert sandbox.cluster.dns.service_ip(f"{name}.{ns}.svc.cluster.local") == cols[3]
    listed = await asyncio.to_thread(core(sandbox).list_service_for_all_namespaces)
    assert {s.spec.cluster_ip for s in listed.items} == {cols[3] for cols in rows.values()}
    ip = rows[("billing", "billing-api")][3]
    answer = await new_connection_get(f"http://{ip}:8080/via/cluster-ip")
    assert answer["pod"] in pod_names(sandbox, "billing", "app=billing-api")
    assert answer["path"] == "/via/cluster-ip"


@dataclass
class Load:
    """Requests on new connections from several workers, until told to stop."""

    url: str
    wanted: int  # answers per phase
    switched: bool = False
    enough_before: asyncio.Event = field(default_factory=asyncio.Event)
    enough_after: asyncio.Event = field(default_factory=asyncio.Event)
    stop: bool = False
    failures: list[str] = field(default_factory=list)
    before: Counter[str] = field(default_factory=Counter)
    after: Counter[str] = field(default_factory=Counter)

    async def worker(self, session: aiohttp.ClientSession, seconds: float) -> None:
        deadline = time.monotonic() + seconds  # bounded whatever happens
        while not self.stop and time.monotonic() < deadline:
            started_after = self.switched
            try:
                async with session.get(self.url) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        self.failures.append(f"status {resp.status}")
                        continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(repr(exc))
                continue
            (self.after if started_after else self.before)[body["pod"]] += 1
            if sum(self.before.values()) >= self.wanted:
                self.enough_before.set()
            if sum(self.after.values()) >= self.wanted:
                self.enough_after.set()


async def test_selector_patch_moves_new_connections_without_failures(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(BLUE_GREEN)
    blue, green = pod_names(sb, "shop", "track=blue"), pod_names(sb, "shop", "track=green")
    ip = sb.cluster.dns.service_ip("web.shop")
    url = f"http://{ip}/"
    load = Load(url, wanted=80)
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=600), timeout=timeout
        ) as kept,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0), timeout=timeout
        ) as fresh,
    ):
        async with kept.get(url) as resp:  # a keep-alive connection opened before the patch
            kept_pod = (await resp.json())["pod"]
        workers = [asyncio.create_task(load.worker(fresh, 60)) for _ in range(4)]
        try:
            await asyncio.wait_for(load.enough_before.wait(), 30)
            patch = json.dumps({"spec": {"selector": {"app": "web", "track": "green"}}})
            (await kubectl(sb, "patch", "svc", "web", "-n", "shop", "-p", patch)).check()
            green_ips = pod_ips(sb, "shop", "track=green")
            await sb.wait_for(
                lambda: set(sb.ready_endpoints("shop", "web")) == green_ips, 10, "green slices"
            )
            load.switched = True
            await asyncio.wait_for(load.enough_after.wait(), 30)
        finally:
            load.stop = True
            await asyncio.gather(*workers)
        async with kept.get(url) as resp:  # the same connection: still its blue pod
            assert (await resp.json())["pod"] == kept_pod
    assert load.failures == []
    assert set(load.before) <= blue | green and set(load.before) & blue
    assert set(load.after) == green, load.after
    assert kept_pod in blue


async def test_endpoints_follow_scale_up_pod_deletion_and_scale_down(sandbox: Sandbox) -> None:
    ip = sandbox.cluster.dns.service_ip("billing-api.billing.svc")
    url = f"http://{ip}:8080/"
    (
        await kubectl(sandbox, "scale", "deployment/billing-api", "-n", "billing", "--replicas=3")
    ).check()
    await sandbox.wait_ready_endpoints("billing", "billing-api", count=3)
    three = pod_names(sandbox, "billing", "app=billing-api")
    assert len(three) == 3
    assert await pods_reached(url, 6) == three  # round robin over every ready endpoint

    victim = sorted(three)[0]
    v1 = core(sandbox)
    await asyncio.to_thread(v1.delete_namespaced_pod, victim, "billing", grace_period_seconds=0)
    await sandbox.wait_for(
        lambda: (
            len(sandbox.ready_endpoints("billing", "billing-api")) == 3
            and sandbox.store.peek(PODS, "billing", victim) is None
        ),
        10,
        "the deleted pod's replacement",
    )
    now = pod_names(sandbox, "billing", "app=billing-api")
    assert victim not in now and len(now) == 3
    assert await pods_reached(url, 6) == now

    apps = client.AppsV1Api(kube_client(sandbox))
    await asyncio.to_thread(
        apps.patch_namespaced_deployment_scale, "billing-api", "billing", {"spec": {"replicas": 1}}
    )
    await sandbox.wait_for(
        lambda: len(sandbox.ready_endpoints("billing", "billing-api")) == 1, 10, "scale down"
    )
    (last,) = pod_names(sandbox, "billing", "app=billing-api")
    assert await pods_reached(url, 3) == {last}


async def test_terminating_endpoints_serve_only_when_no_ready_one_is_left(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(ONE_WEB)
    url = f"http://{sb.cluster.dns.service_ip('web.shop')}:8080/"
    (old,) = pod_names(sb, "shop", "app=web")
    sb.faults.termination_delay = 60.0  # the deleted pod keeps serving
    sb.faults.ready_delay = 60.0  # and its replacement is slow to become Ready
    res = await kubectl(sb, "delete", "pod", old, "-n", "shop", "--grace-period=60", "--wait=false")
    res.check()

    def replacement() -> str | None:
        names = pod_names(sb, "shop", "app=web") - {old}
        return next(iter(names), None) if names else None

    new = await sb.wait_for(replacement, 10, "a replacement pod")
    await sb.wait_for(lambda: sb.ready_endpoints("shop", "web") == [], 10, "no ready endpoint")
    assert await pods_reached(url, 3) == {old}  # serving + terminating: the fallback

    sb.faults.ready_delay = 0.0  # the next replacement is Ready at once
    sb.faults.delete_pod("shop", new)
    await sb.wait_ready_endpoints("shop", "web", count=1)
    (newest,) = pod_names(sb, "shop", "app=web") - {old}
    assert await pods_reached(url, 3) == {newest}  # a ready one again: the old pod is skipped

    sb.faults.set_ready("shop", newest, False)
    await sb.wait_for(lambda: sb.ready_endpoints("shop", "web") == [], 10, "no ready endpoint")
    assert await pods_reached(url, 3) == {old}


async def test_a_service_without_endpoints_resets_connections(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(ONE_WEB)
    url = f"http://{sb.cluster.dns.service_ip('web.shop')}:8080/"
    (pod,) = pod_names(sb, "shop", "app=web")
    sb.faults.set_ready("shop", pod, False)
    await sb.wait_for(lambda: sb.ready_endpoints("shop", "web") == [], 10, "no ready endpoint")
    with pytest.raises(aiohttp.ClientError):
        await new_connection_get(url)
    sb.faults.set_ready("shop", pod, None)
    await sb.wait_ready_endpoints("shop", "web")
    assert await pods_reached(url, 1) == {pod}


async def test_a_lagging_service_proxy_follows_endpoint_changes_late(
    sandbox_factory: SandboxFactory,
) -> None:
    """The `proxy_lag` fault: the EndpointSlices say the pod is gone from the Service, yet
    the cluster IP still leads to it for a while, as behind a real node's kube-proxy."""
    sb = await sandbox_factory(ONE_WEB)
    url = f"http://{sb.cluster.dns.service_ip('web.shop')}:8080/"
    (pod,) = pod_names(sb, "shop", "app=web")
    sb.faults.proxy_lag = 60.0  # longer than this test: the change is never applied in it
    sb.faults.set_ready("shop", pod, False)
    await sb.wait_for(lambda: sb.ready_endpoints("shop", "web") == [], 10, "no ready endpoint")
    assert await pods_reached(url, 3) == {pod}


NODE_PORT_SVC = """\
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: shop}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-headless, namespace: shop}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb, namespace: shop}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{name: http, port: 8080}]
"""


async def test_node_port_and_headless_services_behave_as_their_type(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(ONE_WEB)
    (await kubectl(sb, "apply", "-f", "-", input=NODE_PORT_SVC)).check()
    (pod,) = pod_names(sb, "shop", "app=web")
    res = (await kubectl(sb, "get", "svc", "-n", "shop", "--no-headers")).check()
    rows = {cols[0]: cols for cols in map(str.split, res.stdout.splitlines())}
    np = rows["web-np"]
    assert np[1] == "NodePort" and ipaddress.ip_address(np[2]).is_loopback
    port, node_port = np[4].split("/")[0].split(":")
    assert port == "80" and 30000 <= int(node_port) <= 32767
    assert await pods_reached(f"http://{np[2]}:80/", 1) == {pod}
    assert await pods_reached(f"http://{NODE_IP}:{node_port}/", 1) == {pod}

    lb = rows["web-lb"]  # no load-balancer controller: pending, node port served
    assert lb[1:2] + lb[3:4] == ["LoadBalancer", "<pending>"]
    lb_node_port = lb[4].split("/")[0].split(":")[1]
    assert await pods_reached(f"http://{NODE_IP}:{lb_node_port}/", 1) == {pod}

    assert rows["web-headless"][1:3] == ["ClusterIP", "None"]
    assert sb.cluster.service_proxy.listening("shop", "web-headless") == []
    (pod_ip,) = pod_ips(sb, "shop", "app=web")
    assert sb.cluster.dns.lookup("web-headless.shop") == [pod_ip]  # A records of the pods

    # Back to ClusterIP: the node port is closed and given back, the cluster IP stays.
    patch = json.dumps({"spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80}]}})
    (await kubectl(sb, "patch", "svc", "web-np", "-n", "shop", "-p", patch)).check()
    svc = json.loads((await kubectl(sb, "get", "svc", "web-np", "-n", "shop", "-o", "json")).stdout)
    assert svc["spec"]["clusterIP"] == np[2] and "nodePort" not in svc["spec"]["ports"][0]
    assert sb.cluster.service_proxy.listening("shop", "web-np") == [(np[2], 80)]


async def test_cluster_ips_are_validated_as_the_api_server_does(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(ONE_WEB)
    outside = NODE_PORT_SVC.split("---", maxsplit=1)[0].replace(
        "type: NodePort", "clusterIP: 10.0.0.7"
    )
    res = await kubectl(sb, "apply", "-f", "-", input=outside)
    assert res.returncode != 0
    assert "provided IP is not in the valid range. The range of valid IPs is" in res.stderr
    taken = sb.cluster.dns.service_ip("web.shop")
    res = await kubectl(sb, "apply", "-f", "-", input=outside.replace("10.0.0.7", taken))
    assert res.returncode != 0 and "provided IP is already allocated" in res.stderr
    patch = json.dumps({"spec": {"clusterIP": "127.96.0.1", "clusterIPs": ["127.96.0.1"]}})
    res = await kubectl(sb, "patch", "svc", "web", "-n", "shop", "-p", patch)
    assert res.returncode != 0 and "may not change once set" in res.stderr

    # A new service port: the listener moves, connections to the old port are refused.
    (pod,) = pod_names(sb, "shop", "app=web")
    ports = json.dumps([{"op": "replace", "path": "/spec/ports/0/port", "value": 9090}])
    (await kubectl(sb, "patch", "svc", "web", "-n", "shop", "--type=json", "-p", ports)).check()
    assert sb.cluster.service_proxy.listening("shop", "web") == [(taken, 9090)]
    assert await pods_reached(f"http://{taken}:9090/", 2) == {pod}
    with pytest.raises(aiohttp.ClientConnectionError):
        await new_connection_get(f"http://{taken}:8080/")

    (await kubectl(sb, "delete", "svc", "web", "-n", "shop")).check()
    assert sb.cluster.service_proxy.listening("shop", "web") == []
    with pytest.raises(aiohttp.ClientConnectionError):
        await new_connection_get(f"http://{taken}:9090/")


async def test_bytes_and_half_close_pass_through_the_cluster_ip(
    sandbox_factory: SandboxFactory,
) -> None:
    scenario = Scenario.from_dict(
        {
            "deployments": [{"name": "echo", "namespace": "shop", "workload": "tcp-echo"}],
            "services": [
                {"name": "echo", "namespace": "shop", "selector": {"app": "echo"}, "ports": [9000]}
            ],
        }
    )
    sb = await sandbox_factory(scenario)
    reader, writer = await asyncio.open_connection(sb.cluster.dns.service_ip("echo.shop"), 9000)
    payload = bytes(range(256)) * 40_000  # 10 MB: more than the proxy buffers per direction
    writer.write(payload)
    writer.write_eof()  # half-close: the echo still answers everything, then closes
    async with asyncio.timeout(30):
        echoed = await reader.read(-1)
    writer.close()
    assert echoed == payload
    await sb.cluster.service_proxy.wait_idle()  # both sides closed, nothing left behind


async def test_manual_endpoints_are_served_only_on_this_machine(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(ONE_WEB)
    (pod,) = pod_names(sb, "shop", "app=web")
    (pod_ip,) = pod_ips(sb, "shop", "app=web")
    manifest = f"""\
apiVersion: v1
kind: Service
metadata: {{name: legacy, namespace: shop}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: legacy, namespace: shop}}
subsets:
  - addresses: [{{ip: 192.0.2.10}}, {{ip: {pod_ip}}}]
    ports: [{{name: http, port: 8080}}]
"""
    (await kubectl(sb, "apply", "-f", "-", input=manifest)).check()
    await sb.wait_ready_endpoints("shop", "legacy", count=2)
    route = sb.cluster.service_proxy.route("shop", "legacy", "http")
    assert route is not None and route.ready == [(pod_ip, 8080)]  # 192.0.2.10 never dialled
    ip = sb.cluster.dns.service_ip("legacy.shop")
    assert await pods_reached(f"http://{ip}/", 4) == {pod}
