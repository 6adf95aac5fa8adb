"""`localmesh down`: stop a running mesh with its normal clean-up."""

from __future__ import annotations

import argparse
from typing import Any

from localmesh.cli.hosts import add_hosts_file_argument, crash_hint
from localmesh.cli.up import add_instance_arguments


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "down",
        help="stop the running mesh",
        description="Ask the running `localmesh up` to stop: Envoy drains, forwarders close, "
        "its /etc/hosts entries and runtime files are removed. Waits until it has exited.",
    )
    add_instance_arguments(parser)
    add_hosts_file_argument(parser, "hosts file to check for a block left by a crash")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the mesh to exit (default: 60)",
    )
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    from localmesh.control import ControlClient
    from localmesh.errors import ControlError

    try:
        async with ControlClient.for_name(args.name) as client:
            result = await client.down(wait=True, wait_timeout=args.timeout)
    except ControlError as exc:
        if hint := crash_hint(args.hosts_file, args.name):
            raise ControlError(f"{exc}\n{hint}") from None
        raise
    print(f"localmesh {args.name!r} (pid {result.pid}) stopped")
    return 0
