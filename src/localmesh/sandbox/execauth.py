"""Short-lived tokens from an exec credential plugin, as EKS, GKE, AKS and SSO setups use.

The sandbox writes a small plugin (a Python script beside a 0600 key file) and names it in
its kubeconfig's `users[].user.exec`. Each run prints an ExecCredential whose token is
`lm-exec.<expiry>.<hmac>`; the API server accepts such a token until its expiry and
refuses it after, so a client that does not re-run the plugin in time gets 401s.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from localmesh.sandbox.rbac import User

API_VERSION = "client.authentication.k8s.io/v1"
PREFIX = "lm-exec"

_PLUGIN = '''\
"""localmesh sandbox exec credential plugin: prints an ExecCredential."""
import datetime, hashlib, hmac, json, pathlib, time

key = pathlib.Path({key_path!r}).read_bytes()
expiry = int(time.time() + {seconds!r})
signature = hmac.new(key, str(expiry).encode(), hashlib.sha256).hexdigest()
stamp = datetime.datetime.fromtimestamp(expiry, datetime.timezone.utc)
print(json.dumps({{
    "apiVersion": {api_version!r},
    "kind": "ExecCredential",
    "status": {{
        "token": f"{prefix}.{{expiry}}.{{signature}}",
        "expirationTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }},
}}))
'''


class ExecCredentials:
    """The plugin the sandbox's kubeconfig runs, and the check of the tokens it prints."""

    def __init__(self, directory: Path, seconds: float, user: User) -> None:
        self.seconds = seconds
        self.user = user
        self.tokens_seen: set[str] = set()  # distinct valid tokens presented: plugin runs
        self.expired_refused = 0  # requests refused because their token had expired
        self._key = secrets.token_bytes(32)
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / "exec-plugin.key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._key)
        self.plugin_path = directory / "exec-plugin.py"
        self.plugin_path.write_text(
            _PLUGIN.format(
                key_path=str(key_path), seconds=seconds, api_version=API_VERSION, prefix=PREFIX
            )
        )

    def kubeconfig_user(self) -> dict[str, Any]:
        """The `user` stanza of a kubeconfig that runs the plugin."""
        return {
            "exec": {
                "apiVersion": API_VERSION,
                "command": sys.executable,
                "args": [str(self.plugin_path)],
                "interactiveMode": "Never",
            }
        }

    @property
    def latest_expiry(self) -> float:
        """When the newest token presented so far expires (time.time() scale; 0: none)."""
        return max((float(t.split(".")[1]) for t in self.tokens_seen), default=0.0)

    def authenticate(self, token: str) -> User | None:
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX or not parts[1].isdigit():
            return None
        want = hmac.new(self._key, parts[1].encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, parts[2]):
            return None
        if int(parts[1]) < time.time():
            self.expired_refused += 1
            return None
        self.tokens_seen.add(token)
        return self.user
