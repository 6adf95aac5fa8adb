"""`localmesh status --watch`: the hosts table and this machine's `localmesh mesh` sessions,
refreshed until Ctrl-C. With no `up` running, the mesh sessions alone (as `status` shows
them), if there are any.

On a terminal each refresh redraws the screen in place; anywhere else (a pipe, a file, a
CI log) each refresh is printed as a block of its own after a blank line, so a reader sees
every one. Ctrl-C (or SIGTERM) ends it cleanly with exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO

from localmesh.clustermesh.localstate import SessionView, read_sessions, render_sessions
from localmesh.control import ControlClient, InstanceStatus
from localmesh.errors import ControlError

CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, erase the screen
DEFAULT_INTERVAL = 2.0


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def render_watch_block(
    status: InstanceStatus,
    *,
    now: datetime,
    interval: float,
    sessions: Sequence[SessionView] = (),
) -> str:
    """One refresh: the state, one line per host (live pods, req/s and failed requests
    over the recent window), then why it is not healthy, if it is not; then the mesh
    sessions, as `status` shows them."""
    state = {"unhealthy": "UNHEALTHY", "degraded": "DEGRADED"}.get(status.state, "healthy")
    window = status.recent_seconds
    lines = [
        f"localmesh {status.name!r} (pid {status.pid}): {state}   {now:%H:%M:%S}   "
        f"every {interval:g}s, Ctrl-C to stop"
    ]
    rows = [["HOST", "PODS", "REQ/S", f"ERRORS ({window:.0f}s)" if window else "ERRORS"]]
    for host in status.hosts:
        pods = "local" if host.local else f"{len(host.live_pods)}/{len(host.pods)}"
        rate = f"{host.recent_requests / window:.1f}" if window else "-"
        rows.append([host.host, pods, rate, str(host.recent_failures) if window else "-"])
    lines.extend(_table(rows) if status.hosts else ["no hosts configured"])
    lines.extend(f"! {p}" for p in status.problems())
    lines.extend(f"~ {p}" for p in status.degraded())
    if sessions:
        lines += ["", render_sessions(list(sessions))]
    return "\n".join(lines) + "\n"


def render_sessions_block(
    name: str,
    error: ControlError,
    sessions: Sequence[SessionView],
    *,
    now: datetime,
    interval: float,
) -> str:
    """One refresh with no `up` running: why, then the mesh sessions."""
    why = str(error).splitlines()[0] if str(error) else "not running"
    head = f"localmesh {name!r}: {why}   {now:%H:%M:%S}   every {interval:g}s, Ctrl-C to stop"
    return f"{head}\n\n{render_sessions(list(sessions))}\n"


async def watch_status(
    name: str, interval: float = DEFAULT_INTERVAL, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    in_place = out.isatty()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with ControlClient.for_name(name) as client:
            first = True
            while not stop.is_set():
                now = datetime.now().astimezone()
                sessions = read_sessions()
                try:
                    status = await client.status()
                except ControlError as exc:
                    if not sessions:
                        raise
                    block = render_sessions_block(name, exc, sessions, now=now, interval=interval)
                else:
                    block = render_watch_block(
                        status, now=now, interval=interval, sessions=sessions
                    )
                if in_place:
                    out.write(CLEAR_SCREEN + block)
                else:
                    out.write(block if first else "\n" + block)
                out.flush()
                first = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)  # the refresh interval
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
