"""TLS reads towards the API server without a 256 KiB allocation per record.

uvloop (and asyncio's own SSL layer) decrypt with `SSLObject.read(256 KiB)`: CPython
allocates a bytes object of that size for every call, then shrinks it to the record it
got. A block that large is its own mapping (see limits.py), so every decrypted TLS record
cost an mmap, an mremap and a munmap plus a page fault: about 15 us, once or more per
forwarded request. OpenSSL hands out at most one record (16 KiB of plaintext) per read
anyway, and the event loop keeps reading while data is pending, so asking for one record
at a time returns the same bytes from an ordinary heap block.
"""

from __future__ import annotations

import ssl
from typing import Any

RECORD_SIZE = 16 * 1024  # the largest TLS plaintext record (RFC 8446, section 5.1)


class RecordSizedReads(ssl.SSLObject):
    """An SSLObject whose reads ask for at most one TLS record when given no buffer."""

    def read(self, len: int = 1024, buffer: Any = None) -> Any:  # ssl.SSLObject.read's names
        if buffer is not None:
            return self._sslobj.read(len, buffer)  # type: ignore[attr-defined]
        return self._sslobj.read(min(len, RECORD_SIZE))  # type: ignore[attr-defined]


def record_sized_reads(context: ssl.SSLContext) -> ssl.SSLContext:
    """`context`, its connections reading one TLS record at a time (see above)."""
    if context.sslobject_class is not RecordSizedReads:
        context.sslobject_class = RecordSizedReads
    return context
