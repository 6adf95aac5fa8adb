"""Saves of one file, as inotify reports them on the event loop: nothing wakes while the
file is untouched (a polling watcher woke 100 times a second for `up --watch`)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from asyncinotify import Inotify, Mask

from localmesh.errors import LocalmeshError

# A save is complete once the file saw no event for this long: an editor's write + rename
# takes microseconds, and each millisecond here is one of an edit's latency.
QUIET = 0.010
MAX_DELAY = 0.1  # however busy the file, a save is reported after at most this long
EVENTS = (
    Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.CREATE | Mask.DELETE | Mask.ATTRIB
)


class SaveWatch:
    """`SaveWatch(path)` watches from its creation on; `await saves.next()` returns once per
    save of `path` (a burst of events counts once). Close it, or use it in `with`."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        try:
            self._inotify = Inotify()
        except (AttributeError, OSError) as exc:  # no inotify: not Linux, or no descriptors
            raise LocalmeshError(f"--watch needs inotify, which is not available: {exc}") from exc
        try:
            # The directory, not the file: editors save by writing a new file and renaming
            # it over, and the file may go away and come back.
            self._inotify.add_watch(self.path.parent, EVENTS)
        except BaseException:
            self._inotify.close()
            raise
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._inotify.close()

    def __enter__(self) -> SaveWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def next(self) -> None:
        """Until the next save of the file is complete."""
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
                        return

    async def _ours(self) -> bool:
        event = await self._inotify.get()
        return event.path is not None and event.path.name == self.path.name
