"""Containers whose image is localmesh's own run as real subprocesses of this Python.

The image's entrypoint is `localmesh`; a pod's `command`/`args` map to this interpreter:
`localmesh ...` runs `python -m localmesh ...`, `python ...` (python3, python3.12, ...)
runs this interpreter. The process gets the environment a kubelet gives (the API server's
KUBERNETES_SERVICE_* variables, the container's env with downward-API fields, `$(VAR)`
expansion) and its service-account token, CA and namespace files in a per-pod directory
named by LOCALMESH_SERVICEACCOUNT_DIR (a kubelet mounts them at SERVICEACCOUNT_MOUNT).
As the pods share this machine's loopback, LOCALMESH_TUNNEL_BIND names the pod's IP: what
"localhost in the pod" is to a port-forward here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localmesh.clustermesh.tunnel_shadow import TUNNEL_BIND_ENV
from localmesh.envoy import _die_with_parent
from localmesh.sandbox.resources import BY_PLURAL, CONFIGMAPS
from localmesh.sandbox.store import Obj

if TYPE_CHECKING:
    from localmesh.sandbox.rbac import Identities
    from localmesh.sandbox.store import Store

SERVICEACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
# Where localmesh's agents find "localhost in the pod" (see container_env).
SERVICEACCOUNT_DIR_ENV = "LOCALMESH_SERVICEACCOUNT_DIR"
# Repositories (fnmatch patterns, tag and digest removed) that run as processes.
DEFAULT_PROCESS_IMAGES: tuple[str, ...] = ("localmesh", "*/localmesh")
ENTRYPOINT = ("localmesh",)
# The environment the image itself sets (its Dockerfile's ENV lines).
IMAGE_ENV = {"PYTHONUNBUFFERED": "1"}
# Projected tokens live this long when the API server extends their expiry (the default).
TOKEN_SECONDS = 365 * 24 * 3600
_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass(frozen=True)
class NodeConfig:
    """What the kubelet needs from the sandbox to run processes."""

    api_host: str
    api_port: int
    ca_pem: bytes
    pods_dir: Path
    identities: Identities
    process_images: tuple[str, ...] = DEFAULT_PROCESS_IMAGES


def image_repository(image: str) -> str:
    """`ghcr.io/org/localmesh:1.2@sha256:...` -> `ghcr.io/org/localmesh`."""
    image = image.split("@", 1)[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > slash else image


def runs_as_process(image: str, patterns: tuple[str, ...]) -> bool:
    repo = image_repository(image)
    return any(fnmatch.fnmatchcase(repo, p) for p in patterns)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` is a `$`."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


class StartError(Exception):
    """The container cannot start (as runc reports a missing executable)."""


def argv_for(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The argv to run: the container's command (or the image entrypoint) and args."""
    command = [expand(str(c), env) for c in container.get("command") or []]
    args = [expand(str(a), env) for a in container.get("args") or []]
    argv = (command or list(ENTRYPOINT)) + args
    exe = os.path.basename(argv[0])
    if exe in ("localmesh", "kubectl-localmesh"):
        return [sys.executable, "-m", "localmesh", *argv[1:]]
    if _PYTHON.match(exe):
        return [sys.executable, *argv[1:]]
    raise StartError(
        "failed to create containerd task: failed to create shim task: OCI runtime create "
        "failed: runc create failed: unable to start container process: exec: "
        f'"{argv[0]}": executable file not found in $PATH: unknown'
    )


def _field_ref(pod: Obj, path: str) -> str:
    md, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": md.get("name", ""),
        "metadata.namespace": md.get("namespace", ""),
        "metadata.uid": md.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((md.get(m.group(1)) or {}).get(m.group(2), ""))
    if path == "status.podIPs":
        return ",".join(ip["ip"] for ip in status.get("podIPs") or [])
    raise ValueError(f"unsupported fieldRef {path!r}")


