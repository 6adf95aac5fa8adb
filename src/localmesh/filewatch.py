"""Saves of one file, reported on the event loop, for `up --watch`.

    with SaveWatch(path) as saves:   # watching from here on: early saves are queued
        await saves.next()           # once per save (a burst of events counts once)

Two backends behind that one interface, picked by platform:
- `inotify` (Linux): the kernel's events straight on the event loop; nothing wakes while
  the file is untouched.
- `watchfiles` (macOS, the BSDs, anything else): the Rust notify library (FSEvents on
  macOS, kqueue on the BSDs) in a helper thread, which checks for news every STEP_MS.
  It runs on Linux too (over inotify), which is how CI tests it.
`SaveWatch(path, backend=...)` or LOCALMESH_WATCH_BACKEND picks one by name instead.

A services.yaml that is a symlink (or lies under a symlinked directory, as ConfigMap
mounts do) is followed across swaps (`ln -sfn v2.yaml services.yaml`): every link on the
way to the file is watched, and the chain is walked again after each save.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from localmesh.errors import LocalmeshError

if TYPE_CHECKING:
    from asyncinotify import Inotify

BACKEND_ENV_VAR = "LOCALMESH_WATCH_BACKEND"
# A save is complete once the file saw no event for this long: an editor's write + rename
# takes microseconds, and each millisecond here is one of an edit's latency.
QUIET = 0.010
MAX_DELAY = 0.1  # however busy the file, a save is reported after at most this long
# The watchfiles backend's thread sleeps this long between looks (and then holds the GIL
# for a moment): its latency floor and its idle cost, 40 short wake-ups a second.
STEP_MS = 25


MAX_LINKS = 40  # as the kernel's own limit on symlinks in one lookup

WatchPoint = tuple[Path, str]  # (directory, name in it) whose changes are saves


def watch_points(path: Path) -> frozenset[WatchPoint]:
    """The (directory, name) pairs whose change changes what `path` reads: the path's own
    entry, each symlink it goes through (the file itself or a directory on the way), and
    the entry each link leads to, up to the real file."""
    points: set[WatchPoint] = set()
    current = Path(os.path.abspath(path))
    for _ in range(MAX_LINKS):
        parent = current.parent
        for ancestor in (parent, *parent.parents):
            if ancestor.is_symlink():
                points.add((ancestor.parent.resolve(), ancestor.name))
        points.add((parent.resolve(), current.name))
        if not current.is_symlink():
            break
        try:
            current = parent.resolve() / os.readlink(current)
        except OSError:  # swapped away while we looked: the next save walks it again
            break
    return frozenset(points)


def default_backend(platform: str | None = None) -> str:
    """inotify on Linux, watchfiles elsewhere; LOCALMESH_WATCH_BACKEND overrides."""
    chosen = os.environ.get(BACKEND_ENV_VAR)
    if chosen:
        return chosen
    platform = sys.platform if platform is None else platform
    return "inotify" if platform.startswith("linux") else "watchfiles"


class SaveWatch:
    """`SaveWatch(path)` watches from its creation on; `await saves.next()` returns once per
    save of `path`. Close it, or use it in `with`. Constructing `SaveWatch` itself gives the
    platform's backend (a subclass); `backend` names one instead."""

    name: ClassVar[str]

    def __new__(cls, path: Path, *, backend: str | None = None) -> SaveWatch:
        if cls is not SaveWatch:
            return super().__new__(cls)
        chosen = backend or default_backend()
        if chosen not in BACKENDS:
            raise LocalmeshError(
                f"unknown file watch backend {chosen!r} (from {BACKEND_ENV_VAR}?): "
                f"use one of {', '.join(BACKENDS)}"
            )
        return super().__new__(BACKENDS[chosen])

    def __init__(self, path: Path, *, backend: str | None = None) -> None:
        self.path = Path(os.path.abspath(path))  # not resolved: links are followed anew
        self.points = watch_points(self.path)
        self._closed = False

    @property
    def directories(self) -> frozenset[Path]:
        return frozenset(directory for directory, _ in self.points)

    def _rewalk(self) -> None:
        """After a save: the links may lead elsewhere now."""
        self.points = watch_points(self.path)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> SaveWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def next(self) -> None:
        """Until the next save of the file is complete."""
        raise NotImplementedError


