"""`localmesh mesh` argument handling and output, without a cluster."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from localmesh.cli.main import build_parser
from localmesh.cli.mesh import RoutedView, mesh_options, session_rows, split_target, table
from localmesh.clustermesh import manifests as m
from localmesh.errors import ConfigError
from tests.unit.cli_helpers import run_cli


def test_namespace_from_target_or_flag() -> None:
    assert split_target("billing/billing-api", None, "default") == ("billing", "billing-api")
    assert split_target("billing-api", "billing", "default") == ("billing", "billing-api")
    assert split_target("billing-api", None, "dev") == ("dev", "billing-api")
    assert split_target("billing/api", "billing", "x") == ("billing", "api")
    with pytest.raises(ConfigError, match="names namespace 'billing' but -n says 'users'"):
        split_target("billing/api", "users", "default")
    with pytest.raises(ConfigError, match="NAMESPACE/NAME"):
        split_target("a/b/c", None, "default")


def parse(*argv: str) -> argparse.Namespace:
    return build_parser("localmesh").parse_args(["mesh", *argv])


def test_ktctl_spellings_mean_the_same() -> None:
    ours = parse(
        "svc",
        "--expose",
        "8080",
        "--version-mark",
        "k:v",
        "--skip-port-checking",
        "--router-image",
        "img",
    )
    theirs = parse(
        "svc",
        "--expose",
        "8080",
        "--versionMark",
        "k:v",
        "--skipPortChecking",
        "--routerImage",
        "img",
    )
    assert vars(ours) == vars(theirs)
    options = mesh_options(ours, "ns", "svc")
    assert (options.mark.key, options.mark.value) == ("k", "v")
    assert options.skip_port_checking and options.image == "img"
    assert [(p.local, p.remote) for p in options.exposed] == [(8080, 8080)]


def test_options_may_sit_between_positionals() -> None:
    args = parse("clean", "-n", "billing", "billing-api", "--dry-run")
    assert (args.target, args.service, args.namespace, args.dry_run) == (
        "clean",
        "billing-api",
        "billing",
        True,
    )
    args = build_parser("localmesh").parse_args(["mesh", "list", "--log-level", "debug"])
    assert (args.target, args.log_level) == ("list", "debug")


def test_defaults() -> None:
    options = mesh_options(parse("svc", "--expose", "9090:8080,9091:8081"), "ns", "svc")
    assert options.image == m.DEFAULT_ROUTER_IMAGE == "localmesh/localmesh:0.1.0"
    assert options.mark.key == "version" and options.mark.generated
    assert options.mode == "auto" and not options.skip_port_checking
    assert options.router_idle_timeout is None  # the router's own default


def test_option_errors() -> None:
    with pytest.raises(ConfigError, match="--expose is required"):
        mesh_options(parse("svc"), "ns", "svc")
    manual = mesh_options(parse("svc", "--expose", "80", "--mode", "manual"), "ns", "svc")
    assert manual.mode == "manual"


def test_cli_rejects_misplaced_options() -> None:
    for argv, message in [
        (["mesh", "list", "--expose", "80"], "mesh list: --expose belongs to `mesh SERVICE`"),
        (
            ["mesh", "svc", "--expose", "80", "--dry-run"],
            "--dry-run belongs to `mesh clean` / `mesh recover`",
        ),
        (["mesh", "list", "extra"], "unexpected argument 'extra'"),
        # Input errors come before any cluster access (there is no kubeconfig here).
        (["mesh", "svc", "--expose", "x"], "--expose 'x': the port 'x' is not a number"),
        (
            ["mesh", "svc", "--expose", "80", "--ready-timeout", "0"],
            "--ready-timeout 0: give a positive number of seconds",
        ),
        # float() takes these, and a nan timeout never expires.
        (
            ["mesh", "svc", "--expose", "80", "--ready-timeout", "nan"],
            "--ready-timeout nan: give a positive number of seconds",
        ),
        (
            ["mesh", "svc", "--expose", "80", "--ready-timeout", "inf"],
            "--ready-timeout inf: give a positive number of seconds",
        ),
        (
            ["mesh", "svc", "--expose", "80", "--router-idle-timeout", "NaN"],
            "--router-idle-timeout nan: give a positive number of seconds",
        ),
        (
            ["mesh", "svc", "--expose", "80", "--router-idle-timeout=-inf"],
            "--router-idle-timeout -inf: give a positive number of seconds",
        ),
        (["mesh", "a/b", "-n", "c", "--expose", "80"], "'a/b' names namespace 'a' but -n says 'c'"),
    ]:
        result = run_cli(*argv)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == f"localmesh: error: {message}"


def test_list_rows_show_mark_holder_and_liveness() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    spec = m.SessionSpec(
        namespace="billing",
        service="billing-api",
        session_id="abc123",
        header="version",
        value="dev",
        slug="dev",
        holder="ana@laptop",
        ports=(m.PortMap(9090, 8080, 8081),),
    )
    live = m.session_lease(dataclasses.replace(spec, mode="manual"), now - timedelta(seconds=2))
    stale = m.session_lease(spec, now - timedelta(seconds=60))
    stale["metadata"]["namespace"] = "zeta"
    del stale["metadata"]["annotations"][m.MODE_ANNOTATION]  # older leases: auto mode
    rows = session_rows([stale, live], now)
    assert rows == [
        [
            "billing",
            "billing-api",
            "version: dev",
            "manual",
            "ana@laptop",
            "9090:8080:8081",
            "live",
            "2s ago",
        ],
        [
            "zeta",
            "billing-api",
            "version: dev",
            "auto",
            "ana@laptop",
            "9090:8080:8081",
            "expired",
            "60s ago",
        ],
    ]
    text = table(["A", "B"], [["x", "long value"], ["longer", "y"]])
    assert text.splitlines() == ["A       B", "x       long value", "longer  y"]


class FakeTunnel:
    """What `status` reads of a TunnelClient: its state line and stats."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.stats = object()


