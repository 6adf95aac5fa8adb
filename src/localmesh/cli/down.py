"""`localmesh down`: stop a running mesh with its normal clean-up."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from localmesh.cli.up import add_hosts_file_argument, add_instance_arguments


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


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
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the mesh to exit (default: 60)",
    )
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    from localmesh.control import ControlClient
    from localmesh.errors import ControlError
    from localmesh.hosts import crash_hint

    try:
        # One deadline for the whole exchange: a frozen instance (SIGSTOP) accepts the
        # connection but never answers, and must not hold `down` past --timeout.
        async with asyncio.timeout(args.timeout), ControlClient.for_name(args.name) as client:
            client.timeout = min(client.timeout, args.timeout)
            result = await client.down(wait=True, wait_timeout=args.timeout)
    except TimeoutError:
        raise ControlError(
            f"localmesh instance {args.name!r} did not stop within {args.timeout:g}s "
            "(--timeout); it may be frozen or still draining"
        ) from None
    except ControlError as exc:
        if hint := crash_hint(args.hosts_file, args.name):
            raise ControlError(f"{exc}\n{hint}") from None
        raise
    print(f"localmesh {args.name!r} (pid {result.pid}) stopped")
    return 0
