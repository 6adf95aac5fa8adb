"""Ports for servers a test starts later (Envoy's listener, `up --port`, a tunnel): the one
`free_port` every test helper uses.

Binding port 0, closing, and handing the number over is racy: the kernel hands the same
number to the next `bind(0)` or outgoing connection of any process (several test suites
share this machine), and Envoy then fails with "Address already in use". So the port comes
from localmesh.ports (outside the kernel's ephemeral range, where only an explicit bind
can take it) and is reserved for the life of this process by a lock file that every test
process honours, and by this process's own set. What remains possible is a process
outside the tests binding that very number on purpose.

    free_port(host="127.0.0.1") -> int
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from pathlib import Path
from typing import IO

from localmesh import ports

_LOCKS = Path(tempfile.gettempdir()) / f"localmesh-test-ports-{os.getuid()}"
_held: dict[int, IO[bytes]] = {}  # port -> its open, locked file: released at exit
_mutex = threading.Lock()
# Locks held at once: the oldest goes first (its server bound the port long ago).
_MAX_HELD = 128


def _claim(port: int) -> bool:
    """Take the cross-process lock of `port`; False if this or another process holds it."""
    if port in _held:
        return False
    _LOCKS.mkdir(mode=0o700, exist_ok=True)
    handle = (_LOCKS / str(port)).open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False
    # Kept even when the port turns out busy: this process does not try it again.
    _held[port] = handle
    while len(_held) > _MAX_HELD:
        _held.pop(next(iter(_held))).close()
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` nobody listens on, reserved for this process: bind it later."""
    with _mutex:
        return ports.free_port(host, claim=_claim)


__all__ = ["free_port"]
