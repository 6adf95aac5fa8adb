"""`dump-envoy-config` without --mock-config: service ports come from a (sandbox) cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from localmesh.sandbox import Sandbox
from tests.unit.cli_helpers import EXAMPLES, Result
from tests.unit.dump_helpers import private_runtime_dir, run_cli_async

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SERVICES = EXAMPLES / "services.yaml"
MOCKS = EXAMPLES / "mocks.yaml"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox.start() as sb:  # the default scenario is the seed's example
        yield sb


async def dump(sandbox: Sandbox, runtime_dir: Path, *args: str | Path) -> Result:
    return await run_cli_async(
        runtime_dir, "dump-envoy-config", *args, "--kubeconfig", sandbox.kubeconfig_path
    )


@pytest.mark.parametrize("fmt", ["envoy", "xds"])
async def test_cluster_resolution_gives_the_same_config_as_the_mocks(
    sandbox: Sandbox, tmp_path: Path, fmt: str
) -> None:
    runtime_dir = private_runtime_dir(tmp_path)  # the xds bootstrap names a socket in it
    from_cluster = await dump(sandbox, runtime_dir, SERVICES, "--format", fmt)
    assert from_cluster.returncode == 0, from_cluster.stderr
    from_mocks = await run_cli_async(
        runtime_dir, "dump-envoy-config", SERVICES, "--mock-config", MOCKS, "--format", fmt
    )
    assert from_mocks.returncode == 0, from_mocks.stderr
    assert from_cluster.stdout == from_mocks.stdout


async def test_unknown_port_and_service_are_reported_per_entry(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    services = tmp_path / "services.yaml"
    services.write_text(
        "services:\n"
        "  - {host: a.localhost, namespace: billing, service: billing-api, port_name: grpc}\n"
        "  - {host: b.localhost, namespace: billing, service: nope, port: 80}\n"
        "  - {host: c.localhost, namespace: users, service: users-api, port_name: grpc}\n"
    )
    result = await dump(sandbox, private_runtime_dir(tmp_path), services)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"localmesh: error: {services}:2:5: a.localhost -> ")
    assert "has no port 'grpc'" in lines[0]
    assert "http" in lines[0]  # the ports it does have
    assert lines[1].startswith(f"localmesh: error: {services}:3:5: b.localhost -> ")
    assert "'nope' not found" in lines[1]
