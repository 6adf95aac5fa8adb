"""`localmesh demo`: the built-in sandbox cluster plus `up`, ready to try in one command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from localmesh.errors import AlreadyRunningError, ConfigError

DEMO_SERVICES = """\
# The seed example, on an unprivileged port. Edit this file while the demo runs:
# localmesh applies it live (up --watch).
listener_port: {port}
services:
  - host: users-api.localhost
    namespace: users
    service: users-api
    port_name: grpc
    type: grpc

  - host: billing-api.localhost
    namespace: billing
    service: billing-api
    port_name: http
    type: http

  - host: admin.localhost
    namespace: admin
    service: admin-web
    port: 8080
    type: http
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the built-in sandbox cluster with a mesh in front of it",
        description="Start the sandbox (a stand-in Kubernetes cluster in this process, with "
        "users-api (gRPC), billing-api and admin-web (HTTP)), then `localmesh up --watch` "
        "for it on an unprivileged port, and `localmesh mesh` of billing-api with the mark "
        "`version: demo` to a small HTTP process on this machine; print commands to try. "
        "Runs until Ctrl-C, which also puts billing-api back as it was.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="listener port (default: 8080 if free, else any free port)",
    )
    parser.add_argument(
        "--edit-hosts",
        action="store_true",
        help="also add the demo hosts to /etc/hosts (not needed for curl: it resolves "
        "*.localhost to loopback by itself)",
    )
    parser.set_defaults(run=run)


def _free_port(preferred: int = 8080) -> int:
    for candidate in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ConfigError("no free TCP port on 127.0.0.1")


DEMO_NAME = "demo"


def _refuse_a_second_demo() -> None:
    """Before a sandbox starts: a demo runs already, and a second one would only fail."""
    from localmesh.runtime import lock_holder, runtime_paths

    pid = lock_holder(runtime_paths(DEMO_NAME))
    if pid is None:
        return
    who = f" (pid {pid})" if pid else ""
    raise AlreadyRunningError(
        f"a localmesh demo is already running{who}: use it (`{_localmesh()} status --name "
        f"{DEMO_NAME}` lists its hosts), or stop it with Ctrl-C in its terminal or "
        f"`{_localmesh()} down --name {DEMO_NAME}`, then run the demo again"
    )


async def run(args: argparse.Namespace) -> int:
    from localmesh.instance import MeshInstance, UpOptions
    from localmesh.sandbox import Sandbox

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a valid port")
    _refuse_a_second_demo()
    port = args.port or _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="localmesh-demo-"))
    services = workdir / "services.yaml"
    services.write_text(DEMO_SERVICES.format(port=port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Sandbox.start(kubeconfig_path=workdir / "kubeconfig") as sandbox:
            print(f"sandbox cluster: {sandbox.url} (kubeconfig: {sandbox.kubeconfig_path})")
            mesh = MeshInstance(
                UpOptions(
                    config_path=services,
                    name=DEMO_NAME,
                    kubeconfig=str(sandbox.kubeconfig_path),
                    edit_hosts=args.edit_hosts,
                    watch=True,
                    log_level=args.log_level,
                    handle_signals=False,
                )
            )
            task = asyncio.create_task(mesh.run(), name="mesh")
            ready = asyncio.create_task(mesh.wait_ready(), name="mesh ready")
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                ready.cancel()
                return await task  # start-up failed: its error propagates
            _print_try(port, services, sandbox.kubeconfig_path)
            meshing = asyncio.create_task(
                _mesh_part(sandbox.kubeconfig_path, sandbox.loopback),
                name="demo mesh of billing-api",
            )
            stopped = asyncio.create_task(stop.wait(), name="wait for Ctrl-C")
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            # The Service is put back while the sandbox still runs, then `up` stops.
            meshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await meshing
            mesh.request_stop()
            stopped.cancel()
            return await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        shutil.rmtree(workdir, ignore_errors=True)


MESH_TRY = (
    'On the sandbox, cluster IPs answer on this machine, which plays "inside the cluster". Try:'
)
MESH_END = "Ctrl-C also puts billing/billing-api back as it was."


async def _mesh_part(kubeconfig: Path, loopback: str) -> None:
    """`localmesh mesh` in the demo; when it fails, the rest of the demo keeps serving."""
    import structlog

    from localmesh.cli.demo_mesh import MARK, NAMESPACE, SERVICE, DemoMesh
    from localmesh.sandbox.ips import NO_PER_POD_ADDRESSES, SHARED

    if loopback == SHARED:
        # Its router runs as a process binding its pod IP, and the demo's requests go to
        # a cluster IP: both need an address per pod.
        print(
            f"mesh: not available on this machine: the mesh part needs an address per pod "
            f"and {NO_PER_POD_ADDRESSES}; the rest of the demo keeps working",
            flush=True,
        )
        return

    def ready(commands: str) -> None:
        print(
            f"mesh: requests to {NAMESPACE}/{SERVICE} marked `version: {MARK}` now go to a "
            f"process on this machine.\n{MESH_TRY}\n\n{textwrap.indent(commands, '  ')}\n\n"
            f"{MESH_END}\n",
            flush=True,
        )

    def said(line: str) -> None:
        print(line, flush=True)

    print(f"mesh: meshing {NAMESPACE}/{SERVICE} with a process on this machine ...", flush=True)
    try:
        await DemoMesh(kubeconfig, _localmesh(), ready, said).run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the mesh is an extra: whatever broke it, `up` keeps serving
        structlog.get_logger(__name__).debug("demo mesh failed", exc_info=True)
        reason = str(exc) or type(exc).__name__
        print(f"mesh: not available ({reason}); the rest of the demo keeps working", flush=True)


def _localmesh() -> str:
    """How to run localmesh from the user's shell: by name if PATH has it, else by path."""
    return (
        "localmesh" if shutil.which("localmesh") else f"{shlex.quote(sys.executable)} -m localmesh"
    )


def try_commands(port: int, services: Path, kubeconfig: Path) -> str:
    """What to try, as lines that work when pasted into a shell all at once: comments on
    lines of their own, and only commands that are installed here."""
    python = shlex.quote(sys.executable)
    env = f"KUBECONFIG={shlex.quote(str(kubeconfig))}"
    lines = [
        f"curl http://billing-api.localhost:{port}/hello",
        f"curl http://admin.localhost:{port}/health",
    ]
    if shutil.which("grpcurl"):
        lines.append(f"grpcurl -plaintext -authority users-api.localhost 127.0.0.1:{port} list")
    lines += [
        f"{python} -m localmesh.sandbox.greet --authority users-api.localhost 127.0.0.1:{port}",
        "# per-host pods, forwarders and traffic:",
        f"{_localmesh()} status --name {DEMO_NAME}",
    ]
    if shutil.which("kubectl"):
        lines += [
            f"{env} kubectl get pods -A",
            "# a replacement pod comes up, and traffic follows it:",
            f"{env} kubectl delete pod -n billing -l app=billing-api",
        ]
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    what = "services.yaml" if editor else str(services)
    lines.append(f"# edit {what}: changes apply live, Envoy is not restarted")
    if editor:
        lines.append(f"{editor} {shlex.quote(str(services))}")
    return "\n".join(lines)


def _print_try(port: int, services: Path, kubeconfig: Path) -> None:
    commands = textwrap.indent(try_commands(port, services, kubeconfig), "  ")
    print(
        f"\nlocalmesh demo is up. Try:\n\n{commands}\n\n"
        "Ctrl-C stops the demo and removes everything it set up.\n",
        flush=True,
    )
