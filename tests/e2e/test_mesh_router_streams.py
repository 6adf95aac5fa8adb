"""Long-lived, two-way traffic through the real router (`localmesh agent router` and its
Envoy, created by the real `localmesh mesh`): websockets and bidirectional gRPC streams,
marked to this machine and unmarked to the cluster's pods, through the Service's cluster
IP as any in-cluster client would send them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from localmesh.api.sandbox.v1 import greeter_pb2, greeter_pb2_grpc
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.test_mesh_router import (
    body_of,
    cluster_ip,
    local_app,
    start_mesh,
    stop_mesh,
)
from tests.e2e.up_helpers import eventually
from tests.integration.mesh_helpers import kube_for, wait_managed_gone

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

GREETER = greeter_pb2.DESCRIPTOR.services_by_name["Greeter"].full_name
# A service only the developer's process lists: which end answered a reflection stream.
ON_THIS_MACHINE = "localmesh.test.OnThisMachine"
MARK = (("version", "dev"),)


async def add_websocket_service(sb: Sandbox) -> None:
    """billing/ws-echo: pods running the sandbox's test agent, whose /ws echoes."""
    admin = kube_for(sb)
    labels = {"app": "ws-echo"}
    container = {
        "name": "agent",
        "image": "localmesh:dev",
        "command": ["python", "-m", "localmesh.sandbox.testagent"],
        "args": ["serve", "--port", "8080"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
    }
    await admin.create(
        "Deployment",
        "billing",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "ws-echo"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        },
    )
    await admin.create(
        "Service",
        "billing",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ws-echo"},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": 8080, "targetPort": "http"}],
            },
        },
    )
    await admin.close()
    assert await sb.wait_ready_endpoints("billing", "ws-echo", count=1, seconds=60)


async def ws_echoes(url: str, headers: dict[str, str], texts: list[str]) -> list[str]:
    """Each text sent, then its answer read, on one websocket."""
    answers: list[str] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        for text in texts:
            await ws.send_str(text)
            answers.append(await ws.receive_str(timeout=10))
    return answers


async def test_websockets_marked_and_unmarked_through_the_router(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    await add_websocket_service(sandbox)
    ip = await cluster_ip(sandbox, "billing", "ws-echo")
    url = f"http://{ip}:8080/ws"
    # Before the mesh: the pods echo.
    (pod_answer,) = await ws_echoes(url, {}, ["hi"])
    assert pod_answer.startswith("ws-echo-") and pod_answer.endswith(" echoes hi")
    async with local_app("ana") as port:
        proc = await start_mesh(sandbox, tmp_path, "billing/ws-echo", f"{port}:8080", "dev")
        try:

            async def marked() -> str | None:
                body = await body_of(f"http://{ip}:8080/x", {"version": "dev"})
                return body if body and body.startswith("ana") else None

            await eventually(marked, seconds=30, what="a marked request served locally")
            texts = ["one", "two", "three"]
            mine = await ws_echoes(url, {"version": "dev"}, texts)
            assert mine == [f"ana echoes {t}" for t in texts]
            # Unmarked (and marked for someone else): the pods' websocket, both directions.
            for headers in ({}, {"version": "prod"}):
                theirs = await ws_echoes(url, headers, texts)
                pod = theirs[0].split(" echoes ")[0]
                assert pod.startswith("ws-echo-"), theirs
                assert theirs == [f"{pod} echoes {t}" for t in texts]
        finally:
            await stop_mesh(proc)
    assert proc.returncode == 0
    await wait_managed_gone(sandbox)


@asynccontextmanager
async def local_greeter(who: str = "local") -> AsyncIterator[int]:
    """The developer's gRPC server: the greeter in its own words (`{who} hello NAME`), with
    server reflection (a bidirectional stream) that lists a service only this machine has."""

    class LocalGreeter(greeter_pb2_grpc.GreeterServicer):
        async def SayHello(self, request: Any, context: Any) -> Any:
            return greeter_pb2.HelloReply(message=f"{who} hello {request.name}")

    server = grpc.aio.server()
    greeter_pb2_grpc.add_GreeterServicer_to_server(LocalGreeter(), server)  # type: ignore[no-untyped-call]
    reflection.enable_server_reflection((GREETER, ON_THIS_MACHINE, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


async def reflection_rounds(channel: grpc.aio.Channel, metadata: Any, rounds: int) -> list[Any]:
    """One bidirectional stream: a request written, its answer read, `rounds` times, then
    the client half-closes and the server ends the stream."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call: Any = stub.ServerReflectionInfo(metadata=metadata, timeout=15)
    answers = []
    for i in range(rounds):
        host = f"round-{i}"
        await call.write(reflection_pb2.ServerReflectionRequest(host=host, list_services=""))
        answer = await call.read()
        assert answer is not grpc.aio.EOF
        assert answer.original_request.host == host  # this answer is to this request
        answers.append(sorted(s.name for s in answer.list_services_response.service))
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    return answers


async def test_bidirectional_grpc_streams_marked_and_unmarked(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    async with local_greeter() as port:
        proc = await start_mesh(sandbox, tmp_path, "users/users-api", f"{port}:50051", "dev")
        try:
            ip = await cluster_ip(sandbox, "users", "users-api")
            async with grpc.aio.insecure_channel(f"{ip}:50051") as channel:
                greeter = greeter_pb2_grpc.GreeterStub(channel)  # type: ignore[no-untyped-call]

                async def marked() -> str | None:
                    reply = await greeter.SayHello(
                        greeter_pb2.HelloRequest(name="ana"), metadata=MARK, timeout=5
                    )
                    return str(reply.message) if reply.message.startswith("local") else None

                await eventually(marked, seconds=30, what="a marked call served locally")
                mine = await reflection_rounds(channel, MARK, rounds=3)
                assert all(ON_THIS_MACHINE in names for names in mine), mine
                for metadata in ((), (("version", "prod"),)):
                    theirs = await reflection_rounds(channel, metadata, rounds=3)
                    for names in theirs:
                        assert GREETER in names and ON_THIS_MACHINE not in names, theirs
                # Both kinds at once on the one HTTP/2 connection, interleaved.
                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                local: Any = stub.ServerReflectionInfo(metadata=MARK, timeout=15)
                pods: Any = stub.ServerReflectionInfo(timeout=15)
                for i in range(3):
                    for call in (local, pods):
                        await call.write(
                            reflection_pb2.ServerReflectionRequest(host=f"r{i}", list_services="")
                        )
                    local_names = [
                        s.name for s in (await local.read()).list_services_response.service
                    ]
                    pod_names = [s.name for s in (await pods.read()).list_services_response.service]
                    assert ON_THIS_MACHINE in local_names and ON_THIS_MACHINE not in pod_names
                for call in (local, pods):
                    await call.done_writing()
                    assert await call.read() is grpc.aio.EOF
        finally:
            await stop_mesh(proc)
    assert proc.returncode == 0
    await wait_managed_gone(sandbox, "users")
