"""The server side of the control API: any `grpc.aio.Server` can carry it.

`up` implements `ControlProvider` with plain dataclasses and calls `register_control` on the
server it already runs (the xDS server shares it), then `bind_unix_socket` for the control
socket; `serve_control` does all three for a server of its own.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import grpc
import structlog

from localmesh.api.v1 import control_pb2 as pb, control_pb2_grpc as pb_grpc
from localmesh.control.convert import resources_to_proto, status_to_proto
from localmesh.control.model import InstanceStatus, SnapshotResource
from localmesh.errors import ControlError

log = structlog.get_logger(__name__)


class ControlProvider(Protocol):
    """What a running instance answers. Implemented by `up`; no protobuf in sight."""

    async def status(self) -> InstanceStatus:
        """The current state; called for every `localmesh status`."""
        ...

    async def down(self) -> None:
        """Start the normal shutdown and return promptly (the reply must still get out:
        stop the gRPC server last, with a grace period)."""
        ...

    async def snapshot(self) -> Sequence[SnapshotResource]:
        """Every resource of the snapshot currently served to Envoy."""
        ...


class _ControlServicer(pb_grpc.ControlServicer):
    def __init__(self, provider: ControlProvider) -> None:
        self._provider = provider

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusResponse:
        try:
            return status_to_proto(await self._provider.status())
        except Exception as exc:
            await _abort(context, "status", exc)
            raise  # unreachable: abort raises

    async def Down(
        self, request: pb.DownRequest, context: grpc.aio.ServicerContext
    ) -> pb.DownResponse:
        log.info("stop requested over the control API")
        try:
            await self._provider.down()
        except Exception as exc:
            await _abort(context, "down", exc)
            raise
        return pb.DownResponse(pid=os.getpid())

    async def DumpSnapshot(
        self, request: pb.DumpSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.DumpSnapshotResponse:
        try:
            resources = list(await self._provider.snapshot())
        except Exception as exc:
            await _abort(context, "snapshot", exc)
            raise
        wanted = set(request.type_urls)
        if wanted:
            resources = [r for r in resources if r.type_url in wanted]
        resources.sort(key=lambda r: (r.type_url, r.name))
        return resources_to_proto(resources)


async def _abort(context: grpc.aio.ServicerContext, what: str, exc: Exception) -> None:
    log.exception("control request failed", request=what)
    await context.abort(grpc.StatusCode.INTERNAL, f"{what} failed: {exc}")


def register_control(server: grpc.aio.Server, provider: ControlProvider) -> None:
    """Serve the `localmesh.v1.Control` service from `provider` on `server` (before start)."""
    servicer = _ControlServicer(provider)
    pb_grpc.add_ControlServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]


def bind_unix_socket(server: grpc.aio.Server, socket_path: Path) -> str:
    """Add a unix-socket port to `server` (before start) and return its address.

    The directory must be private (0700, see localmesh.runtime); a leftover socket file of
    a dead run is removed first. Call `secure_socket` after `server.start()`."""
    directory = socket_path.parent
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        raise ControlError(f"control socket directory {directory} does not exist") from None
    if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077:
        raise ControlError(f"control socket directory {directory} must be a 0700 directory")
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(socket_path).st_mode):
            socket_path.unlink()
    address = f"unix:{socket_path}"
    if not server.add_insecure_port(address):
        raise ControlError(f"cannot listen on control socket {socket_path}")
    return address


def secure_socket(socket_path: Path, owner_uid: int | None = None) -> None:
    """Mode 0600 on the socket (after `server.start()`), owned by `owner_uid` if given (the
    sudo caller, so that `localmesh status` works without sudo)."""
    os.chmod(socket_path, 0o600)
    if owner_uid is not None and owner_uid != os.geteuid():
        os.chown(socket_path, owner_uid, -1)


async def serve_control(
    provider: ControlProvider, socket_path: Path, *, owner_uid: int | None = None
) -> grpc.aio.Server:
    """A started gRPC server with only the control service, on `socket_path` (mode 0600).
    The caller stops it (`await server.stop(grace)`)."""
    server = grpc.aio.server()
    register_control(server, provider)
    bind_unix_socket(server, socket_path)
    await server.start()
    try:
        secure_socket(socket_path, owner_uid)
    except BaseException:
        await server.stop(None)
        raise
    return server
