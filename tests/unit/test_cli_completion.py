"""`localmesh completion SHELL` in the real shells: bash and fish complete commands,
options, the --name of running meshes and kubeconfig --context names; zsh loads it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.runtime import InstanceLock, runtime_paths
from tests.unit.cli_helpers import cli_env

KUBECONFIG = """\
apiVersion: v1
kind: Config
contexts:
- name: dev-cluster
  context: {cluster: a, user: b}
- name: prod-eu
  context: {cluster: a, user: b}
"""
BASH = """
source <(localmesh completion bash)
COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}
read -r -a COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_python_argcomplete localmesh
printf '%s\\n' "${COMPREPLY[@]}"
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private runtime directory with a running mesh `side`, and a kubeconfig."""
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    environ = {**cli_env(), "XDG_RUNTIME_DIR": str(runtime), "KUBECONFIG": str(kubeconfig)}
    with InstanceLock(runtime_paths("side", env=environ)):
        yield environ


def shell(argv: list[str], env: dict[str, str]) -> list[str]:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result
    return [line.split("\t")[0].strip() for line in result.stdout.splitlines() if line.strip()]


def bash(line: str, env: dict[str, str]) -> list[str]:
    return shell(["bash", "-c", BASH, "bash", line], env)


def fish(line: str, env: dict[str, str]) -> list[str]:
    script = f"localmesh completion fish | source; complete -C {line!r}"
    return shell(["fish", "--no-config", "-c", script], env)


@pytest.mark.parametrize("complete", [bash, fish], ids=["bash", "fish"])
def test_commands_options_names_and_contexts(
    complete: object, env: dict[str, str], tmp_path: Path
) -> None:
    assert callable(complete)
    assert complete("localmesh st", env) == ["status"]
    assert "dump-envoy-config" in complete("localmesh d", env)
    assert "--json" in complete("localmesh status --", env)
    assert complete("localmesh status --name ", env) == ["side"]
    assert complete("localmesh up --context ", env) == ["dev-cluster", "prod-eu"]
    other = tmp_path / "other-kubeconfig"
    other.write_text(KUBECONFIG.replace("prod-eu", "staging"))
    assert complete(f"localmesh up --kubeconfig {other} --context ", env) == [
        "dev-cluster",
        "staging",
    ]
    shells = [w for w in complete("localmesh completion ", env) if not w.startswith("-")]
    assert sorted(shells) == ["bash", "fish", "zsh"]


def test_zsh_loads_the_script(env: dict[str, str]) -> None:
    script = (
        "autoload -U compinit && compinit -u -D && source <(localmesh completion zsh) "
        "&& print -r -- ${_comps[localmesh]}"
    )
    assert shell(["zsh", "-f", "-c", script], env) == ["_python_argcomplete"]


def test_no_mesh_running_completes_no_name(tmp_path: Path) -> None:
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {**cli_env(), "XDG_RUNTIME_DIR": str(runtime), "KUBECONFIG": os.devnull}
    assert bash("localmesh down --name ", env) == []
    assert bash("localmesh up --context ", env) == []
