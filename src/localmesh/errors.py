"""Every exception localmesh raises on purpose, in one tree.

Errors a user can cause and fix derive from `LocalmeshError`; the CLI prints the message
(no traceback) and exits with `exit_code`. `InternalError`s are conditions localmesh
handles itself (a tunnel that did not open, an Envoy that rejected a config it waits
for) or bugs it detects; they keep their traceback if they escape. Anything else is a bug.

    LocalmeshError
    ├── ConfigError            services.yaml / mocks.yaml is invalid (carries every issue)
    ├── UsageError             command-line options that do not go together (exit code 2)
    ├── KubeError              the cluster could not be reached or refused a request
    │   └── TargetError        one services.yaml entry cannot be resolved (names the entry)
    ├── EnvoyError             the Envoy binary is missing or will not start
    │   └── ListenerBindError  Envoy cannot listen on the address (port taken, privileges)
    ├── XdsServerError         the xDS socket cannot be created
    ├── RuntimeDirError        the runtime directory is unusable
    │   └── AlreadyRunningError  another `up` with the same --name is running
    ├── HostsFileError         /etc/hosts cannot be read or written
    └── ControlError           no running instance answers on the control socket
    InternalError
    ├── TunnelError            the websocket to a pod could not be opened
    ├── NackedError            an Envoy rejected the snapshot a caller waits for
    └── InconsistentSnapshotError  a snapshot references what it does not contain (a bug)
"""

from __future__ import annotations

import sys
from pathlib import Path


class LocalmeshError(Exception):
    """Base class of the errors a user can cause and fix; printed without a traceback."""

    exit_code = 1


class ConfigError(LocalmeshError):
    exit_code = 2


class UsageError(LocalmeshError):
    """Options that do not go together (exit code 2, like argparse's own errors)."""

    exit_code = 2


class KubeError(LocalmeshError):
    pass


class TargetError(KubeError):
    pass


class EnvoyError(LocalmeshError):
    pass


class ListenerBindError(EnvoyError):
    """Envoy could not listen on an address: the port is taken or needs privileges."""

    def __init__(self, address: str, reason: str, binary: Path | None = None) -> None:
        self.address = address
        self.reason = reason.strip()
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port) if port.isdigit() else 0
        super().__init__(self._explain(binary))

    def _explain(self, binary: Path | None) -> str:
        head = f"Envoy cannot listen on {self.address}: {self.reason}."
        linux = sys.platform.startswith("linux")
        if "permission denied" in self.reason.lower() or "access" in self.reason.lower():
            setcap = f"sudo setcap cap_net_bind_service=+ep {binary or '<envoy binary>'}"
            allow = (
                f"allow Envoy to bind low ports with `{setcap}`" if linux else "run it with sudo"
            )
            return (
                f"{head} Ports below 1024 need privileges: choose a listener_port of 1024 "
                f"or above in services.yaml, or {allow}."
            )
        if "in use" in self.reason.lower():
            show = (
                f"ss -ltnp 'sport = :{self.port}'"
                if linux
                else f"lsof -nP -iTCP:{self.port} -sTCP:LISTEN"
            )
            return (
                f"{head} Another process holds port {self.port} (`{show}` shows which): stop "
                "it, choose another listener_port in services.yaml, or listen on another "
                "address with --bind."
            )
        return (
            f"{head} Choose another listener_port in services.yaml or another address with --bind."
        )


class XdsServerError(LocalmeshError):
    """The xDS socket cannot be created (path too long, not ours, in use)."""


class RuntimeDirError(LocalmeshError):
    """The runtime directory is unusable (wrong owner, wrong mode, not creatable)."""


class AlreadyRunningError(RuntimeDirError):
    """Another `localmesh up` with the same --name holds the instance lock."""


class HostsFileError(LocalmeshError):
    pass


class ControlError(LocalmeshError):
    pass


class InternalError(Exception):
    """Handled inside localmesh, or a bug it detected; not a user's mistake."""


class TunnelError(InternalError):
    """The websocket to the pod could not be opened (the message says why)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status when the server answered without upgrading


class NackedError(InternalError):
    """An Envoy rejected (NACKed) the snapshot a caller waits for."""


class InconsistentSnapshotError(InternalError):
    """A snapshot references a resource it does not contain (a bug, not a user mistake)."""
