"""Pod workloads are real servers on their pods' loopback IPs; faults act on them."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from localmesh.api.sandbox.v1 import greeter_pb2, greeter_pb2_grpc
from localmesh.sandbox import Sandbox, Scenario
from localmesh.sandbox.resources import PODS
from tests import sandbox_fixtures
from tests.sandbox_fixtures import SandboxFactory, kube_client

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

TWO_ECHOS = Scenario.from_dict(
    {
        "deployments": [
            {
                "name": "web",
                "namespace": "shop",
                "workload": "http-echo",
                "replicas": 2,
                "ports": [{"name": "http", "containerPort": 8080}],
            },
            {
                "name": "raw",
                "namespace": "shop",
                "workload": "tcp-echo",
                "ports": [{"name": "tcp", "containerPort": 9000}],
            },
        ],
        "services": [
            {
                "name": "web",
                "namespace": "shop",
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        ],
    }
)


async def get_json(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as session, session.get(url, headers={"X-Test": "1"}) as r:
        assert r.status == 200
        body: dict[str, object] = await r.json()
        return body


async def test_http_echo_names_its_pod(sandbox: Sandbox) -> None:
    pod = sandbox.pods("billing")[0]
    ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
    body = await get_json(f"http://{ip}:8080/some/path?q=1")
    assert body["pod"] == name and body["namespace"] == "billing"
    assert body["method"] == "GET" and body["path"] == "/some/path" and body["query"] == "q=1"
    assert isinstance(body["headers"], dict) and body["headers"]["X-Test"] == "1"
    health = await get_json(f"http://{ip}:8080/health")
    assert health["status"] == "ok"


async def test_grpc_greeter_with_health_and_reflection(sandbox: Sandbox) -> None:
    pod = sandbox.pods("users")[0]
    ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
    async with grpc.aio.insecure_channel(f"{ip}:50051") as channel:
        make_stub: Any = greeter_pb2_grpc.GreeterStub
        stub = make_stub(channel)
        reply = await stub.SayHello(
            greeter_pb2.HelloRequest(name="ada"), metadata=(("x-user", "ada"),)
        )
        assert reply.pod == name and reply.namespace == "users" and reply.pod_ip == ip
        assert "Hello, ada" in reply.message and reply.metadata["x-user"] == "ada"
        stream = [r async for r in stub.SayHelloStream(greeter_pb2.HelloRequest(count=3))]
        assert len(stream) == 3
        check = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="localmesh.api.sandbox.v1.Greeter")
        )
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = [s.name async for r in responses for s in r.list_services_response.service]
        # The same service under grpc.reflection.v1, which newer clients try first.
        v1_call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        v1_responses = v1_call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        v1_services = [s.name async for r in v1_responses for s in r.list_services_response.service]
    assert "localmesh.api.sandbox.v1.Greeter" in services
    assert "grpc.health.v1.Health" in services
    assert sorted(v1_services) == sorted(services)


async def test_replicas_share_a_port_on_their_own_ips(sandbox_factory: SandboxFactory) -> None:
    sb = await sandbox_factory(TWO_ECHOS)
    pods = sb.pods("shop", {"app": "web"})
    assert len(pods) == 2
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2 and all(ip.startswith("127.") for ip in ips)
    seen = {(await get_json(f"http://{ip}:8080/"))["pod"] for ip in ips}
    assert seen == {p["metadata"]["name"] for p in pods}
    assert sorted(await sb.wait_ready_endpoints("shop", "web", count=2)) == sorted(ips)


async def test_tcp_echo(sandbox_factory: SandboxFactory) -> None:
    sb = await sandbox_factory(TWO_ECHOS)
    ip = sb.pods("shop", {"app": "raw"})[0]["status"]["podIP"]
    reader, writer = await asyncio.open_connection(ip, 9000)
    writer.write(b"ping\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
    writer.close()
    await writer.wait_closed()


async def test_kill_and_revive_listener(sandbox: Sandbox) -> None:
    pod = sandbox.pods("billing")[0]
    ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
    await sandbox.faults.kill_listener("billing", name, 8080)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(ip, 8080)
    assert sandbox.ready_pod("billing", name) is not None  # still Ready: nobody probed yet
    await sandbox.faults.revive_listener("billing", name)
    assert (await get_json(f"http://{ip}:8080/"))["pod"] == name


async def test_readiness_flip_and_slow_start(sandbox: Sandbox) -> None:
    name = sandbox.pods("admin")[0]["metadata"]["name"]
    sandbox.faults.set_ready("admin", name, False)
    await sandbox.wait_for(lambda: not sandbox.ready_endpoints("admin", "admin-web"))
    sandbox.faults.set_ready("admin", name, None)
    await sandbox.wait_ready_endpoints("admin", "admin-web")

    # Slow start: the replacement runs at once but turns Ready only after the delay.
    sandbox.faults.ready_delay = 0.5
    sandbox.faults.delete_pod("admin", name)
    running = await sandbox.wait_for(
        lambda: [
            p
            for p in sandbox.pods("admin")
            if p["status"].get("phase") == "Running" and p["metadata"]["name"] != name
        ],
        what="a running replacement",
    )
    replacement = running[0]
    assert sandbox.ready_pod("admin", replacement["metadata"]["name"]) is None
    body = await get_json(f"http://{replacement['status']['podIP']}:8080/")
    assert body["pod"] == replacement["metadata"]["name"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sandbox.wait_ready_endpoints("admin", "admin-web")
    assert loop.time() - started >= 0.3


async def test_replace_pod_helper(sandbox: Sandbox) -> None:
    old = sandbox.pods("users")[0]
    new_name = await sandbox.replace_pod("users", old["metadata"]["name"])
    new = sandbox.store.get(PODS, "users", new_name)
    assert new["status"]["podIP"] != old["status"]["podIP"]
    assert sandbox.store.peek(PODS, "users", old["metadata"]["name"]) is None


async def test_apiserver_restart_keeps_port_and_objects(sandbox: Sandbox) -> None:
    from kubernetes import client

    v1 = client.CoreV1Api(kube_client(sandbox))
    port = sandbox.port
    before: Any = await asyncio.to_thread(v1.list_pod_for_all_namespaces)
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {sandbox.token}"}
    ) as session:
        url = f"{sandbox.url}/api/v1/pods?watch=1&resourceVersion={sandbox.store.rv}"
        async with session.get(url, ssl=False) as watch:
            await sandbox.faults.restart_apiserver()
            # The open watch ends with the old server; the client must re-watch.
            assert await asyncio.wait_for(watch.read(), 5) == b""
    assert sandbox.port == port
    after: Any = await asyncio.to_thread(v1.list_pod_for_all_namespaces)
    assert [p.metadata.uid for p in after.items] == [p.metadata.uid for p in before.items]
    assert after.metadata.resource_version == before.metadata.resource_version


async def test_pod_logs(sandbox: Sandbox) -> None:
    name = sandbox.pods("billing")[0]["metadata"]["name"]
    res = (await sandbox_fixtures.kubectl(sandbox, "logs", "-n", "billing", name)).check()
    assert "http-echo listening on" in res.stdout
