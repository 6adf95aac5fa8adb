"""What `up` checks before it loads the heavy parts (Envoy's typed config, gRPC, the
Kubernetes client: about a second of imports), so that the commonest mistakes are
reported at once: an invalid services.yaml, and a --name that another `up` holds.

`MeshInstance.start` checks both again for real (the lock is taken there); these are
probes that take, change and leave nothing.
"""

from __future__ import annotations

from pathlib import Path

from localmesh.config import load_config
from localmesh.runtime import already_running, lock_holder, runtime_paths


def preflight(config_path: Path, name: str) -> None:
    """Raise the ConfigError or AlreadyRunningError that `up` would raise later."""
    load_config(config_path)
    paths = runtime_paths(name)
    pid = lock_holder(paths)
    if pid is not None:
        raise already_running(paths, pid)
