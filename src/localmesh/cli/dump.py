"""`localmesh dump-envoy-config`: print the Envoy configuration services.yaml produces.

Two shapes:
- `--format envoy` (default): one self-contained static Envoy config (routes inline in the
  listener, endpoints inline in the clusters), equivalent to what the control plane serves
  and runnable with `envoy -c FILE`;
- `--format xds`: what `up` really runs: the Envoy bootstrap, then every resource the ADS
  server would serve, grouped by type, each with its name and content version.

Both come from the same planner as `up` (localmesh.plan) and the envoy shape from the one
static renderer (localmesh.xds.static), so routes show exactly as `up` serves them. Ports
are resolved offline from `--mock-config mocks.yaml`, or from the cluster. A dump from
services.yaml has no forwarders, so the clusters of Service ports have no endpoints (`up`
adds them as port-forwards come up; local targets carry their address). `--live` asks a
running `localmesh up` for the snapshot it serves, live endpoints included, and prints it
in either shape.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from localmesh import eventloop
from localmesh.config import Config, ServiceEntry, load_config, load_mocks
from localmesh.errors import UsageError
from localmesh.protocol_choice import ProtocolChoice, choose_protocol
from localmesh.resolve import MockResolver, resolve_all
from localmesh.runtime import DEFAULT_NAME

COMMAND = "dump-envoy-config"
DEFAULT_BIND = "127.0.0.1"
FORMATS = ("envoy", "xds")
OUTPUTS = ("yaml", "json")

DESCRIPTION = """\
Print the Envoy configuration for services.yaml.

  --format envoy (default)  one self-contained static config, runnable with `envoy -c`
  --format xds              what `up` runs: the bootstrap, then every resource the
                            xDS server serves, by type, with its name and version

Service ports are resolved from --mock-config mocks.yaml (offline) or from the
cluster (kubeconfig as kubectl finds it). --live prints what a running
`localmesh up` serves instead, live endpoints included.
"""

EPILOG = """\
examples:
  # offline: ports come from mocks.yaml, no cluster is contacted
  %(prog)s -f services.yaml --mock-config mocks.yaml

  # check the result with Envoy itself
  %(prog)s services.yaml --mock-config mocks.yaml > envoy.yaml
  envoy --mode validate -c envoy.yaml

  # what `up` serves over xDS: the bootstrap and every resource with its version
  %(prog)s -f services.yaml --mock-config mocks.yaml --format xds --output json

  # what the running mesh serves right now
  %(prog)s --live --format xds

mocks.yaml:
  mocks:
    - namespace: users
      service: users-api
      port_name: grpc      # "" for services.yaml entries that give `port`
      resolved_port: 50051
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help="print the Envoy configuration for services.yaml",
        description=DESCRIPTION,
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
        choices=FORMATS,
        default="envoy",
        help="envoy: one static config for `envoy -c`; xds: the bootstrap and every xDS "
        "resource by type, name and version (default: envoy)",
    )
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="yaml", help="(default: yaml)")
    parser.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        metavar="ADDRESS",
        help=f"address of the Envoy listener, as for `up` (default: {DEFAULT_BIND})",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="print what the running `localmesh up` serves (no services.yaml)",
    )
    parser.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help="which running mesh --live asks, and whose xDS socket the xds bootstrap "
        f"names (default: {DEFAULT_NAME})",
    )
    parser.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig for port resolution")
    parser.add_argument("--context", help="kubeconfig context for port resolution")
    parser.set_defaults(run=run, command_prog=parser.prog)


def run(args: argparse.Namespace) -> int:
    # Synchronous on purpose: file reads block, and Ctrl-C must interrupt them at once.
    if args.live:
        if args.config or args.file or args.mock_config:
            raise UsageError("--live prints the running instance's config: drop services.yaml")
        from localmesh.xds.static import render_static_config

        view = eventloop.run(live_xds_view(args.name))
        document = view if args.format == "xds" else render_static_config(view)
    else:
        config = load_config(config_path(args))
        if args.mock_config:
            mocks = MockResolver(load_mocks(args.mock_config))
            ports = resolve_all(config, mocks)
            choices: dict[ServiceEntry, ProtocolChoice] = mocks.choices
        else:
            ports, choices = eventloop.run(cluster_ports(config, args.kubeconfig, args.context))
        document = build_document(config, ports, args.format, args.bind, args.name, choices=choices)
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
) -> tuple[dict[ServiceEntry, int], dict[ServiceEntry, ProtocolChoice]]:
    """Every entry's service port, read from the cluster (one GET per entry, no watches),
    and the protocol its Service port picks for entries without `type`."""
    from localmesh.kube import Cluster

    cluster = await asyncio.to_thread(Cluster.connect, kubeconfig, context)
    choices: dict[ServiceEntry, ProtocolChoice] = {}

    class _Choosing:
        def resolve(self, entry: ServiceEntry) -> int:
            port = cluster.service_info(entry).port
            if entry.inferred:
                choices[entry] = choose_protocol(port.name, port.app_protocol)
            return port.port

    try:
        return await asyncio.to_thread(resolve_all, config, _Choosing()), choices
    finally:
        await cluster.close()


