"""`dump-envoy-config` output for the seed example, offline (--mock-config)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localmesh.cli.main import main
from localmesh.config import load_config, load_mocks
from localmesh.plan import plan
from localmesh.resolve import MockResolver, resolve_all
from localmesh.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from localmesh.xds.snapshot import build_snapshot
from tests.unit.cli_helpers import EXAMPLES, logging_restored, run_cli

SERVICES = str(EXAMPLES / "services.yaml")
MOCKS = str(EXAMPLES / "mocks.yaml")
CLUSTERS = {
    "grpc.users.users-api.50051": "grpc",
    "http.billing.billing-api.8080": "http",
    "http.admin.admin-web.8080": "http",
}
HOSTS = {
    "users-api.localhost": "grpc.users.users-api.50051",
    "billing-api.localhost": "http.billing.billing-api.8080",
    "admin.localhost": "http.admin.admin-web.8080",
}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


def dump(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["--log-format", "json", "dump-envoy-config", *args])
    return code, capsys.readouterr().out


def parsed(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out = dump(capsys, *args)
    assert code == 0
    return json.loads(out) if "json" in args else yaml.safe_load(out)


def route_table(virtual_hosts: list[dict[str, Any]]) -> dict[str, tuple[list[str], str]]:
    return {v["name"]: (v["domains"], v["routes"][0]["route"]["cluster"]) for v in virtual_hosts}


def test_envoy_format_is_a_static_config_for_the_seed_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = parsed(capsys, SERVICES, "--mock-config", MOCKS)
    assert set(config) == {"admin", "static_resources"}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 80}
    (chain,) = listener["filter_chains"]
    hcm = chain["filters"][0]["typed_config"]
    assert hcm.get("codec_type", "AUTO") == "AUTO"  # HTTP/1.1 and h2c on one port (AUTO = 0)
    assert route_table(hcm["route_config"]["virtual_hosts"]) == {
        host: ([host, f"{host}:*"], cluster) for host, cluster in HOSTS.items()
    }
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert set(clusters) == set(CLUSTERS)
    for name, protocol in CLUSTERS.items():
        assert clusters[name]["type"] == "STATIC"
        options = json.dumps(clusters[name].get("typed_extension_protocol_options", {}))
        assert ("http2_protocol_options" in options) == (protocol == "grpc")


def test_yaml_and_json_outputs_are_the_same_document(capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("envoy", "xds"):
        as_yaml = parsed(capsys, SERVICES, "--mock-config", MOCKS, "--format", fmt)
        as_json = parsed(
            capsys, SERVICES, "--mock-config", MOCKS, "--format", fmt, "--output", "json"
        )
        assert as_yaml == as_json


def test_positional_and_dash_f_give_the_same_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert dump(capsys, SERVICES, "--mock-config", MOCKS) == dump(
        capsys, "-f", SERVICES, "--mock-config", MOCKS
    )


def test_bind_sets_the_listener_address(capsys: pytest.CaptureFixture[str]) -> None:
    config = parsed(capsys, SERVICES, "--mock-config", MOCKS, "--bind", "0.0.0.0")
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["address"] == "0.0.0.0"


def test_xds_format_lists_every_resource_with_name_and_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    view = parsed(capsys, SERVICES, "--mock-config", MOCKS, "--format", "xds", "--name", "dev")
    bootstrap = view["bootstrap"]
    assert bootstrap["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    pipe = json.dumps(bootstrap["static_resources"]["clusters"])
    assert "/dev/xds.sock" in pipe
    resources = view["resources"]
    assert list(resources) == [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    names = {t: [r["name"] for r in resources[t]["resources"]] for t in resources}
    assert names == {
        CLUSTER_TYPE: sorted(CLUSTERS),
        ENDPOINT_TYPE: sorted(CLUSTERS),
        LISTENER_TYPE: ["localmesh_http"],
        ROUTE_TYPE: ["localmesh_routes"],
    }
    for cluster in resources[CLUSTER_TYPE]["resources"]:
        assert cluster["resource"]["type"] == "EDS"
    for assignment in resources[ENDPOINT_TYPE]["resources"]:
        assert assignment["resource"].get("endpoints", []) == []  # no forwarders in a dump
    (routes,) = resources[ROUTE_TYPE]["resources"]
    assert route_table(routes["resource"]["virtual_hosts"]) == {
        host: ([host, f"{host}:*"], cluster) for host, cluster in HOSTS.items()
    }
    # Versions are the ones the control plane serves for the same mesh.
    config = load_config(SERVICES)
    ports = resolve_all(config, MockResolver(load_mocks(MOCKS)))
    snapshot = build_snapshot(plan(config, ports, {}, "127.0.0.1"))
    assert view["version"] == snapshot.version
    for type_url, listed in resources.items():
        assert listed["version"] == snapshot.type_version(type_url)
        for resource in listed["resources"]:
            assert resource["version"] == snapshot.resources(type_url)[resource["name"]].version


def test_output_is_stable(capsys: pytest.CaptureFixture[str]) -> None:
    first = dump(capsys, SERVICES, "--mock-config", MOCKS, "--format", "xds")
    assert dump(capsys, SERVICES, "--mock-config", MOCKS, "--format", "xds") == first


def test_missing_mock_is_a_clear_error(tmp_path: Path) -> None:
    mocks = tmp_path / "mocks.yaml"
    mocks.write_text(
        "mocks:\n  - {namespace: users, service: users-api, port_name: grpc, resolved_port: 1}\n"
    )
    result = run_cli("dump-envoy-config", SERVICES, "--mock-config", mocks)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"localmesh: error: no mock for billing-api.localhost -> billing/billing-api:http "
        f"({SERVICES}:12:5) in {mocks}: add an entry with namespace: billing, "
        "service: billing-api, port_name: http",
        f"localmesh: error: no mock for admin.localhost -> admin/admin-web:8080 "
        f"({SERVICES}:18:5) in {mocks}: add an entry with namespace: admin, "
        'service: admin-web, port_name: ""',
    ]


def test_invalid_mocks_file_is_a_config_error(tmp_path: Path) -> None:
    mocks = tmp_path / "mocks.yaml"
    mocks.write_text("mocks:\n  - {namespace: users, service: users-api}\n")
    result = run_cli("dump-envoy-config", SERVICES, "--mock-config", mocks)
    assert result.returncode == 2
    assert result.stderr == (
        f"localmesh: error: {mocks}:2:5: mocks[0]: missing required key `resolved_port`\n"
    )


def test_live_and_a_file_do_not_go_together() -> None:
    result = run_cli("dump-envoy-config", SERVICES, "--live")
    assert result.returncode == 2
    assert "--live" in result.stderr


def test_both_positional_and_dash_f_is_a_usage_error() -> None:
    result = run_cli("dump-envoy-config", SERVICES, "-f", SERVICES, "--mock-config", MOCKS)
    assert result.returncode == 2
    assert "either -f FILE or a positional FILE" in result.stderr


def test_unreachable_cluster_is_a_clear_error(tmp_path: Path) -> None:
    # A kubeconfig whose server is a loopback port nobody listens on.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    result = run_cli("dump-envoy-config", SERVICES, "--kubeconfig", kubeconfig)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 3  # one per services.yaml entry
    assert all(line.startswith("localmesh: error: ") for line in lines)
    assert f"127.0.0.1:{port}" in lines[0]


SHARED: dict[str, Any] = {"a": 1}


@pytest.mark.parametrize(
    "document",
    [
        {
            "plain": "text",
            "looks_like": ["1", "true", "null", "0x10", "1e3", "~", "", " padded ", "a: b"],
            "unicode": "b\u00e9ta \u2713",
            "lines": "one\ntwo\n",
            "numbers": [0, -1, 2**40],
            "flags": [True, False, None],
            "empty": {"map": {}, "list": []},
            "nested": [{"x": [{"y": {"z": "deep"}}]}],
        },
        {"float": 1.5, "big": 1e17},  # PyYAML's own float rules
        {"first": SHARED, "second": SHARED},  # a shared container: PyYAML writes an anchor
    ],
    ids=["plain", "floats", "shared"],
)
def test_yaml_output_is_what_pyyaml_writes(document: dict[str, Any]) -> None:
    from localmesh.cli.dump import render

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    expected = yaml.dump(document, Dumper=dumper, sort_keys=False, default_flow_style=False)
    assert render(document, "yaml") == expected