def _key_ref(store: Store, namespace: str, plural: str, ref: dict[str, Any]) -> str | None:
    obj = store.peek(BY_PLURAL[plural], namespace, ref.get("name", ""))
    if obj is None:
        if ref.get("optional"):
            return None
        raise ValueError(f'{plural[:-1]} "{ref.get("name")}" not found')
    data = obj.get("data") or {}
    key = ref.get("key", "")
    if key not in data:
        if ref.get("optional"):
            return None
        raise ValueError(f"couldn't find key {key} in {obj['kind']} {namespace}/{ref.get('name')}")
    value = str(data[key])
    return base64.b64decode(value).decode() if plural == "secrets" else value


def container_env(
    pod: Obj, container: dict[str, Any], store: Store, node: NodeConfig
) -> dict[str, str]:
    """The environment of one container, as a kubelet builds it.

    ValueError names a reference that cannot be resolved (CreateContainerConfigError).
    """
    ns = pod["metadata"]["namespace"]
    host, port = node.api_host, str(node.api_port)
    env: dict[str, str] = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOSTNAME": pod["metadata"]["name"],
        **IMAGE_ENV,
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": port,
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }
    pod_ip = pod.get("status", {}).get("podIP", "")
    if pod_ip:
        # The pods share this machine's loopback, so a pod's own "localhost" is its pod IP:
        # port-forwards arrive there. localmesh's shadow agent binds its tunnel port to it.
        env[TUNNEL_BIND_ENV] = pod_ip
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, plural in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
            ref = source.get(kind)
            if not ref:
                continue
            obj = store.peek(BY_PLURAL[plural], ns, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ValueError(f'{plural[:-1]} "{ref.get("name")}" not found')
            for k, v in (obj.get("data") or {}).items():
                text = base64.b64decode(v).decode() if plural == "secrets" else str(v)
                env[f"{prefix}{k}"] = text
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = expand(str(var["value"]), env)
            continue
        source = var.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = _field_ref(pod, source["fieldRef"].get("fieldPath", ""))
        elif "configMapKeyRef" in source:
            value = _key_ref(store, ns, CONFIGMAPS.plural, source["configMapKeyRef"])
            if value is not None:
                env[name] = value
        elif "secretKeyRef" in source:
            value = _key_ref(store, ns, "secrets", source["secretKeyRef"])
            if value is not None:
                env[name] = value
        else:
            env[name] = ""
    return env


def write_service_account(directory: Path, token: str, ca_pem: bytes, namespace: str) -> Path:
    """token, ca.crt and namespace as a kubelet projects them (token 0600)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    token_path = directory / "token"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    (directory / "ca.crt").write_bytes(ca_pem)
    (directory / "namespace").write_text(namespace)
    return directory


def exit_code(returncode: int) -> int:
    """A container's exit code: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(eq=False)
class ContainerProcess:
    """One run of a container's process; its output goes to `on_line`."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    on_line: Callable[[str], None]
    proc: asyncio.subprocess.Process | None = None
    _pump: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *_die_with_parent(),
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            # Its own session: a terminal's Ctrl-C reaches the sandbox, which stops it.
            start_new_session=True,
            limit=1 << 20,
        )
        self._pump = asyncio.create_task(self._read(), name=f"container-log-{self.proc.pid}")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.on_line(line.decode(errors="replace").rstrip("\n"))

    def _kill_group(self) -> None:
        # The container's other processes end with its main one, as in a PID namespace.
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def wait(self) -> int:
        """The exit code once the process has ended and its output is read."""
        assert self.proc is not None
        returncode = await self.proc.wait()
        self._kill_group()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await self._pump
        return exit_code(returncode)

    async def stop(self, grace: float) -> None:
        """SIGTERM to the main process, then SIGKILL to all of the container's processes
        after `grace` seconds, as a kubelet stops a container."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
            except TimeoutError:
                self._kill_group()
                await proc.wait()
        self._kill_group()
