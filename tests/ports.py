"""Ports for servers a test starts later (Envoy's listener, `up --port`, a tunnel): the one
`free_port` every test helper uses.

Binding port 0, closing, and handing the number over is racy: the kernel hands the same
number to the next `bind(0)` or outgoing connection of any process (five test suites share
this machine), and Envoy then fails with "Address already in use". So a port is chosen
OUTSIDE the kernel's ephemeral range (/proc/sys/net/ipv4/ip_local_port_range), where only
an explicit bind can take it, and reserved for the life of this process by a lock file
that every test process honours, and by this process's own set. What remains possible is
a process outside the tests binding that very number on purpose.

    free_port(host="127.0.0.1") -> int
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path
from typing import IO

_LOCKS = Path(tempfile.gettempdir()) / f"localmesh-test-ports-{os.getuid()}"
_held: dict[int, IO[bytes]] = {}  # port -> its open, locked file: released at exit
_mutex = threading.Lock()
_FLOOR = 10000  # below: well-known services and ports users pick by hand
# Locks held at once: the oldest goes first (its server bound the port long ago).
_MAX_HELD = 128


def _candidates() -> range:
    """The widest stretch of ports outside the kernel's ephemeral range."""
    low, high = 32768, 60999
    with contextlib.suppress(OSError, ValueError):
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        low, high = int(text[0]), int(text[1])
    below, above = range(_FLOOR, max(low, _FLOOR)), range(high + 1, 65536)
    return below if len(below) >= len(above) else above


def _reserve(port: int) -> bool:
    """Take the cross-process lock of `port`; False if another process holds it."""
    _LOCKS.mkdir(mode=0o700, exist_ok=True)
    handle = (_LOCKS / str(port)).open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False
    _held[port] = handle
    while len(_held) > _MAX_HELD:
        _held.pop(next(iter(_held))).close()
    return True


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As servers bind (Envoy, asyncio): a port in TIME_WAIT is usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` nobody listens on, reserved for this process: bind it later."""
    ports = _candidates()
    with _mutex:
        for _ in range(500):
            port = random.choice(ports)
            if port in _held or not _reserve(port):
                continue
            if _bindable(host, port):
                return port
            # Busy for another reason: keep the lock so this process does not retry it.
    raise RuntimeError(f"no free port on {host} outside the ephemeral range {ports}")


__all__ = ["free_port"]
