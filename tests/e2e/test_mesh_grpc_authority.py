"""A marked gRPC call keeps its :authority through the real router, the shadow and the
tunnel: the developer's process sees the name the in-cluster caller dialled.

grpcio's server API does not show a call's :authority, so the developer's process here is
a small gRPC server on the h2 library (the HTTP/2 implementation grpclib uses): it answers
Greeter.SayHello with the request's :authority. The caller is real grpcio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from localmesh.api.sandbox.v1 import greeter_pb2, greeter_pb2_grpc
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.test_mesh_router import cluster_ip, start_mesh, stop_mesh
from tests.e2e.up_helpers import eventually
from tests.integration.mesh_helpers import wait_managed_gone

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

SAY_HELLO = "/localmesh.api.sandbox.v1.Greeter/SayHello"


class _AuthorityGreeter(asyncio.Protocol):
    """HTTP/2 (prior knowledge, as gRPC speaks it in clear): SayHello answers
    `local hello NAME` with the call's :authority in the reply's metadata map."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self.headers: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.headers[event.stream_id] = {str(k): str(v) for k, v in event.headers}
                self.bodies[event.stream_id] = b""
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._answer(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.transport.close()
                return
        self.transport.write(self.conn.data_to_send())

    def _answer(self, stream_id: int) -> None:
        headers, body = self.headers.pop(stream_id), self.bodies.pop(stream_id)
        self.conn.send_headers(
            stream_id, [(":status", "200"), ("content-type", "application/grpc")]
        )
        if headers[":path"] != SAY_HELLO:
            self.conn.send_headers(stream_id, [("grpc-status", "12")], end_stream=True)
            return
        request = greeter_pb2.HelloRequest.FromString(body[5:])  # after the 5-byte prefix
        reply = greeter_pb2.HelloReply(
            message=f"local hello {request.name}",
            metadata={":authority": headers[":authority"]},
        ).SerializeToString()
        self.conn.send_data(stream_id, b"\0" + len(reply).to_bytes(4, "big") + reply)
        self.conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)


@asynccontextmanager
async def authority_greeter() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_AuthorityGreeter, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def say_hello(target: str, authority: str | None) -> Any:
    options = [("grpc.default_authority", authority)] if authority else []
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)  # type: ignore[no-untyped-call]
        return await stub.SayHello(
            greeter_pb2.HelloRequest(name="ana"), metadata=(("version", "dev"),), timeout=5
        )


async def test_a_marked_grpc_call_keeps_its_authority(sandbox: Sandbox, tmp_path: Path) -> None:
    async with authority_greeter() as port:
        # The server itself, straight: it reports what a client sent.
        direct = await say_hello(f"127.0.0.1:{port}", "somewhere.example:1")
        assert direct.metadata[":authority"] == "somewhere.example:1"
        proc = await start_mesh(sandbox, tmp_path, "users/users-api", f"{port}:50051", "dev")
        try:
            ip = await cluster_ip(sandbox, "users", "users-api")
            target = f"{ip}:50051"

            async def served_locally() -> Any:
                reply = await say_hello(target, None)
                return reply if reply.message == "local hello ana" else None

            reply = await eventually(served_locally, seconds=30, what="a marked call served here")
            assert reply.metadata[":authority"] == target  # what grpcio sends by default
            # A caller that dialled the Service by name (as through cluster DNS).
            for name in ("users-api.users:50051", "users-api.users.svc.cluster.local:50051"):
                reply = await say_hello(target, name)
                assert reply.message == "local hello ana"
                assert reply.metadata[":authority"] == name
        finally:
            await stop_mesh(proc)
    assert proc.returncode == 0
    await wait_managed_gone(sandbox, "users")
