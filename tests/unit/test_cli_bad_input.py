"""Bad input and interruptions on the command line: one-line errors naming the file, no
tracebacks, bounded waits, a clean Ctrl-C, and the hosts block a crashed run left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localmesh.hosts import HostsFile
from tests.unit.cli_helpers import BIN, Result, cli_env

SERVICES = "services:\n  - {host: a.localhost, namespace: a, service: a, port: 80}\n"


def _run(tmp_path: Path, *args: str | Path) -> Result:
    env = dict(cli_env(), XDG_RUNTIME_DIR=str(tmp_path))
    proc = subprocess.run(
        [str(BIN / "localmesh"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_up_with_a_directory_as_hosts_file_is_one_line(tmp_path: Path) -> None:
    services = tmp_path / "services.yaml"
    services.write_text(SERVICES)
    hosts_dir = tmp_path / "hosts.d"
    hosts_dir.mkdir()
    result = _run(tmp_path, "up", "-f", services, "--hosts-file", hosts_dir, "--name", "t")
    assert result.returncode == 1, result
    assert result.stderr == f"localmesh: error: hosts file {hosts_dir} is not a regular file\n"
    assert not (tmp_path / "localmesh" / "t").exists()


def test_hosts_add_validates_names_as_services_yaml_does(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\n")
    for bad in ("under_score.localhost", "a..localhost", "a.localhost:8080", "a-.localhost"):
        result = _run(tmp_path, "hosts", "add", "--hosts-file", hosts, "ok.localhost", bad)
        assert result.returncode == 2, result
        assert result.stderr.startswith(f"localmesh: error: host {bad!r} "), result
        assert len(result.stderr.splitlines()) == 1, result
    assert hosts.read_bytes() == b"127.0.0.1 localhost\n"
    result = _run(tmp_path, "hosts", "add", "--hosts-file", hosts, "ok.localhost")
    assert result.returncode == 0, result
    assert b"127.0.0.1 ok.localhost" in hosts.read_bytes()


def test_status_and_down_name_the_block_a_crash_left_behind(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\n")
    pid = _dead_pid()
    HostsFile(hosts, "crashed", owner_pid=pid, is_alive=lambda *_: True).ensure(["a.localhost"])
    for command in ("status", "down"):
        result = _run(tmp_path, command, "--name", "crashed", "--hosts-file", hosts)
        assert result.returncode == 1, result
        lines = result.stderr.splitlines()
        assert lines[0].startswith("localmesh: error: no localmesh instance named 'crashed'")
        assert lines[1] == (
            f"localmesh: error: {hosts} still has the hosts block of 'crashed' left by a run "
            f"that ended without clean-up (pid {pid}); the next `localmesh up --name crashed` "
            "removes it, or now:"
        )
        assert lines[2] == (
            f"localmesh: error:   {sys.executable} -m localmesh hosts remove --name crashed "
            f"--hosts-file {hosts}"
        )
    # Another name, or no block at all: nothing about the hosts file.
    result = _run(tmp_path, "status", "--name", "other", "--hosts-file", hosts)
    assert len(result.stderr.splitlines()) == 1, result
    assert os.path.exists(hosts)


def test_down_timeout_bounds_the_wait_on_a_frozen_instance(tmp_path: Path) -> None:
    # A frozen instance: its control socket is bound and listening (the kernel completes
    # connections) but the process is stopped and never answers.
    socket_path = tmp_path / "localmesh" / "frozen" / "control.sock"
    socket_path.parent.mkdir(parents=True, mode=0o700)
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.bind(sys.argv[1]); s.listen(16)\n"
            "os.kill(os.getpid(), signal.SIGSTOP)\n",
            str(socket_path),
        ]
    )
    try:
        _wait_stopped(server.pid)
        result = _run(tmp_path, "down", "--name", "frozen", "--timeout", "1")
    finally:
        server.kill()
        server.wait()
    assert result.returncode == 1, result
    assert result.stderr == (
        "localmesh: error: localmesh instance 'frozen' did not stop within 1s (--timeout); "
        "it may be frozen or still draining\n"
    )
    bad = _run(tmp_path, "down", "--timeout", "0")
    assert bad.returncode == 2
    assert "expected a number of seconds above 0" in bad.stderr


def _wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, "the fake instance never stopped itself"
        time.sleep(0.01)  # polling a condition with a deadline


def in_pipe_read(pid: int) -> bool:
    """Whether a thread of process `pid` sleeps in the kernel's pipe read (a FIFO's too)."""
    return any(
        wchan.read_text().endswith("pipe_read")
        for wchan in Path(f"/proc/{pid}/task").glob("*/wchan")
    )


@pytest.mark.parametrize("command", ["up", "dump-envoy-config"])
def test_ctrl_c_while_reading_services_yaml_exits_130(tmp_path: Path, command: str) -> None:
    # services.yaml is a FIFO nobody writes: the read blocks until Ctrl-C. `up` used to read
    # it inside the event loop, whose Ctrl-C handler only cancels a task: it hung.
    fifo = tmp_path / "services.yaml"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [str(BIN / "localmesh"), command, "-f", str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(cli_env(), XDG_RUNTIME_DIR=str(tmp_path)),
    )
    writer = None
    try:
        deadline = time.monotonic() + 60
        while writer is None:
            try:  # succeeds only once the CLI has the FIFO open for reading
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the CLI never opened services.yaml"
                time.sleep(0.01)  # polling a condition with a deadline
        # Ctrl-C once the read is blocked: a signal landing between CPython's signal check
        # and the read() syscall is handled only when the read returns (never, here).
        while not in_pipe_read(proc.pid):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the CLI never blocked reading services.yaml"
            time.sleep(0.01)  # polling a condition with a deadline
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if writer is not None:
            os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err) == (130, "", "")


def test_up_without_a_path_uses_services_yaml_here_and_says_so(tmp_path: Path) -> None:
    def up_here() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "localmesh"), "up", "--name", "here"],
            capture_output=True,
            text=True,
            env=dict(cli_env(), XDG_RUNTIME_DIR=str(tmp_path)),
            cwd=tmp_path,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    missing = up_here()
    assert missing.returncode == 2
    assert "no ./services.yaml to use by default" in missing.stderr
    (tmp_path / "services.yaml").write_text("services: 3\n")  # invalid: stops before starting
    found = up_here()
    assert found.returncode == 2
    assert found.stderr.splitlines() == [
        "using ./services.yaml (no -f given)",
        "localmesh: error: services.yaml:1:11: services: expected a list, got an integer (3)",
    ]
