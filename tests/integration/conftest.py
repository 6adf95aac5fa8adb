"""Fixtures for tests that run the real Envoy against real loopback backends.

http_backends(name) -> HttpBackend       started; stopped after the test
grpc_backends(name) -> GrpcBackend       started; stopped after the test
envoy_supervisors(bootstrap, **kw) -> EnvoySupervisor
    not started; after the test each is stopped and its processes must be gone
free_port() -> int                       a loopback port reserved for this process (tests/ports.py)
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localmesh.bootstrap import AdsMode, BootstrapOptions, build_bootstrap
from localmesh.desired import (
    ClusterSpec,
    DesiredState,
    Endpoint,
    Protocol,
    VirtualHostSpec,
    cluster_name,
)
from localmesh.envoy import EnvoySupervisor
from localmesh.xds.cache import SnapshotCache
from localmesh.xds.server import XdsServer, start_server
from localmesh.xds.snapshot import Snapshot, build_snapshot
from tests.integration.backends import GrpcBackend, HttpBackend
from tests.ports import free_port as free_port  # noqa: PLC0414 - re-exported for callers


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


class SupervisorFactory(typing.Protocol):
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


# -- a control plane with a supervised Envoy ---------------------------------------------

ACK_WITHIN = 10.0
Service = tuple[ClusterSpec, VirtualHostSpec]


def mesh_service(name: str, *ports: int, protocol: Protocol = Protocol.HTTP) -> Service:
    """Host `<name>.localhost` routed to a cluster with an endpoint per local port."""
    cluster = cluster_name("test", name, 80, protocol)
    endpoints = tuple(Endpoint("127.0.0.1", port, f"{name}-{i}") for i, port in enumerate(ports))
    return (
        ClusterSpec(cluster, protocol, endpoints),
        VirtualHostSpec.to_cluster(f"{name}.localhost", cluster, protocol),
    )


@dataclass
class SupervisedMesh:
    """The xDS cache and ADS server (unix socket) with an EnvoySupervisor connected to it."""

    cache: SnapshotCache
    server: XdsServer
    supervisor: EnvoySupervisor
    listener_port: int
    ads_mode: AdsMode

    def mesh(self, *services: Service, listener_port: int | None = None) -> DesiredState:
        return DesiredState.serving(
            "127.0.0.1",
            self.listener_port if listener_port is None else listener_port,
            clusters=tuple(c for c, _ in services),
            virtual_hosts=tuple(v for _, v in services),
        )

    def set(self, *services: Service, listener_port: int | None = None) -> Snapshot:
        """Serve a snapshot of `services` without waiting for Envoy."""
        mesh = self.mesh(*services, listener_port=listener_port)
        snapshot = build_snapshot(mesh, self.cache.snapshot)
        self.cache.set_snapshot(snapshot)
        return snapshot

    async def push(self, *services: Service, listener_port: int | None = None) -> Snapshot:
        """Serve a snapshot of `services` and wait until Envoy ACKed all of it."""
        snapshot = self.set(*services, listener_port=listener_port)
        async with asyncio.timeout(ACK_WITHIN):
            await self.cache.wait_for_ack(snapshot.version)
        return snapshot


@pytest.fixture
async def supervised_mesh(
    request: pytest.FixtureRequest, tmp_path: Path, envoy_supervisors: SupervisorFactory
) -> AsyncIterator[SupervisedMesh]:
    """Parametrize indirectly with an AdsMode to choose SotW or Delta (default SotW)."""
    mode: AdsMode = getattr(request, "param", AdsMode.SOTW)
    cache = SnapshotCache()
    socket_path = tmp_path / "run" / "xds.sock"
    server = await start_server(cache, socket_path)
    try:
        bootstrap = build_bootstrap(
            BootstrapOptions(xds_socket_path=str(socket_path), ads_mode=mode)
        )
        supervisor = envoy_supervisors(bootstrap, runtime_dir=tmp_path / "run")
        await supervisor.start()
        try:
            yield SupervisedMesh(cache, server, supervisor, free_port(), mode)
        finally:
            await supervisor.stop()  # Envoy first: its streams end before the server's
    finally:
        await server.stop(1.0)
