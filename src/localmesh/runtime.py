"""The per-user runtime directory of one mesh: sockets, Envoy bootstrap, the instance lock.

Layout: `$XDG_RUNTIME_DIR/localmesh/<name>/`, else `/run/user/<uid>/localmesh/<name>/`,
else `/tmp/localmesh-<uid>/<name>/`. Every directory is created 0700 and must be owned by the
user (a directory someone else pre-created in /tmp is refused, not used). Under sudo the
"user" is the invoking one (SUDO_UID), so that `localmesh status` without sudo finds the
instance that `sudo localmesh up` started.

`InstanceLock` makes `up --name X` exclusive: it holds an flock on `<dir>/localmesh.pid`
for the life of the process. The kernel drops the lock when the process dies, so a lock left
by a crashed run is simply taken over; the pid written inside only serves the error message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog

from localmesh.errors import AlreadyRunningError, RuntimeDirError

log = structlog.get_logger(__name__)

DEFAULT_NAME = "default"
# Envoy's admin API: a unix socket (mode 0600) in the runtime directory, never TCP.
ENVOY_ADMIN_SOCKET = "admin.sock"
ENVOY_ADMIN_SOCKET_MODE = 0o600
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def validate_name(name: str) -> str:
    """A mesh name is a path component and a word in /etc/hosts markers: keep it plain."""
    if not _NAME_RE.match(name):
        raise RuntimeDirError(
            f"invalid --name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class InvokingUser:
    """The human behind the process: the sudo caller when run under sudo, else ourselves."""

    uid: int
    gid: int
    name: str
    home: Path
    via_sudo: bool


def invoking_user(env: Mapping[str, str] | None = None, *, euid: int | None = None) -> InvokingUser:
    """Who started us. Under `sudo` (euid 0 with SUDO_UID set) this is the sudo caller, whose
    home holds the kubeconfig `up` must use (root's ~/.kube is the wrong cluster, or none)."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    sudo_uid = env.get("SUDO_UID")
    if euid == 0 and sudo_uid and sudo_uid.isdigit() and int(sudo_uid) != 0:
        uid = int(sudo_uid)
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            gid = int(env.get("SUDO_GID", "0") or 0)
            return InvokingUser(uid, gid, env.get("SUDO_USER", str(uid)), Path("/"), True)
        return InvokingUser(uid, entry.pw_gid, entry.pw_name, Path(entry.pw_dir), True)
    uid = euid
    try:
        entry = pwd.getpwuid(uid)
        home = Path(env.get("HOME") or entry.pw_dir)
        return InvokingUser(uid, entry.pw_gid, entry.pw_name, home, False)
    except KeyError:  # containers running as an arbitrary uid have no passwd entry
        return InvokingUser(uid, os.getegid(), str(uid), Path(env.get("HOME", "/")), False)


def invoking_user_home(env: Mapping[str, str] | None = None) -> Path:
    """Home directory of the invoking user (see `invoking_user`); `up` reads its kubeconfig
    from there (`<home>/.kube/config`) unless --kubeconfig or KUBECONFIG says otherwise."""
    return invoking_user(env).home


def runtime_base(
    env: Mapping[str, str] | None = None,
    uid: int | None = None,
    *,
    run_user: Path = Path("/run/user"),
) -> Path:
    """The directory holding every mesh of this user (not created here).

    $XDG_RUNTIME_DIR if it belongs to the user, else systemd's /run/user/<uid> (sudo drops
    XDG_RUNTIME_DIR, and `sudo localmesh up` must land where a plain `localmesh status`
    looks), else /tmp/localmesh-<uid>."""
    env = os.environ if env is None else env
    if uid is None:
        uid = invoking_user(env).uid
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and _owned_by(Path(xdg), uid):
        return Path(xdg) / "localmesh"
    if _owned_by(run_user / str(uid), uid):
        return run_user / str(uid) / "localmesh"
    return Path("/tmp") / f"localmesh-{uid}"


def _owned_by(path: Path, uid: int) -> bool:
    try:
        return path.stat().st_uid == uid
    except OSError:
        return False


@dataclass(frozen=True)
class RuntimePaths:
    """Where one mesh keeps its runtime files. Pure: computing paths touches nothing."""

    name: str
    root: Path

    @property
    def xds_socket(self) -> Path:
        return self.root / "xds.sock"

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def envoy_bootstrap(self) -> Path:
        return self.root / "envoy-bootstrap.json"

    @property
    def envoy_admin_address(self) -> Path:
        """Where Envoy writes its admin address (`--admin-address-path`)."""
        return self.root / "envoy-admin-address"

    @property
    def envoy_admin_socket(self) -> Path:
        """Envoy's admin API (stats, health, listener state); only this user can connect."""
        return self.root / ENVOY_ADMIN_SOCKET

    @property
    def lock_file(self) -> Path:
        return self.root / "localmesh.pid"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def owned_files(self) -> tuple[Path, ...]:
        """Files `up` creates here and removes on exit (the lock file last)."""
        return (
            self.xds_socket,
            self.control_socket,
            self.envoy_bootstrap,
            self.envoy_admin_address,
            self.envoy_admin_socket,
            self.state_file,
            self.lock_file,
        )


def runtime_paths(
    name: str = DEFAULT_NAME,
    *,
    base: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> RuntimePaths:
    validate_name(name)
    return RuntimePaths(name=name, root=(base or runtime_base(env)) / name)


def ensure_private_dir(path: Path, uid: int | None = None) -> None:
    """Create `path` (and missing parents) 0700 and verify it is a real directory owned by
    `uid` with no group/other access. Refuses, rather than repairs, anything else."""
    uid = os.geteuid() if uid is None else uid
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # raced with another process; verified below
        except OSError as exc:
            raise RuntimeDirError(f"cannot create runtime directory {directory}: {exc}") from exc
        if os.geteuid() == 0 and uid != 0:
            os.chown(directory, uid, -1)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise RuntimeDirError(f"cannot use runtime directory {path}: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {path} is not a directory (or is a symlink)")
    if st.st_uid != uid:
        raise RuntimeDirError(
            f"runtime directory {path} is owned by uid {st.st_uid}, not {uid}; "
            f"remove it (it may have been created by someone else) or set XDG_RUNTIME_DIR"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise RuntimeDirError(
            f"runtime directory {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
            f"it must be private: chmod 700 {path}"
        )


def prepare(paths: RuntimePaths, uid: int | None = None) -> RuntimePaths:
    """Create the runtime directory of `paths` (private, verified) and return `paths`."""
    if uid is None:
        uid = invoking_user().uid
    ensure_private_dir(paths.root.parent, uid)
    ensure_private_dir(paths.root, uid)
    return paths


def read_owner_pid(paths: RuntimePaths) -> int | None:
    """The pid written in the lock file, if any (only meaningful while the lock is held)."""
    try:
        text = paths.lock_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def already_running(paths: RuntimePaths, pid: int | None) -> AlreadyRunningError:
    """The error of an `up` whose --name another `up` holds."""
    who = f" (pid {pid})" if pid else ""
    return AlreadyRunningError(
        f"a localmesh instance named {paths.name!r} is already running{who}; "
        f"stop it with `localmesh down --name {paths.name}` "
        "or start this one with a different --name"
    )


def lock_holder(paths: RuntimePaths) -> int | None:
    """The pid of the `up` holding this mesh's lock (0 if it wrote none yet), or None when
    the lock is free. Probes without taking over or removing anything."""
    try:
        fd = os.open(paths.lock_file, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        return read_owner_pid(paths) or 0
    finally:
        os.close(fd)  # also drops the probe's own lock, if it got one
    return None


def running_names(base: Path | None = None) -> list[str]:
    """Names of the meshes of this user whose `up` process is alive (from the pid files;
    never touches the locks, so it cannot disturb an `up` that is starting)."""
    base = runtime_base() if base is None else base
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    names = []
    for entry in entries:
        if not _NAME_RE.match(entry.name):
            continue
        pid = read_owner_pid(RuntimePaths(entry.name, entry))
        if pid is not None and pid_alive(pid):
            names.append(entry.name)
    return names


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards); None without
    /proc (not Linux) or when the process is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data.rsplit(")", 1)[1].split()


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22): with
    the pid it identifies a process even after the pid number is reused."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether process `pid` runs (a zombie counts as dead) and, when `start_ticks` is
    given, is still the same process rather than a new one that got the number."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc here: existence is all we can tell
    if fields[0] == "Z":
        return False
    return start_ticks is None or process_start_ticks(pid) == start_ticks


class InstanceLock:
    """Exclusive ownership of one mesh name for the life of this process.

    Use as a context manager or call `acquire()` / `release()`. `release()` also removes the
    runtime files listed by `RuntimePaths.owned_files` and the directory if it is empty.
    """

    def __init__(self, paths: RuntimePaths, *, uid: int | None = None) -> None:
        self.paths = paths
        self._uid = uid
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> InstanceLock:
        if self._fd is not None:
            return self
        prepare(self.paths, self._uid)
        path = self.paths.lock_file
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise RuntimeDirError(f"cannot lock {path}: {exc}") from exc
                raise already_running(self.paths, read_owner_pid(self.paths)) from None
            # The previous owner may have unlinked the file between our open and flock: a
            # lock on an unlinked inode protects nothing, so start over on the new file.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = read_owner_pid(self.paths)
        if stale and stale != os.getpid():
            log.info("taking over stale instance lock", name=self.paths.name, dead_pid=stale)
            # Leftover sockets of the dead run would make bind() fail.
            paths = self.paths
            for leftover in (paths.xds_socket, paths.control_socket, paths.envoy_admin_socket):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove this instance's runtime files, then drop the lock. Idempotent."""
        if self._fd is None:
            return
        for path in self.paths.owned_files():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.paths.root.rmdir()  # only if empty: files we don't know about stay
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