def build_document(
    config: Config,
    ports: Mapping[ServiceEntry, int],
    fmt: str,
    bind: str,
    name: str = DEFAULT_NAME,
    *,
    choices: Mapping[ServiceEntry, ProtocolChoice] | None = None,
) -> dict[str, Any]:
    """The JSON-able document `dump-envoy-config` prints. No forwarders: no endpoints
    (local processes have theirs: their address is in the config)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    from localmesh.plan import plan
    from localmesh.xds.snapshot import build_snapshot, render_xds_view
    from localmesh.xds.static import render_static_config

    state = plan(config, ports, {}, bind, choices=choices)
    snapshot = build_snapshot(state).check()
    if fmt == "envoy":
        # The static config's admin listens on loopback, port 0, whatever the bootstrap
        # says: no bootstrap, and with it none of the typed Envoy bindings, is loaded.
        return render_static_config(render_xds_view(snapshot, {}))
    from localmesh.bootstrap import BootstrapOptions, build_bootstrap
    from localmesh.runtime import runtime_paths

    bootstrap = build_bootstrap(
        BootstrapOptions(xds_socket_path=str(runtime_paths(name).xds_socket))
    )
    return render_xds_view(snapshot, bootstrap)


# -- --live ---------------------------------------------------------------------------------


async def live_xds_view(name: str) -> dict[str, Any]:
    """The running instance's snapshot, shaped like `--format xds` (bootstrap when readable)."""
    from localmesh.control.client import ControlClient
    from localmesh.runtime import runtime_paths
    from localmesh.xds.resources import TYPE_ORDER

    async with ControlClient.for_name(name) as control:
        resources = await control.dump()
    by_type: dict[str, dict[str, Any]] = {t: {"resources": []} for t in TYPE_ORDER}
    for resource in resources:
        by_type.setdefault(resource.type_url, {"resources": []})["resources"].append(
            {
                "name": resource.name,
                "version": resource.version,
                "resource": json.loads(resource.json),
            }
        )
    view: dict[str, Any] = {}
    # The bootstrap file is optional here: the resources are what matters.
    with contextlib.suppress(OSError, ValueError):
        view["bootstrap"] = json.loads(runtime_paths(name).envoy_bootstrap.read_text())
    view["resources"] = by_type
    return view


def render(document: Mapping[str, Any], output: str) -> str:
    if output == "json":
        return json.dumps(document, indent=2) + "\n"
    # libyaml's emitter where PyYAML has it: the pure-Python one takes seconds at 1,000 entries.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    try:
        # The nodes PyYAML's safe representer would make, made directly: its generic
        # dispatch was 40 % of a 1,000-entry dump.
        node = _node(dict(document), set())
    except _NotPlain:
        text: str = yaml.dump(
            dict(document), Dumper=dumper, sort_keys=False, default_flow_style=False
        )
        return text
    serialized: str = yaml.serialize(node, Dumper=dumper)
    return serialized


class _NotPlain(Exception):
    """A value the direct representation does not cover (or a shared container, which
    PyYAML writes as an anchor): the document goes through PyYAML's representer."""


_STR, _INT, _BOOL, _NULL = (f"tag:yaml.org,2002:{t}" for t in ("str", "int", "bool", "null"))


def _node(data: Any, seen: set[int]) -> yaml.Node:
    """`SafeRepresenter` with default_flow_style=False and sort_keys=False, for the JSON
    shapes a dump holds: dicts, lists, strings, ints, bools and None."""
    if isinstance(data, str):
        return yaml.ScalarNode(_STR, data)
    if isinstance(data, dict | list):
        if id(data) in seen:
            raise _NotPlain
        seen.add(id(data))
        if isinstance(data, dict):
            pairs = [(_node(k, seen), _node(v, seen)) for k, v in data.items()]
            return yaml.MappingNode("tag:yaml.org,2002:map", pairs, flow_style=False)
        items = [_node(v, seen) for v in data]
        return yaml.SequenceNode("tag:yaml.org,2002:seq", items, flow_style=False)
    if isinstance(data, bool):
        return yaml.ScalarNode(_BOOL, "true" if data else "false")
    if isinstance(data, int):
        return yaml.ScalarNode(_INT, str(data))
    if data is None:
        return yaml.ScalarNode(_NULL, "null")
    raise _NotPlain  # floats and anything else: PyYAML's own rules