class InotifySaveWatch(SaveWatch):
    name = "inotify"

    def __init__(self, path: Path, *, backend: str | None = None) -> None:
        super().__init__(path)
        try:
            from asyncinotify import Inotify, Mask

            self._inotify: Inotify = Inotify()
        except (ImportError, AttributeError, OSError) as exc:  # not Linux, or no descriptors
            raise LocalmeshError(
                f"--watch needs inotify, which is not available: {exc} "
                f"(set {BACKEND_ENV_VAR}=watchfiles to use the portable watcher)"
            ) from exc
        events = (
            Mask.CLOSE_WRITE
            | Mask.MOVED_TO
            | Mask.MOVED_FROM
            | Mask.CREATE
            | Mask.DELETE
            | Mask.ATTRIB
        )
        self._events = events
        self._watches: dict[Path, Any] = {}
        try:
            # Directories, not the file: editors save by writing a new file and renaming
            # it over, and the file may go away and come back.
            self._watch_directories()
        except BaseException:
            self._inotify.close()
            raise

    def _watch_directories(self) -> None:
        wanted = self.directories
        for directory in wanted - self._watches.keys():
            try:
                self._watches[directory] = self._inotify.add_watch(directory, self._events)
            except FileNotFoundError:
                if directory == self.path.parent.resolve():
                    raise
        for directory in self._watches.keys() - wanted:
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(self._watches.pop(directory))

    def close(self) -> None:
        if not self._closed:
            super().close()
            self._inotify.close()

    async def next(self) -> None:
        while not await self._ours():
            pass
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MAX_DELAY):
                while True:
                    try:
                        async with asyncio.timeout(QUIET):
                            while not await self._ours():
                                pass
                    except TimeoutError:
                        break
        self._rewalk()
        self._watch_directories()

    async def _ours(self) -> bool:
        event = await self._inotify.get()
        if event.watch is None or event.name is None:
            return False
        return (event.watch.path, str(event.name)) in self.points


class WatchfilesSaveWatch(SaveWatch):
    name = "watchfiles"

    def __init__(self, path: Path, *, backend: str | None = None) -> None:
        super().__init__(path)
        from watchfiles._rust_notify import RustNotify

        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"no such directory: {self.path.parent}")
        self._rust_notify = RustNotify
        # Directories, not the file (see InotifySaveWatch); it starts watching here.
        self._watched = self._existing_directories()
        self._notify = self._new_notify()
        self._stop = threading.Event()
        # One watch() runs at a time, in a thread; a cancelled next() leaves it running
        # and the following next() picks its answer up.
        self._pending: asyncio.Future[Any] | None = None

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._stop.set()  # the thread returns within STEP_MS
        pending = self._pending
        if pending is None or pending.done():
            self._notify.close()
        else:
            pending.add_done_callback(lambda _: self._notify.close())

    async def next(self) -> None:
        while True:
            if self._closed:
                raise LocalmeshError(f"the watch of {self.path} is closed")
            if self._pending is None:
                self._pending = asyncio.ensure_future(
                    asyncio.to_thread(
                        self._notify.watch, round(MAX_DELAY * 1000), STEP_MS, 0, self._stop
                    )
                )
            changes = await asyncio.shield(self._pending)
            self._pending = None
            if isinstance(changes, set) and any(
                (Path(changed).parent, Path(changed).name) in self.points for _, changed in changes
            ):
                self._rewalk()
                if self._existing_directories() != self._watched:
                    # No watch() runs now: the links lead elsewhere, watch there instead.
                    self._notify.close()
                    self._watched = self._existing_directories()
                    self._notify = self._new_notify()
                return

    def _existing_directories(self) -> frozenset[Path]:
        return frozenset(d for d in self.directories if d.is_dir())

    def _new_notify(self) -> Any:
        paths = sorted(str(d) for d in self._watched)
        return self._rust_notify(paths, False, False, 300, False, False)


BACKENDS: dict[str, type[SaveWatch]] = {
    backend.name: backend for backend in (InotifySaveWatch, WatchfilesSaveWatch)
}
