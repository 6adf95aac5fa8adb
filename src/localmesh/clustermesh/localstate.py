"""What the `localmesh mesh` sessions of this machine are doing, for `localmesh status`.

`mesh` runs as its own process, apart from `up`, so it has no control socket `status` could
ask. Instead each session keeps one small JSON file in the user's runtime directory
(`<runtime base>/.mesh-sessions/<pid>.json`, directory 0700, file 0600), rewritten atomically
(temp file + rename) every few seconds and on state changes, and removed on exit. A file
whose process is gone (a crash, a kill -9) or that was not refreshed for a while is reported
as stale, never as a live session: `status` checks the pid and the file's age.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from localmesh.runtime import ensure_private_dir, pid_alive, process_start_ticks, runtime_base

# Starts with a dot: never taken for a mesh name by `runtime.running_names`.
SESSIONS_DIR = ".mesh-sessions"
REFRESH_SECONDS = 2.0
CHECK_SECONDS = 0.25
# A file not rewritten for this long belongs to a process that is stuck or gone.
STALE_AFTER_SECONDS = 30.0
STALE = "stale (process gone)"
# The tunnel states of a session that serves its marked requests: manual mode's, auto mode's.
HEALTHY_TUNNEL = ("connected", "connected, routed")


@dataclass(frozen=True)
class SessionState:
    """One published snapshot of a mesh session."""

    namespace: str
    service: str
    mark: str  # `key: value`, as curl -H takes it
    ports: list[str]  # `local:remote`
    tunnel: str  # TunnelClient.state
    served: int  # inbound connections carried to a local port
    failures: int  # inbound connections the local process refused
    pid: int
    start_ticks: int | None  # with pid, identifies the process across pid reuse
    updated_at: float  # unix time of the write


def sessions_dir(base: Path | None = None) -> Path:
    return (runtime_base() if base is None else base) / SESSIONS_DIR


def write_state(directory: Path, state: SessionState) -> Path:
    """Write `state` to `<directory>/<pid>.json` atomically: a reader sees the old file or
    the new one, never half of one."""
    ensure_private_dir(directory)
    path = directory / f"{state.pid}.json"
    tmp = directory / f".{state.pid}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(state), out)
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class SessionView:
    """A session as `status` shows it: its last state, and whether that is still true."""

    state: SessionState
    stale: bool

    @property
    def tunnel(self) -> str:
        return STALE if self.stale else self.state.tunnel

    @property
    def healthy(self) -> bool:
        """Marked requests are served on this machine now: the process is alive, the
        tunnel connected, the router routes the mark (auto mode) and no local port fails
        ("connected; local port N not answering": marked requests get a 503)."""
        head, sep, _ = self.state.tunnel.partition(";")
        return not self.stale and not sep and head in HEALTHY_TUNNEL

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self.state), "tunnel": self.tunnel, "stale": self.stale}


def _parse(data: Any) -> SessionState | None:
    try:
        return SessionState(
            namespace=str(data["namespace"]),
            service=str(data["service"]),
            mark=str(data["mark"]),
            ports=[str(p) for p in data["ports"]],
            tunnel=str(data["tunnel"]),
            served=int(data["served"]),
            failures=int(data["failures"]),
            pid=int(data["pid"]),
            start_ticks=None if data["start_ticks"] is None else int(data["start_ticks"]),
            updated_at=float(data["updated_at"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_sessions(
    directory: Path | None = None,
    *,
    now: float | None = None,
    stale_after: float = STALE_AFTER_SECONDS,
) -> list[SessionView]:
    """Every session file here, oldest pid first; unreadable files are skipped (a writer
    renames complete files into place, so a broken one is not ours)."""
    directory = sessions_dir() if directory is None else directory
    now = time.time() if now is None else now
    try:
        paths = sorted(directory.glob("[0-9]*.json"))
    except OSError:
        return []
    views = []
    for path in paths:
        try:
            state = _parse(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        if state is None:
            continue
        gone = not pid_alive(state.pid, state.start_ticks)
        views.append(SessionView(state, gone or now - state.updated_at > stale_after))
    return sorted(views, key=lambda v: (v.state.namespace, v.state.service, v.state.pid))


def render_sessions(views: list[SessionView]) -> str:
    """The `mesh sessions` block of `localmesh status`."""
    header = ["MESH SESSION", "MARK", "PORTS", "TUNNEL", "SERVED", "FAILED", "PID"]
    rows = [
        [
            f"{v.state.namespace}/{v.state.service}",
            v.state.mark,
            ",".join(v.state.ports),
            v.tunnel,
            str(v.state.served),
            str(v.state.failures),
            str(v.state.pid),
        ]
        for v in views
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


class StatePublisher:
    """Keeps this process's session file current while it runs; removes it on `stop`."""

    def __init__(self, snapshot: Callable[[], SessionState], directory: Path | None = None):
        self._snapshot = snapshot
        self._dir = sessions_dir() if directory is None else directory
        self._task: asyncio.Task[None] | None = None
        self._last: SessionState | None = None
        self._written = 0.0
        self._path = self._dir / f"{os.getpid()}.json"

    def start(self) -> None:
        self.publish()
        self._task = asyncio.create_task(self._loop())

    def publish(self) -> None:
        with contextlib.suppress(OSError):  # status is a convenience: never stop the mesh
            state = self._snapshot()
            self._path = write_state(self._dir, state)
            self._last = replace(state, updated_at=0.0)
            self._written = time.monotonic()

    async def _loop(self) -> None:
        # Look often, write on a change or every REFRESH_SECONDS (the liveness beat).
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            changed = replace(self._snapshot(), updated_at=0.0) != self._last
            if changed or time.monotonic() - self._written >= REFRESH_SECONDS:
                self.publish()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


def snapshot_of(
    namespace: str, service: str, mark: str, ports: list[str], client: Any
) -> Callable[[], SessionState]:
    """A snapshot function over a `TunnelClient` (its `state` and `stats`)."""
    pid = os.getpid()
    ticks = process_start_ticks(pid)

    def snapshot() -> SessionState:
        return SessionState(
            namespace=namespace,
            service=service,
            mark=mark,
            ports=ports,
            tunnel=str(client.state),
            served=int(client.stats.served),
            failures=int(client.stats.local_failures),
            pid=pid,
            start_ticks=ticks,
            updated_at=time.time(),
        )

    return snapshot
