"""The /etc/hosts block that makes services.yaml hostnames resolve to the local listener.

localmesh owns one marked block per mesh name and never touches any other byte:

    # BEGIN localmesh <name> pid=<pid> start=<ticks>
    127.0.0.1 billing-api.localhost
    # END localmesh <name>

* Placement: a new block goes at the top of the file, because glibc's files backend returns
  the first matching line; an existing block of the same name is rewritten where it is.
  Every line outside it (CRLF endings, a missing final newline, comments, tabs, non-UTF-8
  bytes, blocks of other names) is preserved byte for byte.
* Lifetime: `pid=` names the `up` process that owns the block; it is removed on exit. A block
  whose pid is dead was left by a crash and is removed by the next `ensure()` of any name.
  `start=` (the process start time, Linux) tells a reused pid apart: in containers pids are
  small and come back quickly, and a stranger holding the number must not keep a block.
  A block without `pid=` is persistent: written by `localmesh hosts add` (the one step a
  user runs with sudo when the file is not writable) and removed by `localmesh hosts remove`.
* Which hosts need an entry: only those the file does not already map to the listener's
  address (for a 0.0.0.0/:: listener, to any loopback address). This is decided from the
  file's content alone, on purpose: glibc does not resolve `*.localhost` to loopback (only
  systemd-resolved / nss-myhostname do, and only when configured), while curl does so on its
  own. Relying on the resolver would make grpcio and most other clients fail on some
  machines, so `*.localhost` names get an entry unless the file already has one. Entries in
  the live blocks of other meshes do not count: they vanish when that mesh stops.
* Writes are atomic: a temporary file in the same directory, fsync, rename. Inside
  containers /etc/hosts is usually a bind mount, where rename fails (EBUSY, EXDEV) or the
  directory is read-only; then the file is rewritten in place in one write, padded with a
  comment so that no reader ever sees a truncated line, then truncated to its final size.
* Concurrent writers (several meshes starting together) serialize on an flock of the file.

Use from `up`:

    hosts = HostsFile(args.hosts_file, args.name)
    hosts.ensure(config_hosts, address=listener_address)  # at start and on every reload
    ...
    hosts.remove()                                         # on exit

A HostsFileError from `ensure` carries the exact sudo command (`localmesh hosts add ...`)
that adds the entries once, so that `up` itself never needs root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import re
import shlex
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from localmesh.errors import HostsFileError
from localmesh.runtime import pid_alive, process_start_ticks

log = structlog.get_logger(__name__)

DEFAULT_HOSTS_FILE = Path("/etc/hosts")
BEGIN = "# BEGIN localmesh"
END = "# END localmesh"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOST_RE = re.compile(r"^[^\s#\x00-\x1f\x7f]{1,253}$")
# rename() over a bind-mounted file fails with these; a read-only /etc gives the others.
_RENAME_FALLBACK_ERRNOS = {errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES, errno.EROFS}
_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}

Rename = Callable[[str, str], None]


@dataclass(frozen=True)
class Block:
    """One `# BEGIN localmesh` ... `# END localmesh` block as found in the file."""

    name: str
    owner_pid: int | None  # None: persistent (added by `localmesh hosts add`)
    first_line: int  # index of the BEGIN line
    last_line: int  # index of the END line
    entries: tuple[tuple[str, str], ...]  # (address, host)
    owner_start: int | None = None  # start time of the owner, tells a reused pid apart

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(host for _, host in self.entries)


@dataclass(frozen=True)
class HostsUpdate:
    """What `ensure` did: `added` got an entry in our block, `already_resolved` needed none."""

    path: Path
    added: tuple[str, ...] = ()
    already_resolved: tuple[str, ...] = ()
    stale_removed: tuple[str, ...] = ()  # names of crashed meshes whose blocks were removed
    changed: bool = False


def _line_text(line: bytes) -> str:
    return line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")


def _parse_marker(text: str, prefix: str) -> list[str] | None:
    if not text.startswith(prefix + " "):
        return None
    words = text[len(prefix) :].split()
    return words or None


def _parse_entry(text: str) -> tuple[str, list[str]] | None:
    words = text.split("#", 1)[0].split()
    if len(words) < 2:
        return None
    try:
        address = str(ipaddress.ip_address(words[0].split("%", 1)[0]))
    except ValueError:
        return None
    return address, [w.lower() for w in words[1:]]


def parse_blocks(lines: list[bytes]) -> list[Block]:
    """The localmesh blocks in `lines`. A BEGIN without its END is not a block (a hand-edited
    file is left alone rather than cut off at an arbitrary point)."""
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        words = _parse_marker(_line_text(lines[index]), BEGIN)
        if words is None:
            index += 1
            continue
        name = words[0]
        pid: int | None = None
        start: int | None = None
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key == "pid" and value.isdigit():
                pid = int(value)
            elif key == "start" and value.isdigit():
                start = int(value)
        entries: list[tuple[str, str]] = []
        for end in range(index + 1, len(lines)):
            text = _line_text(lines[end])
            end_words = _parse_marker(text, END)
            if end_words is not None and end_words[0] == name:
                blocks.append(Block(name, pid, index, end, tuple(entries), start))
                index = end
                break
            parsed = _parse_entry(text)
            if parsed:
                entries.extend((parsed[0], host) for host in parsed[1])
        index += 1
    return blocks


def _covers(first_address: dict[tuple[str, int], str], host: str, address: str) -> bool:
    """Whether lookups of `host` already land on `address` (first match wins in glibc)."""
    target = ipaddress.ip_address(address)
    found = first_address.get((host.lower(), target.version))
    if found is None:
        return False
    if target.is_unspecified:
        return ipaddress.ip_address(found).is_loopback
    return ipaddress.ip_address(found) == target


class HostsFile:
    """The block of mesh `name` in the hosts file at `path`.

    `owner_pid` is recorded in the block (default: this process). `rename` is the seam the
    tests use to simulate a bind mount; it defaults to `os.replace`.
    """

    def __init__(
        self,
        path: Path | str = DEFAULT_HOSTS_FILE,
        name: str = "default",
        *,
        owner_pid: int | None = None,
        rename: Rename = os.replace,
        is_alive: Callable[[int, int | None], bool] = pid_alive,
    ) -> None:
        if not _NAME_RE.match(name):
            raise HostsFileError(f"invalid mesh name {name!r} for the hosts file block")
        self.path = Path(path)
        self.name = name
        self.owner_pid = os.getpid() if owner_pid is None else owner_pid
        self.owner_start = process_start_ticks(self.owner_pid)
        self._rename = rename
        self._is_alive = is_alive

    # -- public operations -------------------------------------------------------------

    def blocks(self) -> list[Block]:
        with self._locked() as content:
            return parse_blocks(content.splitlines(keepends=True))

    def ensure(self, hosts: Iterable[str], address: str = "127.0.0.1") -> HostsUpdate:
        """Make every host resolve to `address`: entries for those the file does not map yet,
        in this process's block. Also removes the blocks of crashed runs. Idempotent."""
        wanted = _checked_hosts(hosts)
        entry_address = _entry_address(address)
        with self._locked() as content:
            lines = content.splitlines(keepends=True)
            blocks = parse_blocks(lines)
            stale = [
                b
                for b in blocks
                if b.owner_pid is not None and not self._is_alive(b.owner_pid, b.owner_start)
            ]
            own = next((b for b in blocks if b.name == self.name and b not in stale), None)
            if own is not None and own.owner_pid is not None and own.owner_pid != self.owner_pid:
                raise HostsFileError(
                    f"{self.path} has a localmesh block named {self.name!r} owned by the "
                    f"running process {own.owner_pid}; stop it or use a different --name"
                )
            counted = [b for b in blocks if b.owner_pid is None]
            first = _first_addresses(lines, [b for b in blocks if b not in counted])
            needed = [h for h in wanted if not _covers(first, h, address)]
            resolved = tuple(h for h in wanted if h not in needed)
            if own is not None and own.owner_pid is None:
                # A persistent block is the user's: extend it, never turn it into ours.
                missing = [h for h in needed if h not in own.hosts]
                entries = own.entries + tuple((entry_address, h) for h in missing)
                new_block = self._render(lines, entries, persistent=True) if missing else None
                replace: Block | None = own if missing else None
            else:
                # Sorted: the same set of hosts always renders the same bytes.
                entries = tuple(sorted((entry_address, h) for h in needed))
                new_block = self._render(lines, entries, persistent=False) if entries else []
                replace = own
                missing = needed
            essential = _splice(lines, replace, new_block, drop=[])
            full = _splice(lines, replace, new_block, drop=stale)
            update = HostsUpdate(
                path=self.path,
                added=tuple(missing),
                already_resolved=resolved,
                stale_removed=tuple(b.name for b in stale),
                changed=full != content,
            )
            if full == content:
                return update
            try:
                self._write(full, hosts=missing)
            except HostsFileError:
                if essential != content:
                    raise
                log.warning(
                    "cannot remove stale localmesh blocks from the hosts file",
                    path=str(self.path),
                    names=[b.name for b in stale],
                )
                return HostsUpdate(self.path, (), resolved, (), False)
            for block in stale:
                log.info(
                    "removed hosts block of a crashed run", name=block.name, pid=block.owner_pid
                )
            return update

    def remove(self) -> bool:
        """Remove this process's block (on exit). Leaves persistent and others' blocks."""
        with self._locked() as content:
            lines = content.splitlines(keepends=True)
            own = [
                b
                for b in parse_blocks(lines)
                if b.name == self.name and b.owner_pid == self.owner_pid
            ]
            if not own:
                return False
            self._write(_splice(lines, None, None, drop=own), action="remove")
            return True

    def add_persistent(self, hosts: Iterable[str], address: str = "127.0.0.1") -> HostsUpdate:
        """`localmesh hosts add`: a block without owner pid, kept until `remove_persistent`.
        Extends an existing persistent block; replaces a stale or live block of the name."""
        wanted = _checked_hosts(hosts)
        entry_address = _entry_address(address)
        with self._locked() as content:
            lines = content.splitlines(keepends=True)
            own = next((b for b in parse_blocks(lines) if b.name == self.name), None)
            entries: tuple[tuple[str, str], ...] = ()
            if own is not None and own.owner_pid is None:
                entries = own.entries
            have = {h for _, h in entries}
            added = tuple(h for h in wanted if h not in have)
            entries += tuple((entry_address, h) for h in added)
            full = _splice(lines, own, self._render(lines, entries, persistent=True), drop=[])
            if full != content:
                self._write(full, hosts=wanted)
            return HostsUpdate(self.path, added, (), (), full != content)

    def remove_persistent(self) -> bool:
        """`localmesh hosts remove`: remove the block of this name, whoever wrote it."""
        with self._locked() as content:
            lines = content.splitlines(keepends=True)
            own = [b for b in parse_blocks(lines) if b.name == self.name]
            if not own:
                return False
            self._write(_splice(lines, None, None, drop=own), action="remove")
            return True

    def left_by_crash(self) -> Block | None:
        """The block of this name whose owner died without removing it, if any."""
        with self._locked() as content:
            blocks = parse_blocks(content.splitlines(keepends=True))
        for block in blocks:
            if block.name != self.name or block.owner_pid is None:
                continue
            if not self._is_alive(block.owner_pid, block.owner_start):
                return block
        return None

    def remove_command(self) -> str:
        """The command that removes this name's block: with sudo only where it is needed."""
        if os.access(self.path, os.W_OK):
            return self.sudo_command("remove").removeprefix("sudo ")
        return self.sudo_command("remove")

    def sudo_command(self, action: str, hosts: Iterable[str] = ()) -> str:
        """The exact command that performs `action` ("add" or "remove") with root rights."""
        cmd = [sys.executable, "-m", "localmesh", "hosts", action, "--name", self.name]
        if self.path != DEFAULT_HOSTS_FILE:
            cmd += ["--hosts-file", str(self.path)]
        cmd += list(hosts)
        return "sudo " + shlex.join(cmd)

    # -- internals ---------------------------------------------------------------------

    def _render(
        self, lines: list[bytes], entries: tuple[tuple[str, str], ...], *, persistent: bool
    ) -> list[bytes]:
        eol = b"\r\n" if lines and lines[0].endswith(b"\r\n") else b"\n"
        owner = ""
        if not persistent:
            owner = f" pid={self.owner_pid}"
            if self.owner_start is not None:
                owner += f" start={self.owner_start}"
        out = [f"{BEGIN} {self.name}{owner}".encode() + eol]
        out += [f"{addr} {host}".encode("utf-8", "surrogateescape") + eol for addr, host in entries]
        out.append(f"{END} {self.name}".encode() + eol)
        return out

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bytes]:
        """Hold an flock on the current hosts file and yield its content."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise HostsFileError(f"hosts file {self.path} does not exist") from None
            except OSError as exc:
                raise HostsFileError(f"cannot read hosts file {self.path}: {exc}") from exc
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise HostsFileError(f"hosts file {self.path} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A writer may have renamed a new file into place while we waited.
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except OSError:
                pass
            os.close(fd)
        try:
            with os.fdopen(os.dup(fd), "rb") as handle:
                content = handle.read()
            yield content
        finally:
            os.close(fd)

    def _write(self, content: bytes, *, action: str = "add", hosts: Iterable[str] = ()) -> None:
        target = Path(os.path.realpath(self.path))
        try:
            st = os.stat(target)
            # Rename would replace a file the user may not write (0444, even their own):
            # ask the kernel whether this process may write it, as an in-place write would.
            os.close(os.open(target, os.O_WRONLY | os.O_CLOEXEC))
            try:
                self._write_atomic(target, content, st)
                return
            except _FallBackInPlace as fallback:
                log.debug("rewriting hosts file in place", path=str(target), reason=str(fallback))
            _write_in_place(target, content)
        except OSError as exc:
            if exc.errno in _PERMISSION_ERRNOS:
                raise HostsFileError(self._not_writable_message(exc, action, hosts)) from None
            raise HostsFileError(f"cannot write hosts file {self.path}: {exc}") from exc

    def _write_atomic(self, target: Path, content: bytes, st: os.stat_result) -> None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".localmesh-hosts-", dir=target.parent)
        except OSError as exc:
            if exc.errno in _RENAME_FALLBACK_ERRNOS:
                raise _FallBackInPlace(f"cannot create a temporary file: {exc}") from exc
            raise
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fchmod(handle.fileno(), stat.S_IMODE(st.st_mode))
                if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    try:
                        os.fchown(handle.fileno(), st.st_uid, st.st_gid)
                    except PermissionError as exc:  # keeping the owner beats atomicity
                        raise _FallBackInPlace(f"cannot keep the file owner: {exc}") from exc
                os.fsync(handle.fileno())
            try:
                self._rename(tmp, str(target))
            except OSError as exc:
                if exc.errno in _RENAME_FALLBACK_ERRNOS:
                    raise _FallBackInPlace(f"rename failed (bind mount?): {exc}") from exc
                raise
            tmp = ""
            _fsync_dir(target.parent)
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _not_writable_message(self, exc: OSError, action: str, hosts: Iterable[str]) -> str:
        reason = exc.strerror or str(exc)
        if action == "remove":
            return (
                f"cannot update {self.path} ({reason}) to remove the localmesh block "
                f"{self.name!r}; remove it with:\n  {self.sudo_command('remove')}"
            )
        return (
            f"cannot write {self.path} ({reason}). localmesh does not need to run as root; "
            "either add the host entries once with sudo (they stay until "
            f"`localmesh hosts remove --name {self.name}`):\n"
            f"  {self.sudo_command('add', hosts)}\n"
            "or start with --no-edit-hosts (curl resolves *.localhost by itself; other "
            "clients then need the hosts added some other way)"
        )


class _FallBackInPlace(Exception):
    """The atomic rename path is unavailable here; rewrite the file in place instead."""


def _write_in_place(target: Path, content: bytes) -> None:
    """Rewrite `target` without replacing its inode, never exposing a truncated line.

    One write puts the new content at offset 0; when it is shorter than the old content the
    rest is overwritten in the same write by a comment, so a crash or a concurrent reader
    sees complete lines, then the file is cut to size."""
    fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
    try:
        old_size = os.fstat(fd).st_size
        data = content
        if len(content) < old_size:
            pad = old_size - len(content)
            data = content + b"\n" + b"#" * (pad - 1)
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            offset += os.pwrite(fd, view[offset:], offset)
        os.fsync(fd)
        if len(data) != len(content):
            os.ftruncate(fd, len(content))
            os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _first_addresses(lines: list[bytes], skip: list[Block]) -> dict[tuple[str, int], str]:
    """host -> first address per IP version, from every line outside the `skip` blocks."""
    skipped = {i for b in skip for i in range(b.first_line, b.last_line + 1)}
    first: dict[tuple[str, int], str] = {}
    for index, line in enumerate(lines):
        if index in skipped:
            continue
        parsed = _parse_entry(_line_text(line))
        if parsed is None:
            continue
        version = ipaddress.ip_address(parsed[0]).version
        for host in parsed[1]:
            first.setdefault((host, version), parsed[0])
    return first


def _splice(
    lines: list[bytes], replace: Block | None, block: list[bytes] | None, drop: list[Block]
) -> bytes:
    """`lines` with `replace` swapped for `block` (or `block` on top when there is nothing
    to replace) and the `drop` blocks removed. `block=None` means no change to `replace`;
    an empty list removes it."""
    removed = {i for b in drop for i in range(b.first_line, b.last_line + 1)}
    out: list[bytes] = []
    if block and replace is None:
        out.extend(block)
    for index, line in enumerate(lines):
        if replace is not None and block is not None:
            if index == replace.first_line:
                out.extend(block)
            if replace.first_line <= index <= replace.last_line:
                continue
        if index not in removed:
            out.append(line)
    return b"".join(out)


def _checked_hosts(hosts: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for host in hosts:
        if not _HOST_RE.match(host):
            raise HostsFileError(f"invalid hostname {host!r} for the hosts file")
        seen.setdefault(host.lower(), None)
    return list(seen)


def _entry_address(address: str) -> str:
    """The address to write for a listener on `address`: a wildcard listener (0.0.0.0, ::)
    is reached through loopback."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise HostsFileError(f"invalid listener address {address!r} for the hosts file") from None
    if parsed.is_unspecified:
        return "127.0.0.1" if parsed.version == 4 else "::1"
    return str(parsed)


def crash_hint(hosts_file: Path, name: str) -> str | None:
    """What to say when mesh `name` is not running but its hosts block is still there (the
    run crashed): where the block is and the command that removes it."""
    try:
        hosts = HostsFile(hosts_file, name)
        block = hosts.left_by_crash()
    except HostsFileError:
        return None
    if block is None:
        return None
    return (
        f"{hosts_file} still has the hosts block of {name!r} left by a run that ended "
        f"without clean-up (pid {block.owner_pid}); the next `localmesh up --name {name}` "
        f"removes it, or now:\n  {hosts.remove_command()}"
    )
