"""`localmesh agent shadow|router`: the processes localmesh runs inside the cluster (its image's
command). Users do not run these by hand; `localmesh mesh` puts them in pod specs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import structlog

from localmesh.cli.seconds import check_seconds
from localmesh.errors import ConfigError

log = structlog.get_logger(__name__)


def register(subparsers: Any) -> None:
    from localmesh.clustermesh import tunnel_shadow, tunnel_wire

    parser = subparsers.add_parser(
        "agent",
        help="in-cluster agents (run by localmesh's pods, not by hand)",
        description="The processes localmesh's own image runs in the cluster.",
    )
    sub = parser.add_subparsers(dest="agent_command", metavar="AGENT", required=True)
    shadow = sub.add_parser(
        "shadow",
        help="a developer's shadow pod: exposed ports carried to that developer's machine",
        description="Listen on the exposed ports for connections from the router and on\n"
        "the tunnel port for tunnel connections from the developer's machine; carry each\n"
        "inbound connection through one of them. The session secret comes from\n"
        f"${tunnel_wire.SECRET_ENV} (hex) or --secret-file.",
        epilog="example:\n  %(prog)s --ports 8080,9090 --bind $POD_IP",
    )
    shadow.add_argument(
        "--ports",
        action="append",
        required=True,
        metavar="PORT[,PORT]",
        help="exposed ports (the Service's ports), comma-separated; may be repeated",
    )
    shadow.add_argument(
        "--bind",
        default=None,
        help="address of the exposed ports (default: $POD_IP, else 127.0.0.1)",
    )
    shadow.add_argument(
        "--tunnel-port",
        type=int,
        default=tunnel_wire.DEFAULT_TUNNEL_PORT,
        help=f"port for the developer's tunnel (default: {tunnel_wire.DEFAULT_TUNNEL_PORT})",
    )
    shadow.add_argument(
        "--tunnel-bind",
        default=None,
        help="address of the tunnel port (default: $LOCALMESH_TUNNEL_BIND, else 127.0.0.1: "
        "a port-forward connects to localhost in the pod)",
    )
    shadow.add_argument(
        "--wait",
        type=float,
        default=tunnel_shadow.DEFAULT_WAIT,
        help="seconds an inbound connection waits for a tunnel connection before it is "
        f"reset (default: {tunnel_shadow.DEFAULT_WAIT:g})",
    )
    shadow.add_argument("--secret-file", type=Path, help="file holding the session secret (hex)")
    shadow.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="serve GET /readyz (200 while the developer's machine is connected, else 503) "
        "and /healthz on this port, for the pod's probes",
    )
    shadow.set_defaults(run=run_shadow)
    _register_router(sub)


def _register_router(sub: Any) -> None:
    from localmesh.clustermesh.router_defaults import DEFAULT_IDLE_TIMEOUT

    router = sub.add_parser(
        "router",
        help="a meshed Service's router: Envoy sending marked requests to shadow pods",
        description="Serve ADS to an Envoy child listening on the router ports ($POD_IP):\n"
        "per live session Lease its mark to the session's shadow pod, everything else to\n"
        "the original pods. Restore the Service once no session is left (--idle-timeout).",
        epilog="example:\n  %(prog)s --namespace billing --service billing-api --health-port 15021",
    )
    router.add_argument("--namespace", required=True, help="the meshed Service's namespace")
    router.add_argument("--service", required=True, help="the meshed Service")
    router.add_argument(
        "--health-port", type=int, required=True, help="serve GET /ready and /healthz here"
    )
    router.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help="seconds without a live session before the router restores the Service and "
        f"removes itself (default: {DEFAULT_IDLE_TIMEOUT:g})",
    )
    router.add_argument("--bind", default=None, help="listen address (default: $POD_IP)")
    router.set_defaults(run=run_router)


def read_secret(secret_file: Path | None) -> bytes:
    from localmesh.clustermesh import tunnel_wire

    if secret_file is not None:
        try:
            text = secret_file.read_text()
        except OSError as exc:
            raise ConfigError(f"--secret-file {secret_file}: {exc.strerror or exc}") from None
        source = f"--secret-file {secret_file}"
    else:
        text = os.environ.get(tunnel_wire.SECRET_ENV, "")
        source = f"${tunnel_wire.SECRET_ENV}"
        if not text:
            raise ConfigError(
                f"no tunnel secret: set ${tunnel_wire.SECRET_ENV} or give --secret-file"
            )
    try:
        return tunnel_wire.parse_secret(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


async def run_shadow(args: argparse.Namespace) -> int:
    from localmesh.clustermesh.marks import parse_expose
    from localmesh.clustermesh.tunnel_shadow import TUNNEL_BIND_ENV, ShadowAgent

    exposed = parse_expose(args.ports, flag="--ports")
    ports = [p.remote for p in exposed]
    if any(p.local != p.remote for p in exposed):
        raise ConfigError("--ports: give the exposed ports only (e.g. 8080,9090), not local:remote")
    if not 0 <= args.tunnel_port <= 65535:
        raise ConfigError(f"--tunnel-port {args.tunnel_port} is not a valid port")
    if args.tunnel_port in ports:
        raise ConfigError(f"--tunnel-port {args.tunnel_port} is also one of --ports")
    if args.health_port is not None and (
        not 0 <= args.health_port <= 65535 or args.health_port in (*ports, args.tunnel_port)
    ):
        raise ConfigError(f"--health-port {args.health_port}: give a free port of its own")
    check_seconds("--wait", args.wait)
    secret = read_secret(args.secret_file)
    bind = args.bind or os.environ.get("POD_IP") or "127.0.0.1"
    # Where port-forwards arrive: localhost in the pod's network namespace. A stand-in
    # cluster whose pods share one loopback (the sandbox) points it at the pod's own IP.
    tunnel_bind = args.tunnel_bind or os.environ.get(TUNNEL_BIND_ENV) or "127.0.0.1"
    agent = ShadowAgent(
        secret,
        ports,
        bind=bind,
        tunnel_bind=tunnel_bind,
        tunnel_port=args.tunnel_port,
        wait=args.wait,
        health_port=args.health_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await agent.start()
        except OSError as exc:
            raise ConfigError(f"shadow agent cannot listen: {exc.strerror or exc}") from None
        await stop.wait()
        await agent.stop()
        stats = agent.stats
        log.info(
            "shadow agent stopped",
            served=stats.served,
            no_tunnel=stats.no_tunnel,
            local_failed=stats.local_failed,
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0


async def run_router(args: argparse.Namespace) -> int:
    from localmesh.clustermesh.router import RouterAgent

    if not 0 < args.health_port <= 65535:
        raise ConfigError(f"--health-port {args.health_port} is not a valid port")
    check_seconds("--idle-timeout", args.idle_timeout)
    bind = args.bind or os.environ.get("POD_IP")
    if not bind:
        raise ConfigError("no listen address: set $POD_IP (the downward API) or give --bind")
    agent = RouterAgent(
        args.namespace,
        args.service,
        pod_ip=bind,
        health_port=args.health_port,
        idle_timeout=args.idle_timeout,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await agent.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
