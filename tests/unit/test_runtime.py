"""Runtime directory: private permissions, ownership checks, the per-name instance lock."""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from localmesh import runtime
from localmesh.errors import AlreadyRunningError, RuntimeDirError
from localmesh.runtime import (
    InstanceLock,
    runtime_base,
    runtime_paths,
)


def test_base_prefers_xdg_runtime_dir_owned_by_user(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert runtime_base(env, uid=os.geteuid()) == tmp_path / "localmesh"


def test_base_falls_back_to_tmp_per_uid_without_or_with_foreign_xdg(tmp_path: Path) -> None:
    none = tmp_path / "no-run-user"
    assert runtime_base({}, uid=4242, run_user=none) == Path("/tmp/localmesh-4242")
    # An XDG_RUNTIME_DIR not owned by the user (root's, kept through sudo) is not used.
    foreign = {"XDG_RUNTIME_DIR": str(tmp_path)}
    other = os.geteuid() + 1
    assert runtime_base(foreign, uid=other, run_user=none) == Path(f"/tmp/localmesh-{other}")


def test_base_uses_run_user_when_sudo_dropped_xdg(tmp_path: Path) -> None:
    mine = tmp_path / str(os.geteuid())
    mine.mkdir(mode=0o700)
    assert runtime_base({}, uid=os.geteuid(), run_user=tmp_path) == mine / "localmesh"
    # Someone else's /run/user/<uid> (or a missing one) is not used.
    other = os.geteuid() + 1
    (tmp_path / str(other)).mkdir()
    assert runtime_base({}, uid=other, run_user=tmp_path) == Path(f"/tmp/localmesh-{other}")


def test_paths_are_per_name_and_pure(tmp_path: Path) -> None:
    a = runtime_paths("a", base=tmp_path / "base")
    b = runtime_paths("b", base=tmp_path / "base")
    assert a.root == tmp_path / "base" / "a"
    assert a.control_socket != b.control_socket
    assert {p.parent for p in a.owned_files()} == {a.root}
    assert not (tmp_path / "base").exists()  # computing paths creates nothing


@pytest.mark.parametrize("bad", ["", "../x", "a b", "a/b", "-lead", "x" * 64])
def test_invalid_names_are_refused(bad: str) -> None:
    with pytest.raises(RuntimeDirError, match="invalid --name"):
        runtime_paths(bad, base=Path("/nonexistent"))


def test_prepare_creates_private_directories(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        paths = runtime.prepare(runtime_paths("dev", base=tmp_path / "lm"), uid=os.geteuid())
    finally:
        os.umask(old)
    for d in (paths.root, paths.root.parent):
        st = os.lstat(d)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == os.geteuid()


def test_prepare_refuses_group_readable_directory(tmp_path: Path) -> None:
    base = tmp_path / "lm"
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    with pytest.raises(RuntimeDirError, match="chmod 700"):
        runtime.prepare(runtime_paths("dev", base=base), uid=os.geteuid())


def test_prepare_refuses_directory_of_another_owner(tmp_path: Path) -> None:
    base = tmp_path / "lm"
    base.mkdir(mode=0o700)
    with pytest.raises(RuntimeDirError, match="owned by uid"):
        runtime.prepare(runtime_paths("dev", base=base), uid=os.geteuid() + 1)


def test_prepare_refuses_symlinked_directory(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "lm").mkdir(mode=0o700)
    (tmp_path / "lm" / "dev").symlink_to(real)
    with pytest.raises(RuntimeDirError, match="symlink"):
        runtime.prepare(runtime_paths("dev", base=tmp_path / "lm"), uid=os.geteuid())


def test_lock_refuses_second_instance_with_same_name(tmp_path: Path) -> None:
    paths = runtime_paths("dev", base=tmp_path)
    with InstanceLock(paths) as first:
        assert first.held
        assert paths.lock_file.read_text() == f"{os.getpid()}\n"
        with pytest.raises(AlreadyRunningError) as err:
            InstanceLock(paths).acquire()
        message = str(err.value)
        assert "'dev' is already running" in message
        assert f"pid {os.getpid()}" in message
        assert "localmesh down --name dev" in message


def test_lock_holder_probes_without_taking_anything(tmp_path: Path) -> None:
    paths = runtime_paths("dev", base=tmp_path)
    assert runtime.lock_holder(paths) is None  # nothing there yet
    with InstanceLock(paths) as lock:
        assert runtime.lock_holder(paths) == os.getpid()
        assert runtime.lock_holder(paths) == os.getpid()  # the probe left the lock alone
        assert lock.held and paths.lock_file.exists()
        with pytest.raises(AlreadyRunningError):
            InstanceLock(paths).acquire()
    assert runtime.lock_holder(paths) is None


def test_locks_of_different_names_coexist(tmp_path: Path) -> None:
    with (
        InstanceLock(runtime_paths("a", base=tmp_path)),
        InstanceLock(runtime_paths("b", base=tmp_path)) as b,
    ):
        assert b.held


def test_release_removes_runtime_files_and_allows_reacquire(tmp_path: Path) -> None:
    paths = runtime_paths("dev", base=tmp_path)
    lock = InstanceLock(paths).acquire()
    paths.envoy_bootstrap.write_text("{}")
    paths.control_socket.write_text("")
    lock.release()
    lock.release()  # idempotent
    assert not paths.root.exists()
    with InstanceLock(paths) as again:
        assert again.held


def test_release_keeps_directory_with_unknown_files(tmp_path: Path) -> None:
    paths = runtime_paths("dev", base=tmp_path)
    lock = InstanceLock(paths).acquire()
    (paths.root / "user-notes.txt").write_text("keep")
    lock.release()
    assert (paths.root / "user-notes.txt").read_text() == "keep"
    assert not paths.lock_file.exists()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from localmesh.runtime import InstanceLock, runtime_paths
    lock = InstanceLock(runtime_paths("dev", base=Path(sys.argv[1]))).acquire()
    lock.paths.control_socket.write_text("")  # a socket file the crash leaves behind
    print("locked", flush=True)
    sys.stdin.read()  # hold until killed
    """
)


def _start_holder(base: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(base)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_live_lock_of_other_process_is_refused_with_its_pid(tmp_path: Path) -> None:
    proc = _start_holder(tmp_path)
    try:
        with pytest.raises(AlreadyRunningError, match=f"pid {proc.pid}"):
            InstanceLock(runtime_paths("dev", base=tmp_path)).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_stale_lock_of_crashed_process_is_taken_over(tmp_path: Path) -> None:
    proc = _start_holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    paths = runtime_paths("dev", base=tmp_path)
    assert paths.lock_file.read_text() == f"{proc.pid}\n"  # left behind by the crash
    with InstanceLock(paths) as lock:
        assert lock.held
        assert paths.lock_file.read_text() == f"{os.getpid()}\n"
        assert not paths.control_socket.exists()  # the dead run's socket is cleared


def test_invoking_user_without_sudo_is_ourselves() -> None:
    me = runtime.invoking_user({"SUDO_UID": "4242"}, euid=os.geteuid() or 1)
    assert not me.via_sudo  # SUDO_UID only counts when we actually are root
    plain = runtime.invoking_user({})
    assert (plain.uid, plain.via_sudo) == (os.geteuid(), False)


def test_invoking_user_under_sudo_is_the_caller() -> None:
    nobody = pwd.getpwnam("nobody")
    env = {"SUDO_UID": str(nobody.pw_uid), "SUDO_USER": "nobody", "HOME": "/root"}
    user = runtime.invoking_user(env, euid=0)
    assert user.via_sudo
    assert (user.uid, user.name) == (nobody.pw_uid, "nobody")
    assert user.home == Path(nobody.pw_dir)  # not $HOME, which sudo may leave as root's


def test_running_names_lists_live_instances_only(tmp_path: Path) -> None:
    assert runtime.running_names(tmp_path / "missing") == []
    with (
        InstanceLock(runtime_paths("a", base=tmp_path)),
        InstanceLock(runtime_paths("b", base=tmp_path)),
    ):
        crashed = runtime.prepare(runtime_paths("c", base=tmp_path))
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        crashed.lock_file.write_text(f"{dead.pid}\n")
        (tmp_path / "stray-file").write_text("")
        assert runtime.running_names(tmp_path) == ["a", "b"]
    assert runtime.running_names(tmp_path) == []


def test_pid_alive_tells_dead_zombie_and_reused_pids_apart() -> None:
    me = os.getpid()
    start = runtime.process_start_ticks(me)
    assert start is not None
    assert runtime.pid_alive(me)
    assert runtime.pid_alive(me, start)
    assert not runtime.pid_alive(me, start + 1)  # same number, another process
    assert not runtime.pid_alive(0)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert not runtime.pid_alive(child.pid)  # a zombie is dead
    finally:
        child.wait()
    assert not runtime.pid_alive(child.pid)
