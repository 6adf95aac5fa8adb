"""`./dev` with a missing or wrong argument prints its usage and creates nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bench"], "usage: ./dev bench NAME"),
        (["bench", "nosuch"], "no benchmark 'nosuch'; usage: ./dev bench NAME"),
        (["frobnicate"], "./dev test"),
    ],
)
def test_usage_comes_before_any_setup(tmp_path: Path, args: list[str], says: str) -> None:
    venv = tmp_path / "venv"
    result = subprocess.run(
        [sys.executable, str(ROOT / "dev"), *args],
        env={**os.environ, "LOCALMESH_VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    assert says in result.stdout + result.stderr
    assert "xds_push" in result.stdout + result.stderr or args[0] != "bench"
    assert not venv.exists(), "the virtualenv was set up before the usage error"
