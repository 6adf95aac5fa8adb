"""`localmesh sandbox up`: run the stand-in cluster in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from localmesh.errors import ConfigError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sandbox",
        help="run a stand-in Kubernetes cluster for demos and tests",
        description="A stand-in Kubernetes cluster in one process: kubectl and the "
        "Kubernetes clients talk to it like to a real cluster.",
    )
    sub = parser.add_subparsers(dest="sandbox_command", metavar="COMMAND", required=True)
    up = sub.add_parser(
        "up",
        help="run the sandbox cluster in the foreground until Ctrl-C",
        description="Start the sandbox cluster, write its kubeconfig and serve until "
        "Ctrl-C or SIGTERM; the kubeconfig is removed on exit.",
    )
    up.add_argument("--scenario", type=Path, help="scenario YAML (default: the built-in demo)")
    up.add_argument(
        "--kubeconfig",
        type=Path,
        help="where to write the kubeconfig (default: a file in a temporary directory)",
    )
    up.add_argument("--port", type=int, default=0, help="API server port (default: any free)")
    up.add_argument(
        "--kube-version",
        default="1.32",
        help="Kubernetes version the API server reports (picks the kubectl that runs)",
    )
    up.set_defaults(run=run_up)


async def run_up(args: argparse.Namespace) -> int:
    from localmesh.sandbox import Sandbox, Scenario

    if args.port < 0 or args.port > 65535:
        raise ConfigError(f"--port {args.port} is not a valid port")
    scenario = Scenario.load(args.scenario) if args.scenario else Scenario.default()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Sandbox.start(
            scenario,
            kubeconfig_path=args.kubeconfig.resolve() if args.kubeconfig else None,
            port=args.port,
            kube_version=args.kube_version,
        ) as sb:
            print(f"sandbox cluster: {sb.url}")
            print(f"kubeconfig: {sb.kubeconfig_path}")
            print(f"export KUBECONFIG={sb.kubeconfig_path}", flush=True)
            await stop.wait()
            print("sandbox cluster: stopping", flush=True)
    except OSError as exc:
        raise ConfigError(f"cannot start the sandbox API server: {exc.strerror or exc}") from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0
