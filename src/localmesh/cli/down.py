"""`localmesh down`: stop a running mesh with its normal clean-up."""

from __future__ import annotations

import argparse
from typing import Any

from localmesh.cli.up import add_instance_arguments


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "down",
        help="stop the running mesh",
        description="Ask the running `localmesh up` to stop: Envoy drains, forwarders close, "
        "its /etc/hosts entries and runtime files are removed. Waits until it has exited.",
    )
    add_instance_arguments(parser)
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

    async with ControlClient.for_name(args.name) as client:
        result = await client.down(wait=True, wait_timeout=args.timeout)
    print(f"localmesh {args.name!r} (pid {result.pid}) stopped")
    return 0
