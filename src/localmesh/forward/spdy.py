"""SPDY/3.1 client framing for port-forward tunnelled in a websocket (KEP-4006).

API servers since Kubernetes 1.30/1.31 accept the subprotocol `SPDY/3.1+portforward.k8s.io`
on `pods/{pod}/portforward`: SPDY frames inside binary websocket messages. Unlike
`v4.channel.k8s.io`, one websocket then carries many TCP connections (a stream pair per
connection), so a new connection costs a few frames instead of a TLS handshake and an HTTP
upgrade. Only the client side a port-forward needs is here: open stream pairs, send DATA,
FIN and RST_STREAM, answer PING. Header blocks form a zlib stream with the SPDY/3
dictionary (draft section 2.6.10); ours are stored blocks (see `Compressor`), and the
server's are not read at all: port-forward needs nothing from its reply headers.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import NamedTuple

from localmesh.spdy_wire import (
    CANCEL,
    DICTIONARY,
    FLAG_FIN,
    PING,
    RST_STREAM,
    SYN_STREAM,
    VERSION,
    WINDOW_UPDATE,
)

SUBPROTOCOL = "SPDY/3.1+portforward.k8s.io"
_U32 = struct.Struct(">I")
_PAIR = struct.Struct(">II")
_CONTROL = struct.Struct(">HHI")


class SpdyProtocolError(Exception):
    """The server sent something that is not SPDY/3.1: the session must end."""


def encode_headers(headers: Mapping[str, str]) -> bytes:
    parts = [_U32.pack(len(headers))]
    for name, value in headers.items():
        n, v = name.lower().encode(), value.encode()
        parts += (_U32.pack(len(n)), n, _U32.pack(len(v)), v)
    return b"".join(parts)


class Compressor:
    """Header blocks as a zlib stream of stored (uncompressed) deflate blocks.

    Header blocks are a few dozen bytes and only open streams, so compressing them saves
    nothing worth a zlib context per session (~15 KiB even at the smallest settings, times
    one session per pod). A stored block is complete and byte-aligned by itself, which is
    what a sync flush guarantees, so any SPDY peer inflates the stream block after block.
    """

    def __init__(self) -> None:
        self._started = False

    def compress(self, headers: Mapping[str, str]) -> bytes:
        out = bytearray()
        if not self._started:
            # zlib header: deflate with a 32 KiB window, FDICT set; then the dictionary id.
            out += _ZLIB_HEADER + struct.pack(">I", zlib.adler32(DICTIONARY))
            self._started = True
        data = encode_headers(headers)
        for start in range(0, len(data), 0xFFFF):
            chunk = data[start : start + 0xFFFF]
            out += struct.pack("<BHH", 0, len(chunk), len(chunk) ^ 0xFFFF) + chunk
        return bytes(out)


def _zlib_header() -> bytes:
    cmf, flg = 0x78, 0x20  # CM 8 / CINFO 7; FDICT
    flg += (31 - ((cmf << 8) | flg) % 31) % 31
    return bytes((cmf, flg))


_ZLIB_HEADER = _zlib_header()


def control(frame_type: int, flags: int, payload: bytes) -> bytes:
    return _CONTROL.pack(0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def syn_stream(
    compressor: Compressor, stream_id: int, headers: Mapping[str, str], fin: bool
) -> bytes:
    head = struct.pack(">IIBB", stream_id, 0, 0, 0)
    return control(SYN_STREAM, FLAG_FIN if fin else 0, head + compressor.compress(headers))


def data(stream_id: int, payload: bytes | memoryview, fin: bool = False) -> bytes:
    return _PAIR.pack(stream_id, ((FLAG_FIN if fin else 0) << 24) | len(payload)) + payload


def rst_stream(stream_id: int, status: int = CANCEL) -> bytes:
    return control(RST_STREAM, 0, _PAIR.pack(stream_id, status))


def ping(ping_id: int) -> bytes:
    return control(PING, 0, _U32.pack(ping_id))


def window_update(stream_id: int, delta: int) -> bytes:
    return control(WINDOW_UPDATE, 0, _PAIR.pack(stream_id, delta))


class Frame(NamedTuple):
    """A received frame: `kind` is 0 for DATA, else the control frame type."""

    kind: int
    stream_id: int
    flags: int
    payload: bytes

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


class FrameReader:
    """Incremental parser: feed received bytes, get whole frames (one copy per frame)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[Frame]:
        buf = self._buf + chunk if self._buf else chunk
        frames: list[Frame] = []
        pos, end = 0, len(buf)
        while end - pos >= 8:
            word, flags_len = _PAIR.unpack_from(buf, pos)
            stop = pos + 8 + (flags_len & 0xFFFFFF)
            if stop > end:
                break
            flags = flags_len >> 24
            payload = buf[pos + 8 : stop]
            if word & 0x80000000:
                if (word >> 16) & 0x7FFF != VERSION:
                    raise SpdyProtocolError(f"unsupported SPDY version {(word >> 16) & 0x7FFF}")
                kind = word & 0xFFFF
                stream_id = _U32.unpack_from(payload, 0)[0] & 0x7FFFFFFF if len(payload) >= 4 else 0
                frames.append(Frame(kind, stream_id, flags, payload))
            else:
                frames.append(Frame(0, word & 0x7FFFFFFF, flags, payload))
            pos = stop
        self._buf = buf[pos:]
        return frames
