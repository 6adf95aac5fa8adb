"""The event loop every localmesh command runs on: uvloop.

Each byte between Envoy and the API server passes through the forwarders' sockets and TLS
in Python. uvloop's transports and TLS cost about half the CPU per request of asyncio's
default loop (bench/datapath.py, `lm-forwarder` at one connection: 112 -> 63 µs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on a uvloop event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
