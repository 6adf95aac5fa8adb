"""Running the installed `localmesh` CLI as a user would, for the CLI tests."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

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


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Undo `configure_logging` (which the in-process CLI calls) for the tests that follow."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
