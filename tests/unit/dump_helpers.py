"""A stand-in running instance for `dump-envoy-config --live`: the real control server on a
real unix socket, answering with a real snapshot of the seed example (with endpoints)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from localmesh.bootstrap import BootstrapOptions, build_bootstrap
from localmesh.config import load_config, load_mocks
from localmesh.control.model import InstanceStatus, SnapshotResource
from localmesh.control.server import serve_control
from localmesh.desired import DesiredState, Endpoint
from localmesh.plan import backend_key, plan
from localmesh.resolve import MockResolver, resolve_all
from localmesh.runtime import prepare, runtime_paths
from localmesh.xds.resources import TYPE_ORDER, to_json
from localmesh.xds.snapshot import Snapshot, build_snapshot
from tests.unit.cli_helpers import BIN, EXAMPLES, Result, cli_env


def seed_mesh_with_endpoints() -> DesiredState:
    config = load_config(EXAMPLES / "services.yaml")
    ports = resolve_all(config, MockResolver(load_mocks(EXAMPLES / "mocks.yaml")))
    endpoints = {
        backend_key(entry, ports[entry]): [
            Endpoint("127.0.0.1", 41000 + index, f"{entry.service}-0"),
            Endpoint("127.0.0.1", 42000 + index, f"{entry.service}-1"),
        ]
        for index, entry in enumerate(config.services)
    }
    return plan(config, ports, endpoints, "127.0.0.1")


def snapshot_resources(snapshot: Snapshot) -> list[SnapshotResource]:
    return [
        SnapshotResource(r.type_url, r.name, r.version, json.dumps(to_json(r.message())))
        for type_url in TYPE_ORDER
        for r in snapshot.resources(type_url).values()
    ]


class SnapshotOnlyInstance:
    """A ControlProvider that serves a fixed snapshot (dump only asks for that)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    async def status(self) -> InstanceStatus:
        raise NotImplementedError("only the snapshot is served here")

    async def down(self) -> None:
        raise NotImplementedError("only the snapshot is served here")

    async def snapshot(self) -> Sequence[SnapshotResource]:
        return snapshot_resources(self._snapshot)


@contextlib.asynccontextmanager
async def running_instance(
    runtime_dir: Path, mesh: DesiredState, name: str = "dumptest"
) -> AsyncIterator[Snapshot]:
    """Serve `mesh`'s snapshot on the control socket of mesh `name` under `runtime_dir`
    (pass XDG_RUNTIME_DIR=runtime_dir to the CLI), with the bootstrap file `up` writes."""
    env = {"XDG_RUNTIME_DIR": str(runtime_dir)}
    paths = prepare(runtime_paths(name, env=env))
    paths.envoy_bootstrap.write_text(
        json.dumps(build_bootstrap(BootstrapOptions(xds_socket_path=str(paths.xds_socket))))
    )
    snapshot = build_snapshot(mesh).check()
    server = await serve_control(SnapshotOnlyInstance(snapshot), paths.control_socket)
    try:
        yield snapshot
    finally:
        await server.stop(None)


async def run_cli_async(runtime_dir: Path, *args: str | Path) -> Result:
    """The CLI as a subprocess, without blocking the event loop that serves it."""
    env = dict(cli_env(), XDG_RUNTIME_DIR=str(runtime_dir))
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "localmesh"),
        *map(str, args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def private_runtime_dir(tmp_path: Path) -> Path:
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    os.chmod(runtime_dir, 0o700)
    return runtime_dir