@pytest.mark.parametrize(
    ("tunnel", "routed", "shown"),
    [
        ("connecting", False, "connecting"),
        ("connected", False, "connected, not routed yet"),
        ("connected", True, "connected, routed"),
        (
            "connected; local port 9090 not answering (marked requests get 503)",
            True,
            "connected, routed; local port 9090 not answering (marked requests get 503)",
        ),
        ("reconnecting (no answer)", True, "reconnecting (no answer)"),
    ],
)
def test_status_says_whether_the_router_routes_the_mark(
    tunnel: str, routed: bool, shown: str
) -> None:
    view = RoutedView(FakeTunnel(tunnel))
    view.routed = routed
    assert view.state == shown
    assert view.stats is view.tunnel.stats


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["clean", "--help"], "usage: localmesh mesh clean "),
        (["recover", "-n", "billing", "--help"], "usage: localmesh mesh recover "),
        (["-n", "billing", "clean", "-h"], "usage: localmesh mesh clean "),
        (["list", "--help"], "usage: localmesh mesh list "),
    ],
)
def test_each_action_has_its_own_help(argv: list[str], usage: str) -> None:
    result = run_cli("mesh", *argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage)
    # Only the action's options: not those of `mesh SERVICE`.
    for other in ("--expose", "--version-mark", "--router-image", "--mode"):
        assert other not in result.stdout
    assert "--kubeconfig" in result.stdout and "-n NAMESPACE" in result.stdout
    assert ("--dry-run" in result.stdout) is ("list" not in argv)


def test_mesh_help_is_still_the_whole_help() -> None:
    for argv in (["--help"], ["--kubeconfig", "list", "--help"], ["svc", "--help"]):
        result = run_cli("mesh", *argv)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: localmesh mesh [-h]")
        assert "--expose" in result.stdout and "list | clean | recover" in result.stdout
