"""Bad kubeconfigs and refused credentials: one clear line, exit 2 (or 1), nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from localmesh.sandbox import Sandbox
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import free_port, run_cli, services_yaml

pytestmark = UP_LOOP

HOSTS = "127.0.0.1 localhost\n# the user's own line\n"

BAD = {
    "unclosed flow": (b"garbage: [\n", "2:1: invalid YAML"),
    "clusters a number": (b"clusters: 5\n", "`clusters` must be a list"),
    "binary": (bytes(range(256)) * 4, "binary data"),
    "a list": (b"- a\n- b\n", "not a kubeconfig"),
}

COMMANDS = {
    "up": ("up", "-f", "{services}", "--hosts-file", "{hosts}"),
    "dump-envoy-config": ("dump-envoy-config", "-f", "{services}"),
    "mesh": ("mesh", "default/billing-api", "--expose", "9090:8080", "--version-mark", "dev"),
}


def _args(command: str, services: Path, hosts: Path) -> list[str]:
    return [a.format(services=services, hosts=hosts) for a in COMMANDS[command]]


def _files(tmp_path: Path) -> tuple[Path, Path]:
    services = tmp_path / "services.yaml"
    entry = {"host": "a.localhost", "namespace": "default", "service": "x", "port": 80}
    services.write_text(services_yaml(free_port(), [entry]))
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    return services, hosts


def _one_clear_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(BAD))
async def test_malformed_kubeconfig_is_one_line_exit_2(
    tmp_path: Path, command: str, case: str
) -> None:
    content, expected = BAD[case]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_bytes(content)
    services, hosts = _files(tmp_path)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    result = await run_cli(runtime, *_args(command, services, hosts), kubeconfig=kubeconfig)
    line = _one_clear_line(result.stderr)
    assert result.returncode == 2, result
    assert str(kubeconfig) in line and expected in line, line
    assert hosts.read_text() == HOSTS
    assert not list(runtime.rglob("*.sock")), "something was started"


@pytest.mark.parametrize("command", sorted(COMMANDS))
async def test_missing_kubeconfig_is_one_line_exit_2(tmp_path: Path, command: str) -> None:
    services, hosts = _files(tmp_path)
    missing = tmp_path / "nowhere" / "kubeconfig"
    result = await run_cli(tmp_path, *_args(command, services, hosts), kubeconfig=missing)
    line = _one_clear_line(result.stderr)
    assert result.returncode == 2, result
    assert "no kubeconfig found" in line and str(missing) in line, line
    assert hosts.read_text() == HOSTS


@pytest.mark.parametrize("command", sorted(COMMANDS))
async def test_unknown_context_lists_the_available_ones(
    tmp_path: Path, up_sandbox: Sandbox, command: str
) -> None:
    services, hosts = _files(tmp_path)
    args = [*_args(command, services, hosts), "--context", "nope"]
    result = await run_cli(tmp_path, *args, kubeconfig=up_sandbox.kubeconfig_path)
    line = _one_clear_line(result.stderr)
    assert result.returncode == 2, result
    assert "'nope' not found" in line and "available contexts: localmesh-sandbox" in line
    assert hosts.read_text() == HOSTS


async def test_wrong_token_stops_up_before_the_hosts_file(
    tmp_path: Path, up_sandbox: Sandbox
) -> None:
    doc = yaml.safe_load(up_sandbox.kubeconfig_path.read_text())
    doc["users"][0]["user"]["token"] = "not-the-token"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(doc))
    services, hosts = _files(tmp_path)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    result = await run_cli(runtime, *_args("up", services, hosts), kubeconfig=kubeconfig)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert "rejected the credentials (401 Unauthorized)" in result.stderr, result.stderr
    assert hosts.read_text() == HOSTS
    assert not list(runtime.rglob("*.sock")), "something was left running"
