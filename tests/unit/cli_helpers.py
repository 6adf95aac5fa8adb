"""Running the installed `localmesh` CLI as a user would, for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent  # the virtualenv's bin: console scripts live beside python


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli_env() -> dict[str, str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PYTHONWARNINGS", None)
    env["KUBECONFIG"] = os.devnull  # never reach a real cluster from a unit test
    return env


def run_cli(*args: str | Path, script: str = "localmesh", timeout: float = 60) -> Result:
    proc = subprocess.run(
        [str(BIN / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
