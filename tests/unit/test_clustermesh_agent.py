"""`localmesh agent shadow`: its bad input gives one clear line and exit 2; the tunnel
secret is read from the environment or a file. (The running agent: tests/integration.)"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.cli.agent import read_secret
from localmesh.cli.main import main
from localmesh.clustermesh import tunnel_wire
from localmesh.errors import ConfigError
from tests.unit.cli_helpers import BIN, cli_env, logging_restored

SECRET = tunnel_wire.new_secret()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


@pytest.fixture
def with_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tunnel_wire.SECRET_ENV, SECRET.hex())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ports", "8080:80"], "--ports: give the exposed ports only"),
        (["--ports", "http"], "--ports 'http': the port 'http' is not a number"),
        (["--ports", "80,80"], "--ports '80,80': service port 80 is exposed twice"),
        (["--ports", "80", "--tunnel-port", "80"], "--tunnel-port 80 is also one of --ports"),
        (["--ports", "80", "--tunnel-port", "70000"], "--tunnel-port 70000 is not a valid"),
        (["--ports", "80", "--wait", "0"], "--wait 0: give a positive number of seconds"),
        (["--ports", "80", "--wait", "nan"], "--wait nan: give a positive number of seconds"),
        (["--ports", "80", "--health-port", "80"], "--health-port 80: give a free port"),
        (["--ports", "80", "--health-port", "-1"], "--health-port -1: give a free port"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    with_secret: None, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "shadow", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("localmesh: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_secret_missing_or_malformed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(tunnel_wire.SECRET_ENV, raising=False)
    assert main(["agent", "shadow", "--ports", "80"]) == 2
    assert "no tunnel secret: set $LOCALMESH_TUNNEL_SECRET" in capsys.readouterr().err
    monkeypatch.setenv(tunnel_wire.SECRET_ENV, "zz")
    with pytest.raises(ConfigError, match=r"\$LOCALMESH_TUNNEL_SECRET: .* not hexadecimal"):
        read_secret(None)
    monkeypatch.setenv(tunnel_wire.SECRET_ENV, "abcd")
    with pytest.raises(ConfigError, match="has 2 bytes; 32 are needed"):
        read_secret(None)
    with pytest.raises(ConfigError, match=r"--secret-file .*absent: No such file"):
        read_secret(tmp_path / "absent")


def test_secret_from_env_or_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(tunnel_wire.SECRET_ENV, f" {SECRET.hex()}\n")
    assert read_secret(None) == SECRET
    other = tunnel_wire.new_secret()
    path = tmp_path / "secret"
    path.write_text(other.hex() + "\n")
    assert read_secret(path) == other  # the file wins over the environment


def test_address_in_use_is_a_clear_error(
    with_secret: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["agent", "shadow", "--ports", str(port), "--tunnel-port", "0"])
    assert code == 2
    assert "shadow agent cannot listen" in capsys.readouterr().err


def test_addresses_from_the_pod_env_and_sigterm_stops_cleanly(tmp_path: Path) -> None:
    """$POD_IP places the exposed ports, $LOCALMESH_TUNNEL_BIND the tunnel port (as a pod
    spec sets them); SIGTERM (pod deletion) stops the agent with exit 0."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET.hex())
    pod_ip, tunnel_ip = "127.0.0.2", "127.0.0.3"
    with socket.socket() as probe:
        probe.bind((pod_ip, 0))
        port = probe.getsockname()[1]
    env = cli_env() | {"POD_IP": pod_ip, "LOCALMESH_TUNNEL_BIND": tunnel_ip}
    proc = subprocess.Popen(
        [str(BIN / "localmesh"), "--log-format", "json", "agent", "shadow", "--ports", str(port),
         "--tunnel-port", "0", "--secret-file", str(secret_file)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        ready = json.loads(proc.stderr.readline())
        assert ready["event"] == "shadow agent ready"
        assert ready["ports"] == [f"{pod_ip}:{port}"]
        assert ready["tunnel"].startswith(f"{tunnel_ip}:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "shadow agent stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_secret_helpers_round_trip() -> None:
    secret = tunnel_wire.new_secret()
    assert len(secret) == tunnel_wire.SECRET_SIZE and secret != tunnel_wire.new_secret()
    assert tunnel_wire.parse_secret(secret.hex().upper()) == secret
    assert tunnel_wire.hello(secret) == b"LMT1" + secret
    assert len(tunnel_wire.hello(secret)) == tunnel_wire.HELLO_SIZE


def test_the_shadow_agent_does_not_import_the_router() -> None:
    """The shadow pod's start-up is on every developer's `mesh` path: its command must not
    pay for Envoy's typed config or the Kubernetes client (the router's imports)."""
    code = (
        "import sys\n"
        "from localmesh.cli.main import build_parser\n"
        "argv = ['agent', 'shadow', '--ports', '8080']\n"
        "build_parser(argv=argv).parse_args(argv)\n"
        "import localmesh.clustermesh.tunnel_shadow, localmesh.clustermesh.marks\n"
        "heavy = {'envoy_data_plane', 'kubernetes', 'localmesh.clustermesh.router'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [str(BIN / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
