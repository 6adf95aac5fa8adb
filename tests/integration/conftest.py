"""Fixtures for tests that run the real Envoy against real loopback backends.

http_backends(name) -> HttpBackend       started; stopped after the test
grpc_backends(name) -> GrpcBackend       started; stopped after the test
envoy_supervisors(bootstrap, **kw) -> EnvoySupervisor
    not started; after the test each is stopped and its processes must be gone
free_port() -> int                       a loopback port nobody listens on right now
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from localmesh.envoy import EnvoySupervisor
from tests.integration.backends import GrpcBackend, HttpBackend


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_exists(pid: int) -> bool:
    """True while `pid` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
async def http_backends() -> AsyncIterator[Callable[[str], Awaitable[HttpBackend]]]:
    started: list[HttpBackend] = []

    async def start(name: str) -> HttpBackend:
        backend = await HttpBackend(name).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


@pytest.fixture
async def grpc_backends() -> AsyncIterator[Callable[[str], Awaitable[GrpcBackend]]]:
    started: list[GrpcBackend] = []

    async def start(name: str) -> GrpcBackend:
        backend = await GrpcBackend(name).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


class SupervisorFactory(Protocol):
    def __call__(self, bootstrap: Mapping[str, Any] | Path, **kwargs: Any) -> EnvoySupervisor: ...


@pytest.fixture
async def envoy_supervisors(tmp_path: Path) -> AsyncIterator[SupervisorFactory]:
    """EnvoySupervisors with test-friendly timings; every Envoy they ran must be gone after."""
    made: list[EnvoySupervisor] = []

    def make(bootstrap: Mapping[str, Any] | Path, **kwargs: Any) -> EnvoySupervisor:
        options: dict[str, Any] = {
            "runtime_dir": tmp_path / f"envoy-{len(made)}",
            "ready_timeout": 15.0,
            "backoff_initial": 0.05,
            "backoff_max": 0.5,
            "concurrency": 1,
        }
        options.update(kwargs)
        supervisor = EnvoySupervisor(bootstrap, **options)
        made.append(supervisor)
        return supervisor

    yield make
    # Earlier processes of a supervisor were reaped when it restarted them: only the
    # current one can survive a bad stop().
    pids = [supervisor.pid for supervisor in made if supervisor.pid is not None]
    for supervisor in made:
        await supervisor.stop()
    leftovers = [pid for pid in pids if process_exists(pid)]
    assert not leftovers, f"Envoy processes left running: {leftovers}"
