"""`dump-envoy-config --live` against a running control server on a real unix socket."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from localmesh.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from localmesh.xds.static import render_static_config
from tests.unit.cli_helpers import EXAMPLES, run_cli
from tests.unit.dump_helpers import (
    private_runtime_dir,
    run_cli_async,
    running_instance,
    seed_mesh_with_endpoints,
)

SERVICES = str(EXAMPLES / "services.yaml")
MOCKS = str(EXAMPLES / "mocks.yaml")


async def test_live_xds_view_is_the_served_snapshot(tmp_path: Path) -> None:
    runtime_dir = private_runtime_dir(tmp_path)
    async with running_instance(runtime_dir, seed_mesh_with_endpoints()) as snapshot:
        result = await run_cli_async(
            runtime_dir, "dump-envoy-config", "--live", "--name", "dumptest", "--format", "xds"
        )
    assert result.returncode == 0, result.stderr
    view = yaml.safe_load(result.stdout)
    assert view["bootstrap"]["node"]["id"] == "localmesh"
    assert list(view["resources"]) == [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    for type_url, listed in view["resources"].items():
        served = snapshot.resources(type_url)
        assert {r["name"]: r["version"] for r in listed["resources"]} == {
            name: r.version for name, r in served.items()
        }
    assignments = {r["name"]: r["resource"] for r in view["resources"][ENDPOINT_TYPE]["resources"]}
    ports = sorted(
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for a in assignments.values()
        for locality in a["endpoints"]
        for e in locality["lb_endpoints"]
    )
    assert ports == [41000, 41001, 41002, 42000, 42001, 42002]


async def test_live_envoy_format_inlines_routes_and_endpoints(tmp_path: Path) -> None:
    runtime_dir = private_runtime_dir(tmp_path)
    async with running_instance(runtime_dir, seed_mesh_with_endpoints()):
        result = await run_cli_async(
            runtime_dir, "dump-envoy-config", "--live", "--name", "dumptest", "-o", "json"
        )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    (listener,) = config["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert "rds" not in hcm
    assert sorted(v["name"] for v in hcm["route_config"]["virtual_hosts"]) == [
        "admin.localhost",
        "billing-api.localhost",
        "users-api.localhost",
    ]
    for cluster in config["static_resources"]["clusters"]:
        assert cluster["type"] == "STATIC"
        assert "eds_cluster_config" not in cluster
        assert len(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2


def test_static_config_from_the_xds_view_equals_the_envoy_format() -> None:
    # Converting `--format xds` gives exactly what `--format envoy` renders directly.
    view = json.loads(
        run_cli(
            "dump-envoy-config", SERVICES, "--mock-config", MOCKS, "--format", "xds", "-o", "json"
        ).stdout
    )
    direct = json.loads(
        run_cli("dump-envoy-config", SERVICES, "--mock-config", MOCKS, "-o", "json").stdout
    )
    converted = render_static_config(view)

    def by_name(items: list[dict[str, object]]) -> dict[object, object]:
        return {item["name"]: item for item in items}

    for kind in ("listeners", "clusters"):
        assert by_name(converted["static_resources"][kind]) == by_name(
            direct["static_resources"][kind]
        )


async def test_live_without_a_running_instance(tmp_path: Path) -> None:
    runtime_dir = private_runtime_dir(tmp_path)
    result = await run_cli_async(runtime_dir, "dump-envoy-config", "--live", "--name", "nobody")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("localmesh: error: no localmesh instance named 'nobody'")
    assert "Traceback" not in result.stderr
