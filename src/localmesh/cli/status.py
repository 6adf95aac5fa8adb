"""`localmesh status`: what a running mesh serves, and whether it is healthy."""

from __future__ import annotations

import argparse
from typing import Any

from localmesh.cli.up import add_hosts_file_argument, add_instance_arguments


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show what the running mesh serves",
        description="Per host: the Kubernetes service port (or local process), its pods "
        "with their local forwarders, its routes with their targets (a local target is "
        "checked: does it accept connections now?), request and error counts, and whether "
        "Envoy accepted the latest config. Exits 1 when something is unhealthy (a host "
        "without live pods, a local-only host with nothing listening, a route whose Service "
        "cannot be resolved, a rejected config, Envoy down), so scripts can wait on it. A "
        "stopped local process behind a route is shown, not unhealthy: its requests get a "
        "503 that says so, and nothing else is affected.",
    )
    add_instance_arguments(parser)
    add_hosts_file_argument(parser, "hosts file to check for a block left by a crash")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--watch",
        action="store_true",
        help="keep showing one line per host (live pods, req/s, failed requests), refreshed "
        "every --interval seconds until Ctrl-C; on a non-terminal, one block per refresh",
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=2.0,
        metavar="SECONDS",
        help="seconds between refreshes of --watch (default: 2)",
    )
    parser.set_defaults(run=run)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"between 0.1 and 3600 seconds, not {text}")
    return value


async def run(args: argparse.Namespace) -> int:
    from localmesh.control import (
        ControlClient,
        render_status_json,
        render_status_text,
        status_exit_code,
    )
    from localmesh.errors import ControlError
    from localmesh.hosts import crash_hint

    if args.watch:
        from localmesh.errors import UsageError
        from localmesh.statuswatch import watch_status

        if args.json:
            raise UsageError("--watch shows a table: use --json without --watch")

        return await watch_status(args.name, args.interval)
    try:
        async with ControlClient.for_name(args.name) as client:
            status = await client.status()
    except ControlError as exc:
        if hint := crash_hint(args.hosts_file, args.name):
            raise ControlError(f"{exc}\n{hint}") from None
        raise
    print(render_status_json(status) if args.json else render_status_text(status))
    return status_exit_code(status)
