"""A listening port for a server that binds it later (the demo's Envoy listener).

A port from `bind(port 0)` lies in the kernel's ephemeral range: once the probe socket is
closed, the next `bind(0)` or outgoing connection of any process may take it before the
server binds ("Address already in use"). A port outside that range is only ever taken by
an explicit bind, so it is the one to hand over.

    outside_ephemeral_range() -> range
    free_port(host="127.0.0.1", *, claim=None) -> int
        claim(port) -> bool: an extra reservation a caller holds (tests: a lock file
        shared by concurrent test processes); a port it refuses is skipped
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Callable
from pathlib import Path

FLOOR = 10000  # below: well-known services and the ports users pick by hand


def outside_ephemeral_range() -> range:
    """The wider stretch of ports outside /proc/sys/net/ipv4/ip_local_port_range."""
    low, high = 32768, 60999  # Linux's default
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        low, high = int(text[0]), int(text[1])
    below, above = range(FLOOR, max(low, FLOOR)), range(high + 1, 65536)
    return below if len(below) >= len(above) else above


def bindable(host: str, port: int) -> bool:
    """Nobody on this machine holds host:port (another process, another sandbox)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As servers bind (Envoy, asyncio): a port in TIME_WAIT is usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, claim: Callable[[int], bool] | None = None) -> int:
    """A port on `host` nobody listens on, outside the ephemeral range."""
    ports = outside_ephemeral_range()
    for _ in range(500):
        port = random.choice(ports)
        if claim is not None and not claim(port):
            continue
        if bindable(host, port):
            return port
    raise OSError(f"no free TCP port on {host} between {ports.start} and {ports.stop - 1}")


__all__ = ["bindable", "free_port", "outside_ephemeral_range"]
