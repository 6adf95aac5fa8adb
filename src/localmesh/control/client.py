"""The client side of the control API (`localmesh status`, `down`, `dump-envoy-config --live`).

    async with ControlClient.for_name("default") as control:
        status = await control.status()

Every failure to reach an instance is a `ControlError` saying which instance and socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from localmesh.api.v1 import control_pb2 as pb, control_pb2_grpc as pb_grpc
from localmesh.control.convert import resources_from_proto, status_from_proto
from localmesh.control.model import DownResult, InstanceStatus, SnapshotResource
from localmesh.errors import ControlError
from localmesh.runtime import DEFAULT_NAME, running_names, runtime_paths


class ControlClient:
    def __init__(
        self, socket_path: Path | str, *, name: str | None = None, timeout: float = 10.0
    ) -> None:
        self.socket_path = Path(socket_path)
        self.name = name or self.socket_path.parent.name
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    @classmethod
    def for_name(cls, name: str = DEFAULT_NAME, *, base: Path | None = None) -> ControlClient:
        """The client of the instance started with `--name name` by this user."""
        return cls(runtime_paths(name, base=base).control_socket, name=name)

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def status(self) -> InstanceStatus:
        response = await self._call("Status", pb.StatusRequest())
        return status_from_proto(response)

    async def dump(self, type_urls: Sequence[str] = ()) -> tuple[SnapshotResource, ...]:
        """The live snapshot, sorted by type and name; `type_urls` narrows it down."""
        response = await self._call("DumpSnapshot", pb.DumpSnapshotRequest(type_urls=type_urls))
        return resources_from_proto(response)

    async def down(self, *, wait: bool = True, wait_timeout: float = 60.0) -> DownResult:
        """Ask the instance to stop; with `wait`, return once its process has exited (its
        clean-up is done then) or raise ControlError after `wait_timeout` seconds."""
        response = await self._call("Down", pb.DownRequest())
        result = DownResult(pid=response.pid)
        if wait and not await wait_for_exit(result.pid, wait_timeout):
            raise ControlError(
                f"localmesh instance {self.name!r} (pid {result.pid}) did not stop within "
                f"{wait_timeout:g}s; it may still be draining"
            )
        return result

    def _not_running(self, why: str) -> ControlError:
        others = [n for n in running_names(self.socket_path.parent.parent) if n != self.name]
        hint = (
            f"; running: {', '.join(others)} (pick one with --name)"
            if others
            else "; start one with `localmesh up`"
        )
        return ControlError(
            f"no localmesh instance named {self.name!r} is running "
            f"(socket {self.socket_path} {why}){hint}"
        )

    async def _call(self, method: str, request: Any) -> Any:
        try:
            mode = os.stat(self.socket_path).st_mode
        except FileNotFoundError:
            raise self._not_running("not found") from None
        except PermissionError:
            raise ControlError(
                f"cannot open control socket {self.socket_path}: permission denied "
                "(the instance belongs to another user)"
            ) from None
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"{self.socket_path} is not a socket")
        if self._channel is None:
            # A private subchannel pool: a socket that failed a moment ago (an instance that
            # was restarting) is dialled afresh, not left in another channel's backoff.
            self._channel = grpc.aio.insecure_channel(
                f"unix:{self.socket_path}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
        stub = pb_grpc.ControlStub(self._channel)  # type: ignore[no-untyped-call]
        try:
            return await getattr(stub, method)(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise self._not_running("does not answer") from None
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ControlError(
                    f"localmesh instance {self.name!r} did not answer within {self.timeout:g}s"
                ) from None
            raise ControlError(
                f"localmesh instance {self.name!r}: {method} failed: {exc.details()}"
            ) from None


async def wait_for_exit(pid: int, seconds: float) -> bool:
    """Whether process `pid` exits within `seconds`. Uses a pidfd (no polling) where the
    kernel has them."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (OSError, AttributeError):
        return await _poll_for_exit(pid, seconds)
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(exited, seconds)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _poll_for_exit(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, 0)
        return False
    return True
