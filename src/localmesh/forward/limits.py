"""Process limits a forwarder needs: one socket per client plus one per websocket, and
one TLS connection to the API server per pod, which must stay small."""

from __future__ import annotations

import asyncio.sslproto
import resource

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


# asyncio gives every TLS connection a 256 KiB read buffer up front. With one session per
# pod that was about half of localmesh's memory at 1,000 services (bench/scale.py);
# 64 KiB reads keep bulk transfers just as fast.
TLS_READ_BUFFER = 64 * 1024


def shrink_tls_read_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Cap the read buffer of TLS connections created from now on in this process."""
    asyncio.sslproto.SSLProtocol.max_size = min(asyncio.sslproto.SSLProtocol.max_size, size)
