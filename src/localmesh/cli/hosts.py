"""`localmesh hosts add|remove`: the one step that may need root, done once, on its own.

`up` edits the hosts file itself when it can; when it cannot, it prints the exact
`sudo ... localmesh hosts add ...` command to run, so the mesh never has to run as root.
"""

from __future__ import annotations

import argparse
from typing import Any

from localmesh.cli.up import add_hosts_file_argument, add_instance_arguments


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "hosts",
        help="add or remove persistent hosts entries (the step that may need sudo)",
        description="Manage a persistent localmesh block in the hosts file. `up` uses and "
        "keeps it; only `hosts remove` deletes it.",
        epilog="example:\n  sudo %(prog)s add billing-api.localhost users-api.localhost",
    )
    sub = parser.add_subparsers(dest="hosts_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="map hosts to the listener address")
    add.add_argument("hosts", nargs="+", metavar="HOST")
    add.add_argument(
        "--address", default="127.0.0.1", help="address to map to (default: 127.0.0.1)"
    )
    remove = sub.add_parser("remove", help="remove the block of this mesh name")
    for action in (add, remove):
        add_instance_arguments(action)
        add_hosts_file_argument(action, "hosts file to edit")
    add.set_defaults(run=run_add)
    remove.set_defaults(run=run_remove)


def run_add(args: argparse.Namespace) -> int:
    from localmesh.config import hostname_problem
    from localmesh.errors import UsageError
    from localmesh.hosts import HostsFile

    for host in args.hosts:
        if problem := hostname_problem(host):
            raise UsageError(f"host {host!r} {problem}")
    update = HostsFile(args.hosts_file, args.name).add_persistent(args.hosts, args.address)
    for host in update.added:
        print(f"added {host}")
    for host in update.already_resolved:
        print(f"{host} already resolves to {args.address}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from localmesh.hosts import HostsFile

    removed = HostsFile(args.hosts_file, args.name).remove_persistent()
    print(f"removed the {args.name!r} block" if removed else f"no {args.name!r} block found")
    return 0
