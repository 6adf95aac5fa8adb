"""`localmesh` / `kubectl localmesh`: argument parsing and dispatch.

Each subcommand lives in its own module under localmesh.cli and exposes
`register(subparsers) -> None`, which adds its parser with `subparsers.add_parser(...)` and
sets `run=<callable>` as a default. `run(args)` returns an exit code (None means 0); it may be
a coroutine function, then it runs in asyncio (on uvloop, see localmesh.eventloop). Only
the module of the command being run is imported (all of them for `--help`): keep heavy
imports inside `run`, so that `status` never pays for Envoy's typed config (bench/cli.py).

Conventions the subcommands get for free:
- the global options `--log-level` and `--log-format` are accepted before and after the
  subcommand (`args.log_level`, `args.log_format`); logging is configured before `run`;
- `add_parser` defaults to `RawDescriptionHelpFormatter`, so `description` and `epilog`
  (put examples there) keep their line breaks; `%(prog)s` in them reads
  `localmesh <command>` or `kubectl localmesh <command>`, however the user invoked it;
- a `LocalmeshError` prints `localmesh: error: <message>` (one such line per line of the
  message) and exits with its `exit_code`, without a traceback; Ctrl-C exits 130 quietly.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

from localmesh import __version__
from localmesh.errors import LocalmeshError
from localmesh.logs import FORMATS, LEVEL_NAMES, configure_logging

# Subcommand modules, in the order `--help` lists them. A module that does not exist (yet)
# is skipped, so the CLI works while commands are still being built.
COMMAND_MODULES: tuple[str, ...] = (
    "init",
    "up",
    "status",
    "down",
    "dump",
    "demo",
    "hosts",
    "sandbox",
    "completion",
    "mesh",  # cluster -> this machine (localmesh.clustermesh)
    "agent",  # in-cluster agents (localmesh's image), listed last
)

DEFAULT_LOG_LEVEL = "info"
DEFAULT_LOG_FORMAT = "auto"

DESCRIPTION = """\
A local, Envoy-powered pseudo service mesh in front of Kubernetes: every Service
listed in services.yaml gets a hostname on this machine (users-api.localhost),
routed by one local Envoy listener, HTTP and gRPC alike, with nothing installed
in the cluster.
"""

EPILOG = """\
examples:
  %(prog)s up -f services.yaml                 start the mesh for services.yaml
  %(prog)s --log-level debug up services.yaml  the same, with debug logs (Envoy's too)
  %(prog)s dump-envoy-config -f services.yaml --mock-config mocks.yaml
                                               print the Envoy config, no cluster needed
  %(prog)s status                              what the running mesh serves
  %(prog)s down                                stop the running mesh

Run `%(prog)s COMMAND --help` for a command's options.
"""


def program_name(argv0: str | None = None) -> str:
    """`kubectl localmesh` when run as a kubectl plugin, else `localmesh`."""
    name = os.path.basename(argv0 if argv0 is not None else sys.argv[0])
    return "kubectl localmesh" if name.startswith("kubectl-") else "localmesh"


def global_options(*, suppress_defaults: bool) -> argparse.ArgumentParser:
    """The options every command accepts, before or after its name.

    The copy attached to subcommands has SUPPRESS defaults, so that a value given before the
    subcommand is not overwritten by the subcommand's default.
    """
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("global options")
    group.add_argument(
        "--log-level",
        choices=LEVEL_NAMES,
        type=str.lower,
        default=argparse.SUPPRESS if suppress_defaults else DEFAULT_LOG_LEVEL,
        help=f"log level of localmesh and Envoy (default: {DEFAULT_LOG_LEVEL})",
    )
    group.add_argument(
        "--log-format",
        choices=FORMATS,
        default=argparse.SUPPRESS if suppress_defaults else DEFAULT_LOG_FORMAT,
        help="logs on stderr: console (for people), json (one object per line), or auto: "
        "console on a terminal, json otherwise (default: auto)",
    )
    return parent


class _Subcommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Gives every subcommand the global options and a help formatter that keeps layout."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs["parents"] = [*kwargs.get("parents", ()), global_options(suppress_defaults=True)]
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)
        return parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose `add_subparsers` uses `_Subcommands`, at every depth
    (`localmesh sandbox up --log-level debug` works too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Subcommands)


def available_commands() -> tuple[str, ...]:
    """The modules of COMMAND_MODULES that exist in this installation."""
    return tuple(
        name for name in COMMAND_MODULES if importlib.util.find_spec(f"localmesh.cli.{name}")
    )


# The command a module registers, where it differs from the module's name.
_COMMAND_OF_MODULE = {"dump": "dump-envoy-config"}
_GLOBAL_WITH_VALUE = ("--log-level", "--log-format")


def selected_module(argv: Sequence[str]) -> str | None:
    """The module of the command `argv` names, if it names a known one: only that module
    is imported, so a command never pays for the others' imports."""
    words = iter(argv)
    for word in words:
        if word in _GLOBAL_WITH_VALUE:
            next(words, None)
        elif not word.startswith("-"):
            for module in available_commands():
                if _COMMAND_OF_MODULE.get(module, module) == word:
                    return module
            return None
    return None


def build_parser(
    prog: str | None = None, argv: Sequence[str] | None = None
) -> argparse.ArgumentParser:
    """The parser of every command, or only of the one `argv` names (see `selected_module`)."""
    parser = _Parser(
        prog=prog or program_name(),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[global_options(suppress_defaults=False)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    selected = selected_module(argv) if argv is not None else None
    for name in (selected,) if selected else available_commands():
        importlib.import_module(f"localmesh.cli.{name}").register(sub)
    return parser


def print_error(exc: LocalmeshError) -> None:
    message = str(exc) or type(exc).__name__
    for line in message.splitlines():
        print(f"localmesh: error: {line}", file=sys.stderr)


def quiet_grpc_core(environ: MutableMapping[str, str] = os.environ) -> None:
    """Keep gRPC's C core off stderr (its raw lines break `--log-format json`); must run
    before grpc is imported. Its fork handlers are off: localmesh's children (Envoy,
    kubectl) exec at once, so the handlers only printed `fork_posix.cc` notices."""
    environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    environ.setdefault("GRPC_VERBOSITY", "ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    quiet_grpc_core()
    try:
        argv = sys.argv[1:] if argv is None else argv
        if "_ARGCOMPLETE" in os.environ:  # a shell asks for completions (cli/completion.py)
            from localmesh.cli.completion import complete

            complete(build_parser())
        args = build_parser(argv=argv).parse_args(argv)
        configure_logging(args.log_level, args.log_format)
        result = args.run(args)
        if inspect.isawaitable(result):
            from localmesh import eventloop  # asyncio and uvloop: only for async commands

            result = eventloop.run(_await(result))
        return int(result or 0)
    except LocalmeshError as exc:
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `localmesh dump-envoy-config | head`: the reader left; not an error of ours.
        _silence_stdout()
        return 141


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _silence_stdout() -> None:
    # Python flushes stdout at exit; point it at /dev/null so that flush cannot fail again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
