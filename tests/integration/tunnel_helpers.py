"""Helpers for the reverse-tunnel tests: the real shadow agent as a subprocess, tunnel
clients stopped after the test, and small local servers.

    ShadowProcess(secret, ports, ...)   `localmesh agent shadow` in a subprocess; `start()`
                                        returns once it logged "shadow agent ready"
    shadows(secret, ports, **kw)        fixture factory: started, killed after the test
    tunnels(dialer, secret, ports)      fixture factory: TunnelClient started and ready
    raw_exchange(address, payload)      send, half-close, read all: (bytes, reset?)
    curl_at(ip, port, host, path)       real curl to any loopback IP: (status, body)
    wait_until(predicate, what)         a condition with a deadline (no fixed sleeps)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest

from localmesh.clustermesh import tunnel_wire
from localmesh.clustermesh.tunnel_laptop import Dialer, TunnelClient

READY_SECONDS = 20.0
LOOPBACK = "127.0.0.1"


class ShadowProcess:
    def __init__(
        self,
        secret: bytes,
        ports: Sequence[int],
        *,
        bind: str = LOOPBACK,
        tunnel_bind: str = LOOPBACK,
        tunnel_port: int,
        wait: float = 5.0,
        health_port: int | None = None,
    ) -> None:
        self.secret = secret
        self.ports = list(ports)
        self.bind = bind
        self.tunnel_bind = tunnel_bind
        self.tunnel_port = tunnel_port
        self.wait = wait
        self.health_port = health_port
        self.proc: asyncio.subprocess.Process | None = None
        self.logs: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> ShadowProcess:
        env = dict(os.environ, **{tunnel_wire.SECRET_ENV: self.secret.hex()})
        env.pop("POD_IP", None)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "localmesh",
            "--log-format",
            "json",
            "agent",
            "shadow",
            "--ports",
            ",".join(map(str, self.ports)),
            "--bind",
            self.bind,
            "--tunnel-bind",
            self.tunnel_bind,
            "--tunnel-port",
            str(self.tunnel_port),
            "--wait",
            str(self.wait),
            *(["--health-port", str(self.health_port)] if self.health_port is not None else []),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        ready = asyncio.Event()
        self._reader = asyncio.create_task(self._read_logs(ready))
        try:
            async with asyncio.timeout(READY_SECONDS):
                await ready.wait()
        except TimeoutError:
            await self.kill()
            raise AssertionError(f"shadow agent did not start: {self.logs}") from None
        return self

    async def _read_logs(self, ready: asyncio.Event) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"event": line.decode(errors="replace").rstrip()}
            self.logs.append(record)
            if record.get("event") == "shadow agent ready":
                ready.set()
        ready.set()  # exited: start() reports the logs

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.logs if r.get("event") == name]

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return code


ShadowFactory = Callable[..., Awaitable[ShadowProcess]]
TunnelFactory = Callable[..., Awaitable[TunnelClient]]


@pytest.fixture
async def shadows() -> AsyncIterator[ShadowFactory]:
    started: list[ShadowProcess] = []

    async def start(secret: bytes, ports: Sequence[int], **kwargs: Any) -> ShadowProcess:
        shadow = ShadowProcess(secret, ports, **kwargs)
        started.append(shadow)
        return await shadow.start()

    yield start
    for shadow in started:
        await shadow.kill()


@pytest.fixture
async def tunnels() -> AsyncIterator[TunnelFactory]:
    started: list[TunnelClient] = []

    async def start(
        dialer: Dialer,
        secret: bytes,
        ports: Mapping[int, int],
        *,
        ready: bool = True,
        **kwargs: Any,
    ) -> TunnelClient:
        client = TunnelClient(dialer, secret, ports, **kwargs)
        started.append(client)
        client.start()
        if ready:
            async with asyncio.timeout(READY_SECONDS):
                await client.wait_ready()
        return client

    yield start
    for client in started:
        await client.stop()


async def wait_until(
    predicate: Callable[[], object], what: str, seconds: float = READY_SECONDS
) -> None:
    """Re-check `predicate` until it is true; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # polling interval of a condition with a deadline


def _exchange(address: tuple[str, int], payload: bytes, half_close: bool) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    try:
        with socket.create_connection(address, timeout=READY_SECONDS) as sock:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(1 << 20):
                chunks.append(chunk)
    # A peer that resets at once (the shadow does, when the local port refuses) may do so
    # before this thread returns from connect or send: a reset all the same.
    except (ConnectionResetError, BrokenPipeError):
        return b"".join(chunks), True
    return b"".join(chunks), False


async def raw_exchange(
    address: tuple[str, int], payload: bytes, *, half_close: bool = True
) -> tuple[bytes, bool]:
    """Send `payload` on a new connection (then half-close), read until the end: the bytes
    received and whether the connection was reset. Blocking socket in a thread, so the
    tunnel on this loop keeps running."""
    return await asyncio.to_thread(_exchange, address, payload, half_close)


@contextlib.asynccontextmanager
async def tcp_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    port: int = 0,
    host: str = LOOPBACK,
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, host, port)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def curl_at(ip: str, port: int, host: str, path: str = "/") -> tuple[int, bytes]:
    """(status, body) of GET http://ip:port/path with `Host: host`, by the real curl."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", "-H", f"Host: {host}",
        f"http://{ip}:{port}{path}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"curl failed ({proc.returncode}): {err.decode().strip()}"
    body, _, status = out.rpartition(b"\n")
    return int(status), body
