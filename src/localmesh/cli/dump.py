"""`localmesh dump-envoy-config`: print the Envoy configuration services.yaml produces.

Two shapes:
- `--format envoy` (default): one self-contained static Envoy config (routes inline in the
  listener, endpoints inline in the clusters), equivalent to what the control plane serves
  and runnable with `envoy -c FILE`;
- `--format xds`: what `up` really runs: the Envoy bootstrap, then every resource the ADS
  server would serve, grouped by type, each with its name and content version.

Ports are resolved offline from `--mock-config mocks.yaml`, or from the cluster. The dump has
no forwarders, so clusters are listed without endpoints (`up` adds them as port-forwards
come up). `--live` prints the snapshot a running `localmesh up` serves instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from localmesh.config import Config, ServiceEntry, load_config, load_mocks
from localmesh.errors import ControlError, LocalmeshError
from localmesh.resolve import MockResolver, mesh_spec_from_config, resolve_all
from localmesh.runtime import DEFAULT_NAME

COMMAND = "dump-envoy-config"
DEFAULT_BIND = "127.0.0.1"

EPILOG = """\
examples:
  # offline: ports come from mocks.yaml, no cluster is contacted
  %(prog)s -f services.yaml --mock-config mocks.yaml

  # check the result with Envoy itself
  %(prog)s services.yaml --mock-config mocks.yaml > envoy.yaml
  envoy --mode validate -c envoy.yaml

  # what `up` serves over xDS: the bootstrap and every resource with its version
  %(prog)s -f services.yaml --mock-config mocks.yaml --format xds --output json

mocks.yaml:
  mocks:
    - namespace: users
      service: users-api
      port_name: grpc      # "" for services.yaml entries that give `port`
      resolved_port: 50051
"""


class UsageError(LocalmeshError):
    """Options that do not go together (exit code 2, like argparse's own errors)."""

    exit_code = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help="print the Envoy configuration for services.yaml",
        description=__doc__.split("\n\n", 1)[0].split(": ", 1)[1]
        + "\n\n"
        + "Ports are resolved from --mock-config mocks.yaml (offline) or from the cluster.",
        epilog=EPILOG,
    )
    parser.add_argument("config", nargs="?", metavar="SERVICES_YAML", help="services.yaml")
    parser.add_argument(
        "-f",
        "--file",
        dest="file",
        metavar="SERVICES_YAML",
        help="services.yaml (same as the positional)",
    )
    parser.add_argument(
        "--mock-config",
        metavar="MOCKS_YAML",
        help="resolve service ports from this file instead of the cluster (offline)",
    )
    parser.add_argument(
        "--format",
        choices=("envoy", "xds"),
        default="envoy",
        help="envoy: one static config for `envoy -c`; xds: the bootstrap and every xDS "
        "resource by type, name and version (default: envoy)",
    )
    parser.add_argument(
        "--output", "-o", choices=("yaml", "json"), default="yaml", help="(default: yaml)"
    )
    parser.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        metavar="ADDRESS",
        help=f"address of the Envoy listener, as for `up` (default: {DEFAULT_BIND})",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="print what the running `localmesh up` serves (no services.yaml needed)",
    )
    parser.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help="which running mesh (with --live) or whose sockets the xds bootstrap names "
        "(default: default)",
    )
    parser.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig for port resolution")
    parser.add_argument("--context", help="kubeconfig context for port resolution")
    parser.set_defaults(run=run, command_prog=parser.prog)


def run(args: argparse.Namespace) -> int:
    # Synchronous on purpose: file reads block, and Ctrl-C must interrupt them at once.
    if args.live:
        if args.config or args.file or args.mock_config:
            raise UsageError("--live prints the running instance's config: drop services.yaml")
        document = asyncio.run(live_document(args))
    else:
        config = load_config(config_path(args))
        if args.mock_config:
            ports = resolve_all(config, MockResolver(load_mocks(args.mock_config)))
        else:
            ports = asyncio.run(cluster_ports(config, args.kubeconfig, args.context))
        document = build_document(config, ports, args.format, args.bind, args.name)
    sys.stdout.write(render(document, args.output))
    sys.stdout.flush()
    return 0


def config_path(args: argparse.Namespace) -> Path:
    if args.config and args.file:
        raise UsageError("give services.yaml once: either -f FILE or a positional FILE")
    path = args.config or args.file
    if not path:
        prog = getattr(args, "command_prog", f"localmesh {COMMAND}")
        raise UsageError(f"which services.yaml? usage: {prog} -f services.yaml")
    return Path(path)


async def cluster_ports(
    config: Config, kubeconfig: str | None, context: str | None
) -> dict[ServiceEntry, int]:
    """Every entry's service port, read from the cluster (one GET per entry, no watches)."""
    from localmesh.kube import Cluster

    cluster = await asyncio.to_thread(Cluster.connect, kubeconfig, context)
    try:
        return await asyncio.to_thread(resolve_all, config, cluster)
    finally:
        await cluster.close()


async def live_document(args: argparse.Namespace) -> dict[str, Any]:
    """The running instance's snapshot over the control API (seam for localmesh.control)."""
    raise ControlError(
        "--live needs the control API of a running `localmesh up`, which this build does not "
        "have yet; dump from services.yaml instead"
    )


def build_document(
    config: Config,
    ports: Mapping[ServiceEntry, int],
    fmt: str,
    bind: str,
    name: str = DEFAULT_NAME,
) -> dict[str, Any]:
    """The JSON-able document `dump-envoy-config` prints. No forwarders: no endpoints."""
    mesh = mesh_spec_from_config(config, ports, {}, bind)
    if fmt == "envoy":
        from localmesh.xds.resources import render_static_config

        return render_static_config(mesh)
    if fmt == "xds":
        from localmesh.bootstrap import BootstrapOptions, build_bootstrap
        from localmesh.runtime import runtime_paths
        from localmesh.xds.snapshot import build_snapshot, render_xds_view

        bootstrap = build_bootstrap(
            BootstrapOptions(xds_socket_path=str(runtime_paths(name).xds_socket))
        )
        return render_xds_view(build_snapshot(mesh).check(), bootstrap)
    raise UsageError(f"unknown format {fmt!r}: use envoy or xds")


def render(document: Mapping[str, Any], output: str) -> str:
    if output == "json":
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False)
