"""`up` reports an invalid services.yaml or a taken --name before it loads its heavy parts
(Envoy's typed config, gRPC, the Kubernetes client): checked by what a real `up` process
has imported when it exits, not by the clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from localmesh.runtime import InstanceLock, runtime_paths
from tests.unit.cli_helpers import EXAMPLES, cli_env

HEAVY = ("envoy_data_plane", "grpc", "kubernetes", "aiohttp", "localmesh.instance")
# `up` in a real process; afterwards, which heavy modules it had loaded.
PROBE = f"""
import json, sys
from localmesh.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({{"code": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def run_up(runtime_dir: Path, *args: str) -> tuple[dict[str, object], str]:
    env = {**cli_env(), "XDG_RUNTIME_DIR": str(runtime_dir)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "up", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def private_dir(tmp_path: Path) -> Path:
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    return runtime


def test_an_invalid_services_yaml_is_reported_before_the_heavy_imports(tmp_path: Path) -> None:
    bad = tmp_path / "services.yaml"
    bad.write_text("listener_port: 8080\nservices:\n  - host: a.localhost\n    sevrice: web\n")
    outcome, stderr = run_up(private_dir(tmp_path), "-f", str(bad))
    assert outcome == {"code": 2, "loaded": []}, stderr
    assert stderr.startswith(f"localmesh: error: {bad}:"), stderr
    assert "unknown key `sevrice`" in stderr


def test_a_taken_name_is_reported_before_the_heavy_imports(tmp_path: Path) -> None:
    runtime = private_dir(tmp_path)
    paths = runtime_paths("held", env={"XDG_RUNTIME_DIR": str(runtime)})
    with InstanceLock(paths):
        outcome, stderr = run_up(
            runtime, "-f", str(EXAMPLES / "services.yaml"), "--name", "held", "--no-edit-hosts"
        )
        assert paths.lock_file.read_text() == f"{os.getpid()}\n"  # the probe changed nothing
    assert outcome == {"code": 1, "loaded": []}, stderr
    assert stderr.strip() == (
        f"localmesh: error: a localmesh instance named 'held' is already running "
        f"(pid {os.getpid()}); stop it with `localmesh down --name held` or start this one "
        "with a different --name"
    )
