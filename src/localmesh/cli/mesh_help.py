"""`localmesh mesh list --help`, `mesh clean --help` (and `recover`): each action's own help.

`mesh` is one parser whose first positional is a Service or an action, so argparse alone
would print the whole `mesh` help for `mesh clean --help`. The action's help is printed
from a small parser built only then, holding the `mesh` parser's own options that the
action takes (the same option objects: one help text for each option).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

LIST_DESCRIPTION = """\
Every developer's mesh sessions on the cluster's Services, from their Leases: namespace,
Service, mark, mode, developer (user@host), ports (local:service:target), whether the
session is live or expired, and when it was last renewed. In every namespace unless -n
(which needs only the right to list Leases in that namespace)."""

LIST_EPILOG = """\
examples:
  %(prog)s
        every namespace
  %(prog)s -n billing
        one namespace
"""

CLEAN_DESCRIPTION = """\
Put back every Service whose mesh sessions are all gone (after a crash, a lost laptop, a
deleted namespace): its selector is restored and what localmesh created for it (router,
origin Service, RBAC, dead sessions' Leases, shadow pods and Secrets) is deleted. Live
sessions are never touched: another developer's session counts as gone only a few seconds
after its Lease expired. Says what it did; --dry-run says what it would do.
`mesh recover` is the same command."""

CLEAN_EPILOG = """\
examples:
  %(prog)s --dry-run
        what would be undone, in every namespace
  %(prog)s -n billing
        every Service of namespace billing whose sessions are all gone
  %(prog)s billing/billing-api
        only this Service
"""

# The `mesh` options each action takes (by dest), in the order they are shown.
COMMON = ("help", "log_level", "log_format", "namespace", "kubeconfig", "context")
ACTIONS = {
    "list": (LIST_DESCRIPTION, LIST_EPILOG, COMMON),
    "clean": (CLEAN_DESCRIPTION, CLEAN_EPILOG, (*COMMON, "dry_run")),
}


def action_asking_help(mesh: argparse.ArgumentParser, args: Sequence[str]) -> str | None:
    """`list`, `clean` or `recover` when `args` (after `mesh`) ask for that action's help."""
    if not any(a in ("-h", "--help") for a in args):
        return None
    words = iter(args)
    for word in words:
        if word == "--":
            return None
        if word.startswith("-"):
            known = mesh._option_string_actions.get(word.partition("=")[0])
            if known is not None and known.nargs != 0 and "=" not in word:
                next(words, None)  # the option's value, not a positional
            continue
        return word if word in ("list", "clean", "recover") else None
    return None


def action_parser(mesh: argparse.ArgumentParser, action: str) -> argparse.ArgumentParser:
    description, epilog, dests = ACTIONS["clean" if action == "recover" else action]
    parser = argparse.ArgumentParser(
        prog=f"{mesh.prog} {action}",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    by_dest = {a.dest: a for a in mesh._actions}
    for dest in dests:
        parser._add_action(by_dest[dest])
    if action != "list":
        parser.add_argument(
            "service", nargs="?", metavar="[NAMESPACE/]SERVICE", help="only this Service"
        )
    return parser
