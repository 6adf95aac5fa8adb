"""Process limits a forwarder needs: one socket per client plus one per websocket, and
one TLS connection to the API server per pod, which must stay small."""

from __future__ import annotations

import ctypes
import platform
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


# uvloop gives every TLS connection a 256 KiB read buffer from malloc. glibc's mmap threshold
# rises as large blocks are freed, so those buffers land in the heap, where the pages around
# them that other allocations touch stay resident. With the threshold fixed, each buffer is
# its own mapping and only the pages a read touched count (bench/scale.py at 1,000 services:
# 229.5 MiB against 238.1 MiB). Blocks that size are rare outside these buffers.
MMAP_THRESHOLD = 256 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>


def map_large_buffers_apart(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc's malloc serve blocks of `threshold` bytes and more from their own
    mappings, from now on in this process; False where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, threshold))
