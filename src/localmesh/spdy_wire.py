"""SPDY/3.1 wire vocabulary shared by both ends of a port-forward.

localmesh's forwarders speak SPDY as a client (localmesh.forward.spdy) and the sandbox
serves it (localmesh.sandbox.spdy); frame types, flags, status codes and the header
compression dictionary are the protocol's, so they are written down once, here.
"""

from __future__ import annotations

import struct

VERSION = 3

# Control frame types (SPDY/3 draft, section 2.6).
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes (section 2.4.2).
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5
INTERNAL_ERROR = 6
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9

# Largest payload one DATA frame may carry (24-bit length field).
MAX_FRAME_PAYLOAD = (1 << 24) - 1

_U32 = struct.Struct(">I")


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (SPDY/3 draft, section 2.6.10.1).

    The draft lists it as bytes: first header names and common values, each preceded
    by its 32-bit big-endian length, then a run of plain text. Built from that
    structure rather than typed as 1423 hex bytes; `len(DICTIONARY) == 1423` and its
    Adler-32 are checked in the unit tests.
    """
    words = [
        *("options", "head", "post", "put", "delete", "trace", "accept", "accept-charset"),
        *("accept-encoding", "accept-language", "accept-ranges", "age", "allow"),
        *("authorization", "cache-control", "connection", "content-base"),
        *("content-encoding", "content-language", "content-length", "content-location"),
        *("content-md5", "content-range", "content-type", "date", "etag", "expect"),
        *("expires", "from", "host", "if-match", "if-modified-since", "if-none-match"),
        *("if-range", "if-unmodified-since", "last-modified", "location", "max-forwards"),
        *("pragma", "proxy-authenticate", "proxy-authorization", "range", "referer"),
        *("retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade"),
        *("user-agent", "vary", "via", "warning", "www-authenticate", "method", "get"),
        *("status", "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie"),
        *("keep-alive", "origin"),
    ]
    prefixed = b"".join(_U32.pack(len(w)) + w.encode() for w in words)
    text = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416"
        "417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found"
        "500 Internal Server Error501 Not Implemented503 Service Unavailable"
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,"
        "application/xhtml+xml,text/plain,text/javascript,public"
        "privatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return prefixed + text.encode()


DICTIONARY = _dictionary()
