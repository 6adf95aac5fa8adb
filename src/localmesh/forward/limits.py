"""Process limits a forwarder needs: one socket per client plus one per websocket, and
one TLS connection to the API server per pod, which must stay small."""

from __future__ import annotations

import asyncio.sslproto
import resource
import threading
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit", soft=soft, hard=hard, error=str(exc))
    return soft


# asyncio gives every TLS connection its own 256 KiB buffer for reading the socket,
# allocated up front. With one session per pod that was about half of localmesh's memory
# at 1,000 services (bench/scale.py). The buffer only lives from `get_buffer()` to
# `buffer_updated()`, one synchronous step of the event loop (`recv_into`, then the bytes
# are copied into the TLS object's input BIO), so every connection of one thread can share
# one. Reads stay 64 KiB: bulk transfers need as few loop iterations as before.
TLS_READ_BUFFER = 64 * 1024

_shared = threading.local()


def _shared_view(size: int) -> memoryview:
    view: memoryview | None = getattr(_shared, "view", None)
    if view is None or len(view) < size:
        view = _shared.view = memoryview(bytearray(size))
    return view


def share_tls_read_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Make TLS connections created from now on in this process read the socket through
    one buffer per thread of `size` bytes (idempotent)."""
    proto = asyncio.sslproto.SSLProtocol
    proto.max_size = min(proto.max_size, size)
    if getattr(proto.__init__, "shares_read_buffer", False):
        return
    # Only the asyncio this was written against (3.11+): keep its own buffers otherwise.
    if not all(hasattr(proto, a) for a in ("get_buffer", "buffer_updated", "max_size")):
        return
    original_init = proto.__init__

    def init(self: asyncio.sslproto.SSLProtocol, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        view = _shared_view(self.max_size)
        self._ssl_buffer = view.obj  # type: ignore[attr-defined]
        self._ssl_buffer_view = view  # type: ignore[attr-defined]

    init.shares_read_buffer = True  # type: ignore[attr-defined]
    proto.__init__ = init  # type: ignore[method-assign]
