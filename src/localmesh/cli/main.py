"""`localmesh` / `kubectl localmesh`: argument parsing and dispatch.

Each subcommand lives in its own module under localmesh.cli and exposes
`register(subparsers) -> None`, which adds its parser and sets `run=<callable>` as a default.
`run(args)` returns an exit code; it may be a coroutine function, then it runs in asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from collections.abc import Sequence

from localmesh import __version__
from localmesh.errors import LocalmeshError

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localmesh",
        description="A local, Envoy-powered pseudo service mesh in front of Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"localmesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"localmesh.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.run(args)
        if inspect.isawaitable(result):
            result = asyncio.run(result)  # type: ignore[arg-type]
        return int(result or 0)
    except LocalmeshError as exc:
        print(f"localmesh: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
