"""The kubeconfig file that points kubectl and the Python client at a sandbox."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

CONTEXT_NAME = "localmesh-sandbox"


def kubeconfig_dict(
    server: str,
    ca_pem: bytes,
    token: str,
    namespace: str = "default",
    user: dict[str, Any] | None = None,
) -> Any:
    """A kubeconfig with one cluster, one user (a bearer token, or `user` as given: an
    exec plugin) and one current context."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": CONTEXT_NAME,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": CONTEXT_NAME, "user": user or {"token": token}}],
        "contexts": [
            {
                "name": CONTEXT_NAME,
                "context": {
                    "cluster": CONTEXT_NAME,
                    "user": CONTEXT_NAME,
                    "namespace": namespace,
                },
            }
        ],
        "current-context": CONTEXT_NAME,
    }


def write_kubeconfig(
    path: Path, server: str, ca_pem: bytes, token: str, user: dict[str, Any] | None = None
) -> Path:
    """Write the kubeconfig atomically with mode 0600 (it holds a credential)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(kubeconfig_dict(server, ca_pem, token, user=user), fh, sort_keys=False)
    tmp.replace(path)
    return path
