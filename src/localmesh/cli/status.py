"""`localmesh status`: what a running mesh serves, and whether it is healthy."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from localmesh.cli.up import add_hosts_file_argument, add_instance_arguments

if TYPE_CHECKING:
    from localmesh.clustermesh.localstate import SessionView


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show what the running mesh serves",
        description="Per host: the Kubernetes service port (or local process), its pods "
        "with their local forwarders, its routes with their targets (a local target is "
        "checked: does it accept connections now?), request and error counts, and whether "
        "Envoy accepted the latest config. Exits 1 when something is unhealthy (a host "
        "without live pods, a local-only host with nothing listening, a route whose Service "
        "cannot be resolved, a rejected config, Envoy down), so scripts can wait on it. "
        "Then the `localmesh mesh` sessions of this machine (mark, ports, tunnel state, "
        "connections served locally); a session whose marked requests are not served "
        "on this machine (tunnel not connected, mark `not routed (why)` by the router, a "
        "local port not answering, process gone: `stale (process gone)`) also makes the "
        "exit code 1. With no `up` running, the mesh sessions are still shown and the exit "
        "code stays that of no `up` running. A stopped local process behind an `up` route "
        "is shown, not unhealthy: its requests get a 503 that says so, and nothing else is "
        "affected.",
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
    from localmesh.cli.main import print_error
    from localmesh.clustermesh.localstate import read_sessions, render_sessions
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
    sessions = read_sessions()
    try:
        async with ControlClient.for_name(args.name) as client:
            status = await client.status()
    except ControlError as exc:
        if hint := crash_hint(args.hosts_file, args.name):
            exc = ControlError(f"{exc}\n{hint}")
        if not sessions:
            raise exc from None
        # No `up`, but mesh sessions: say both; the exit code is that of no `up` running.
        print_error(exc)
        print(_sessions_json(sessions) if args.json else render_sessions(sessions))
        return exc.exit_code
    if args.json:
        print(_with_sessions(render_status_json(status), sessions))
    else:
        text = render_status_text(status)
        print(f"{text}\n\n{render_sessions(sessions)}" if sessions else text)
    code = status_exit_code(status)
    return code or int(not all(s.healthy for s in sessions))


def _with_sessions(rendered: str, sessions: list[SessionView]) -> str:
    data = json.loads(rendered)
    data["mesh_sessions"] = [s.as_json() for s in sessions]
    return json.dumps(data, indent=2)


def _sessions_json(sessions: list[SessionView]) -> str:
    return json.dumps({"mesh_sessions": [s.as_json() for s in sessions]}, indent=2)
