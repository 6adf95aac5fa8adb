"""The ADS server: gRPC streams in, cache state out (grpc.aio, SotW and Delta).

It only translates: each stream becomes a `cache.Stream`, requests (read from their bytes
by localmesh.xds.discovery, no typed classes) are fed to it, and whatever it says to send
is written as pre-assembled bytes. ACK/NACK, nonces,
subscriptions and ordering live in the cache.

    ads = AdsService(cache)
    ads.register(server)                      # on any grpc.aio.Server (shared with others)

    server = await start_server(cache, socket_path, tcp_address=None, services=())
    ...                                       # `services`: more register(server) callables
    await server.stop(grace=1.0)

The unix socket is created user-only (0600) in a user-only directory before anything can
connect; TCP (loopback) is optional. Stop Envoy before the server, or the server's stop
cancels the streams (that is fine, just noisier in Envoy's log).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import structlog

from localmesh.errors import XdsServerError
from localmesh.xds.cache import SnapshotCache, Stream
from localmesh.xds.discovery import DeltaRequest, SotwRequest, parse_delta, parse_sotw
from localmesh.xds.wire import encode_response

log = structlog.get_logger(__name__)

_Request = TypeVar("_Request", SotwRequest, DeltaRequest)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


class AdsService:
    """AggregatedDiscoveryService over a `SnapshotCache`; add it to a server with register()."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache

    def register(self, server: grpc.aio.Server) -> None:
        handler = grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._sotw, request_deserializer=parse_sotw
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._delta, request_deserializer=parse_delta
                ),
            },
        )
        server.add_generic_rpc_handlers((handler,))

    async def _sotw(
        self, requests: AsyncIterator[SotwRequest], context: grpc.aio.ServicerContext
    ) -> None:
        stream = self.cache.open_stream(delta=False)

        def feed(request: SotwRequest) -> None:
            stream.on_sotw_request(
                type_url=request.type_url,
                resource_names=request.resource_names,
                response_nonce=request.response_nonce,
                error_detail=request.error_detail,
                node_id=request.node_id,
            )

        await self._serve(stream, requests, feed, context)

    async def _delta(
        self, requests: AsyncIterator[DeltaRequest], context: grpc.aio.ServicerContext
    ) -> None:
        stream = self.cache.open_stream(delta=True)

        def feed(request: DeltaRequest) -> None:
            stream.on_delta_request(
                type_url=request.type_url,
                subscribe=request.subscribe,
                unsubscribe=request.unsubscribe,
                initial_versions=request.initial_versions,
                response_nonce=request.response_nonce,
                error_detail=request.error_detail,
                node_id=request.node_id,
            )

        await self._serve(stream, requests, feed, context)

    async def _serve(
        self,
        stream: Stream,
        requests: AsyncIterator[_Request],
        feed: Callable[[_Request], None],
        context: grpc.aio.ServicerContext,
    ) -> None:
        log.info("xds.stream_open", stream=stream.id, delta=stream.delta, peer=context.peer())

        async def read() -> None:
            try:
                async for request in requests:
                    feed(request)
            finally:
                stream.wake()

        reader = asyncio.create_task(read(), name=f"xds-read-{stream.id}")
        try:
            while not reader.done():
                for response in stream.responses():
                    await context.write(encode_response(response))
                await stream.wait()
            if not reader.cancelled() and (error := reader.exception()) is not None:
                log.warning("xds.stream_read_failed", stream=stream.id, error=repr(error))
        except Exception:
            # A bug, not Envoy going away: say so; Envoy reconnects and re-syncs.
            log.exception("xds.stream_failed", stream=stream.id, node=stream.node_id)
            raise
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            stream.close()
            log.info("xds.stream_closed", stream=stream.id, node=stream.node_id)


def prepare_socket_path(socket_path: Path) -> None:
    """A user-only directory for the socket, and no stale socket file in the way."""
    # grpc's unix: addresses are limited by sun_path (108 bytes on Linux).
    if len(os.fsencode(socket_path)) > 107:
        raise XdsServerError(f"xDS socket path is too long for a unix socket: {socket_path}")
    directory = socket_path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise XdsServerError(f"{directory} belongs to another user; choose another directory")
    if info.st_mode & 0o077 and not info.st_mode & stat.S_ISVTX:
        os.chmod(directory, 0o700)  # ours, not a shared sticky directory like /tmp
    if socket_path.exists() or socket_path.is_symlink():
        if not stat.S_ISSOCK(socket_path.lstat().st_mode):
            raise XdsServerError(f"{socket_path} exists and is not a socket; remove it")
        socket_path.unlink()  # stale socket of a previous run


@dataclass
class XdsServer:
    """A running grpc.aio server with the ADS service (and whatever else was registered)."""

    server: grpc.aio.Server
    socket_path: Path
    tcp_port: int | None = None

    async def stop(self, grace: float | None = 1.0) -> None:
        await self.server.stop(grace)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


async def start_server(
    cache: SnapshotCache,
    socket_path: str | Path,
    *,
    tcp_address: str | None = None,
    services: Iterable[Callable[[grpc.aio.Server], None]] = (),
) -> XdsServer:
    """Serve ADS (plus `services`, each a `register(server)`) on a 0600 unix socket.

    `tcp_address` (e.g. "127.0.0.1:0") also listens on TCP; the bound port is returned
    in `XdsServer.tcp_port`.
    """
    path = Path(socket_path)
    prepare_socket_path(path)
    server = grpc.aio.server()
    AdsService(cache).register(server)
    for register in services:
        register(server)
    # The socket must never be reachable by others, not even briefly: umask while binding.
    old_umask = os.umask(0o177)
    try:
        bound = server.add_insecure_port(f"unix:{path}")
    finally:
        os.umask(old_umask)
    if not bound:
        raise XdsServerError(f"cannot listen on {path}")
    tcp_port = server.add_insecure_port(tcp_address) if tcp_address else None
    await server.start()
    os.chmod(path, 0o600)
    log.info("xds.serving", socket=str(path), tcp_port=tcp_port)
    return XdsServer(server, path, tcp_port)


__all__ = [
    "ADS_SERVICE",
    "AdsService",
    "XdsServer",
    "prepare_socket_path",
    "start_server",
]
