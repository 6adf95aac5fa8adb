"""The /etc/hosts block: byte-for-byte preservation, atomic and in-place writes, crash
clean-up, permission errors. Everything runs on real files in tmp_path."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from localmesh.errors import HostsFileError
from localmesh.hosts import HostsFile, parse_blocks
from localmesh.runtime import process_start_ticks

# Fragments of real-world hosts files, including the awkward ones.
FRAGMENTS: tuple[bytes, ...] = (
    b"127.0.0.1\tlocalhost\n",
    b"::1     localhost ip6-localhost ip6-loopback\r\n",
    b"# comment with trailing spaces   \n",
    b"\n",
    b"\r\n",
    b"10.0.0.5 db.internal  # inline comment\n",
    b"192.168.1.10\tna\xc3\xafve.example caf\xc3\xa9.local\n",  # UTF-8
    b"172.17.0.2\tcontainer-\xff\xfe\n",  # not UTF-8 at all
    b"   \t  \n",
    b"# BEGIN localmesh\n",  # a marker without a name
    b"# BEGIN localmesh orphan pid=1\n",  # a BEGIN without END: not a block
    b"fe80::1%lo0 linklocal\n",
    b"lone carriage return\r",
    b"# BEGIN localmesh persistent-one\n127.0.0.1 kept.localhost\n# END localmesh persistent-one\n",
)


def _other_live_block() -> bytes:
    # Owned by a process that is certainly alive: our parent.
    return (
        f"# BEGIN localmesh other pid={os.getppid()}\r\n"
        "127.0.0.1 other.localhost\r\n"
        "# END localmesh other\r\n"
    ).encode()


def _random_file(rng: random.Random) -> bytes:
    parts = [rng.choice((*FRAGMENTS, _other_live_block())) for _ in range(rng.randint(0, 8))]
    data = b"".join(parts)
    if data and rng.random() < 0.4:
        data = data.rstrip(b"\r\n")  # no final newline
    return data


def _without_block(data: bytes, name: str) -> bytes:
    lines = data.splitlines(keepends=True)
    own = [b for b in parse_blocks(lines) if b.name == name]
    assert len(own) == 1
    return b"".join(lines[: own[0].first_line] + lines[own[0].last_line + 1 :])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("seed", range(150))
def test_every_other_byte_is_preserved(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    original = _random_file(rng)
    path = tmp_path / "hosts"
    path.write_bytes(original)
    hosts = HostsFile(path, "dev")

    update = hosts.ensure(["billing-api.localhost", "users-api.localhost"])
    written = path.read_bytes()
    assert update.added == ("billing-api.localhost", "users-api.localhost")
    assert _without_block(written, "dev") == original
    block = written.split(b"# BEGIN localmesh dev", 1)[1]
    assert b"127.0.0.1 billing-api.localhost" in block
    assert written.startswith(b"# BEGIN localmesh dev")  # first match wins in glibc

    assert hosts.remove() is True
    assert path.read_bytes() == original


@pytest.mark.parametrize("seed", range(40))
def test_in_place_fallback_preserves_bytes_too(tmp_path: Path, seed: int) -> None:
    original = _random_file(random.Random(1000 + seed))
    path = tmp_path / "hosts"
    path.write_bytes(original)
    inode = path.stat().st_ino
    hosts = HostsFile(path, "dev", rename=_busy_rename)
    hosts.ensure(["a.localhost"])
    assert _without_block(path.read_bytes(), "dev") == original
    hosts.remove()  # shrinks the file in place
    assert path.read_bytes() == original
    assert path.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts"]  # no temp file left


def _busy_rename(src: str, dst: str) -> None:
    raise OSError(errno.EBUSY, "Device or resource busy", dst)


def test_block_follows_crlf_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\r\n")
    HostsFile(path, "dev").ensure(["x.localhost"])
    assert (
        path.read_bytes()
        == (
            f"# BEGIN localmesh dev pid={os.getpid()} start={process_start_ticks(os.getpid())}\r\n"
            "127.0.0.1 x.localhost\r\n"
            "# END localmesh dev\r\n"
            "127.0.0.1 localhost\r\n"
        ).encode()
    )


def test_atomic_write_replaces_inode_and_keeps_mode(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    path.chmod(0o644)
    before = path.stat()
    HostsFile(path, "dev").ensure(["x.localhost"])
    after = path.stat()
    assert after.st_ino != before.st_ino  # renamed into place, never written through
    assert after.st_mode == before.st_mode
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts"]


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EXDEV])
def test_bind_mount_rename_failure_falls_back_to_in_place(tmp_path: Path, code: int) -> None:
    calls: list[tuple[str, str]] = []

    def failing_rename(src: str, dst: str) -> None:
        calls.append((src, dst))
        raise OSError(code, os.strerror(code), dst)

    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost")
    inode = path.stat().st_ino
    update = HostsFile(path, "dev", rename=failing_rename).ensure(["x.localhost"])
    assert calls and calls[0][1] == str(path)
    assert update.changed
    assert path.stat().st_ino == inode
    assert path.read_bytes().endswith(b"# END localmesh dev\n127.0.0.1 localhost")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts"]


def test_other_rename_errors_are_reported_not_hidden(tmp_path: Path) -> None:
    def broken(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "Input/output error", dst)

    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    with pytest.raises(HostsFileError, match="Input/output error"):
        HostsFile(path, "dev", rename=broken).ensure(["x.localhost"])
    assert path.read_bytes() == b"127.0.0.1 localhost\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts"]


def test_symlinked_hosts_file_is_written_through_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real-hosts"
    real.write_bytes(b"127.0.0.1 localhost\n")
    link = tmp_path / "hosts"
    link.symlink_to(real)
    HostsFile(link, "dev").ensure(["x.localhost"])
    assert link.is_symlink()
    assert b"x.localhost" in real.read_bytes()


def test_ensure_is_idempotent_and_does_not_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    hosts = HostsFile(path, "dev")
    assert hosts.ensure(["a.localhost", "A.localhost", "b.localhost"]).changed
    content, inode = path.read_bytes(), path.stat().st_ino
    again = hosts.ensure(["b.localhost", "a.localhost"])
    assert not again.changed
    assert (path.read_bytes(), path.stat().st_ino) == (content, inode)
    assert content.count(b"a.localhost") == 1  # case-insensitive de-duplication


def test_ensure_updates_block_in_place_when_hosts_change(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    hosts = HostsFile(path, "dev")
    hosts.ensure(["a.localhost", "b.localhost"])
    hosts.ensure(["b.localhost", "c.localhost"])
    blocks = hosts.blocks()
    assert [b.hosts for b in blocks] == [("b.localhost", "c.localhost")]
    hosts.ensure([])  # nothing left to route: no block at all
    assert path.read_bytes() == b"127.0.0.1 localhost\n"


def test_hosts_already_resolving_to_the_listener_need_no_entry(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(
        b"127.0.0.1 localhost known.localhost\n"
        b"::1 v6only.localhost\n"
        b"10.1.2.3 shadowed.localhost\n127.0.0.1 shadowed.localhost\n"
        b"127.0.1.1 debian-host\n" + _other_live_block()
    )
    update = HostsFile(path, "dev").ensure(
        [
            "localhost",
            "known.localhost",
            "v6only.localhost",  # IPv4 lookups would not find it
            "shadowed.localhost",  # the first match points elsewhere
            "debian-host",  # loopback, but not the listener's address
            "other.localhost",  # only in a live block that goes away with its mesh
            "new.localhost",  # glibc does not resolve *.localhost by itself
        ]
    )
    assert update.already_resolved == ("localhost", "known.localhost")
    assert update.added == (
        "v6only.localhost",
        "shadowed.localhost",
        "debian-host",
        "other.localhost",
        "new.localhost",
    )


def test_any_loopback_counts_for_a_wildcard_listener(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.1.1 debian-host\n")
    update = HostsFile(path, "dev").ensure(["debian-host", "x.localhost"], address="0.0.0.0")
    assert update.already_resolved == ("debian-host",)
    assert b"\n127.0.0.1 x.localhost\n" in path.read_bytes()  # reached through loopback
    HostsFile(path, "six").ensure(["y.localhost"], address="::")
    assert b"\n::1 y.localhost\n" in path.read_bytes()


def test_stale_block_of_crashed_run_is_removed_on_next_start(tmp_path: Path) -> None:
    dead = _dead_pid()
    path = tmp_path / "hosts"
    base = b"127.0.0.1 localhost\n"
    stale = (
        f"# BEGIN localmesh crashed pid={dead}\n127.0.0.1 gone.localhost\n# END localmesh crashed\n"
    ).encode()
    path.write_bytes(base + stale + _other_live_block())
    update = HostsFile(path, "dev").ensure(["gone.localhost"])
    assert update.stale_removed == ("crashed",)
    assert update.added == ("gone.localhost",)  # the dead block's entry did not count
    content = path.read_bytes()
    assert b"crashed" not in content
    assert _without_block(content, "dev") == base + _other_live_block()


def test_stale_block_of_same_name_is_replaced(tmp_path: Path) -> None:
    dead = _dead_pid()
    path = tmp_path / "hosts"
    path.write_bytes(
        f"# BEGIN localmesh dev pid={dead}\n127.0.0.1 a.localhost\n# END localmesh dev\n".encode()
    )
    hosts = HostsFile(path, "dev")
    hosts.ensure(["a.localhost"])
    [block] = hosts.blocks()
    assert (block.owner_pid, block.hosts) == (os.getpid(), ("a.localhost",))
    hosts.remove()
    assert path.read_bytes() == b""


def test_block_of_a_reused_pid_is_stale(tmp_path: Path) -> None:
    # The pid is alive, but it is another process now: its start time differs.
    live = os.getppid()
    start = process_start_ticks(live)
    assert start is not None
    path = tmp_path / "hosts"
    reused = f"# BEGIN localmesh old pid={live} start={start + 1}\n127.0.0.1 r.localhost\n"
    same = f"# BEGIN localmesh cur pid={live} start={start}\n127.0.0.1 s.localhost\n"
    path.write_bytes((reused + "# END localmesh old\n" + same + "# END localmesh cur\n").encode())
    update = HostsFile(path, "dev").ensure(["x.localhost"])
    assert update.stale_removed == ("old",)
    assert [b.name for b in HostsFile(path, "dev").blocks()] == ["dev", "cur"]


def test_block_of_a_zombie_owner_is_stale(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Wait for the exit without reaping: the child stays a zombie with its pid.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        path = tmp_path / "hosts"
        path.write_bytes(
            f"# BEGIN localmesh z pid={child.pid}\n127.0.0.1 z.localhost\n"
            "# END localmesh z\n".encode()
        )
        assert HostsFile(path, "dev").ensure(["z.localhost"]).stale_removed == ("z",)
    finally:
        child.wait()


def test_live_block_of_same_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    HostsFile(path, "dev", owner_pid=os.getppid()).ensure(["a.localhost"])
    before = path.read_bytes()
    with pytest.raises(HostsFileError, match=f"running process {os.getppid()}"):
        HostsFile(path, "dev").ensure(["a.localhost"])
    assert path.read_bytes() == before


def test_remove_only_touches_own_block(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(_other_live_block())
    hosts = HostsFile(path, "dev")
    assert hosts.remove() is False
    hosts.ensure(["a.localhost"])
    assert HostsFile(path, "dev", owner_pid=os.getppid()).remove() is False  # not its block
    assert hosts.remove() is True
    assert path.read_bytes() == _other_live_block()


def test_persistent_block_from_sudo_step_is_used_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    helper = HostsFile(path, "dev", owner_pid=999_999_999)
    assert helper.add_persistent(["a.localhost", "b.localhost"]).added == (
        "a.localhost",
        "b.localhost",
    )
    assert helper.add_persistent(["b.localhost"]).changed is False
    persistent = path.read_bytes()
    assert b"# BEGIN localmesh dev\n" in persistent  # no pid: never considered stale

    up = HostsFile(path, "dev")
    update = up.ensure(["a.localhost", "b.localhost"])
    assert (update.changed, update.already_resolved) == (False, ("a.localhost", "b.localhost"))
    assert up.remove() is False  # exit of `up` keeps the user's block
    assert path.read_bytes() == persistent
    # A new service extends the persistent block instead of taking it over.
    assert up.ensure(["a.localhost", "c.localhost"]).added == ("c.localhost",)
    [block] = up.blocks()
    assert (block.owner_pid, block.hosts) == (None, ("a.localhost", "b.localhost", "c.localhost"))

    assert helper.remove_persistent() is True
    assert path.read_bytes() == b"127.0.0.1 localhost\n"


def test_persistent_blocks_of_other_names_count_as_resolved(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(FRAGMENTS[-1])
    update = HostsFile(path, "dev").ensure(["kept.localhost"])
    assert (update.already_resolved, update.changed) == (("kept.localhost",), False)


def test_concurrent_meshes_do_not_lose_each_others_blocks(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    errors: list[BaseException] = []

    def churn(name: str) -> None:
        try:
            hosts = HostsFile(path, name)
            for i in range(30):
                hosts.ensure([f"{name}-{i % 3}.localhost"])
            hosts.ensure([f"{name}.localhost"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(n,)) for n in ("one", "two", "three")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    blocks = {b.name: b.hosts for b in HostsFile(path, "x").blocks()}
    assert blocks == {n: (f"{n}.localhost",) for n in ("one", "two", "three")}


@pytest.mark.parametrize("bad", ["", "two words", "has#hash", "tab\there", "x" * 254])
def test_invalid_hostnames_are_refused(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"")
    with pytest.raises(HostsFileError, match="invalid hostname"):
        HostsFile(path, "dev").ensure([bad])


def test_invalid_listener_address_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"")
    with pytest.raises(HostsFileError, match="invalid listener address 'localhost'"):
        HostsFile(path, "dev").ensure(["a.localhost"], address="localhost")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HostsFileError, match="does not exist"):
        HostsFile(tmp_path / "nope", "dev").ensure(["a.localhost"])


# -- real permission checks: an unprivileged child process ------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    import structlog
    from localmesh.errors import HostsFileError
    from localmesh.hosts import HostsFile
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    hosts = HostsFile(sys.argv[1], "dev", owner_pid=int(sys.argv[3]))
    try:
        if sys.argv[2] == "ensure":
            print(hosts.ensure(["a.localhost", "b.localhost"]).changed)
        else:
            print(hosts.remove())
    except HostsFileError as exc:
        print("ERROR:", exc)
    """
)


def _run_unprivileged(path: Path, action: str, owner_pid: int = 4_000_000) -> str:
    """Run a HostsFile operation where file permissions apply (root drops its override)."""
    cmd = [sys.executable, "-c", CHILD, str(path), action, str(owner_pid)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's permission override"
        drop = "-dac_override,-dac_read_search,-fowner,-linux_immutable"
        cmd = [setpriv, "--bounding-set", drop, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_unwritable_file_explains_the_sudo_step(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "hosts"
    path.write_bytes(b"127.0.0.1 localhost a.localhost\n")
    path.chmod(0o444)
    etc.chmod(0o555)
    try:
        out = _run_unprivileged(path, "ensure")
    finally:
        etc.chmod(0o755)
    assert out.startswith(f"ERROR: cannot write {path} (Permission denied)")
    assert "does not need to run as root" in out
    # Only the host that still needs an entry: a.localhost already resolves.
    assert (
        f"sudo {sys.executable} -m localmesh hosts add --name dev --hosts-file {path} b.localhost\n"
    ) in out
    assert "--no-edit-hosts" in out
    assert path.read_bytes() == b"127.0.0.1 localhost a.localhost\n"


def test_unwritable_file_on_remove_names_the_remove_command(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    HostsFile(path, "dev", owner_pid=os.getppid()).ensure(["a.localhost"])
    before = path.read_bytes()
    path.chmod(0o444)
    etc.chmod(0o555)
    try:
        nothing = _run_unprivileged(path, "remove")  # no block of its own: no write needed
        out = _run_unprivileged(path, "remove", owner_pid=os.getppid())
    finally:
        etc.chmod(0o755)
    assert nothing == "False\n"
    assert out.startswith(f"ERROR: cannot update {path} (Permission denied)")
    assert "to remove the localmesh block 'dev'" in out
    assert f"sudo {sys.executable} -m localmesh hosts remove --name dev --hosts-file {path}" in out
    assert path.read_bytes() == before


def test_writable_file_in_read_only_directory_is_rewritten_in_place(tmp_path: Path) -> None:
    # The bind-mount shape: /etc is not writable, the hosts file itself is.
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "hosts"
    path.write_bytes(b"127.0.0.1 localhost")
    path.chmod(0o666)
    etc.chmod(0o555)
    inode = path.stat().st_ino
    try:
        out = _run_unprivileged(path, "ensure")
    finally:
        etc.chmod(0o755)
    assert out == "True\n"
    assert path.stat().st_ino == inode
    assert path.read_bytes().endswith(
        b"127.0.0.1 b.localhost\n# END localmesh dev\n127.0.0.1 localhost"
    )


def test_unwritable_file_with_only_stale_blocks_to_clean_is_not_an_error(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "hosts"
    original = (
        f"127.0.0.1 localhost a.localhost b.localhost\n# BEGIN localmesh old pid={_dead_pid()}\n"
        "127.0.0.1 c.localhost\n# END localmesh old\n"
    ).encode()
    path.write_bytes(original)
    path.chmod(0o444)
    etc.chmod(0o555)
    try:
        out = _run_unprivileged(path, "ensure")
    finally:
        etc.chmod(0o755)
    assert out == "False\n"  # nothing needed; the stale block waits for a writable run
    assert path.read_bytes() == original


def test_read_only_file_in_writable_directory_is_not_replaced(tmp_path: Path) -> None:
    # The user's own 0444 file: a rename would succeed (the directory is writable) and
    # silently replace a file its owner marked read-only.
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    path.chmod(0o444)
    inode = path.stat().st_ino
    out = _run_unprivileged(path, "ensure")
    assert out.startswith(f"ERROR: cannot write {path} (Permission denied)")
    assert f"--hosts-file {path} a.localhost b.localhost" in out
    assert path.read_bytes() == b"127.0.0.1 localhost\n"
    assert path.stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == ["hosts"]


def test_directory_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(HostsFileError, match=rf"^hosts file {tmp_path} is not a regular file$"):
        HostsFile(tmp_path, "dev").ensure(["a.localhost"])
