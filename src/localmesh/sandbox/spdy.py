"""SPDY/3.1 framing and a server-side session over an abstract byte transport.

Kubernetes port-forward speaks SPDY/3.1 either straight over an upgraded HTTP/1.1
connection (older kubectl, and the fallback) or tunnelled inside binary websocket
messages (kubectl >= 1.31, KEP-4006). Both carry the same byte stream, so the session
here only needs something that can `send` bytes, and is fed the received bytes as an
async iterator of chunks.

Only what a port-forward server needs is implemented: the peer opens streams, the
session replies, pipes DATA, echoes PINGs and honours FIN, RST_STREAM and GOAWAY.
Header blocks are zlib-compressed with the SPDY/3 dictionary, one compression context
per direction, each block ended with a sync flush (SPDY/3 draft, section 2.6.10).
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from localmesh.spdy_wire import (
    CANCEL,
    DICTIONARY,
    FLAG_FIN,
    GOAWAY,
    HEADERS,
    INVALID_STREAM,
    MAX_FRAME_PAYLOAD,
    PING,
    PROTOCOL_ERROR,
    RST_STREAM,
    SETTINGS,
    SYN_REPLY,
    SYN_STREAM,
    VERSION,
    WINDOW_UPDATE,
)

log = structlog.get_logger(__name__)

_CONTROL_HEADER = struct.Struct(">HHI")
_DATA_HEADER = struct.Struct(">II")
_U32 = struct.Struct(">I")
_U32_PAIR = struct.Struct(">II")


Headers = Mapping[str, Sequence[str]]


class SpdyError(Exception):
    """The peer sent something that is not valid SPDY/3.1; the session must end."""


# --- frames -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataFrame:
    stream_id: int
    data: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True)
class SynStream:
    stream_id: int
    headers: dict[str, list[str]]
    associated_id: int = 0
    priority: int = 0
    flags: int = 0


@dataclass(frozen=True, slots=True)
class SynReply:
    stream_id: int
    headers: dict[str, list[str]]
    flags: int = 0


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Settings:
    # (flags, id, value) per entry
    entries: tuple[tuple[int, int, int], ...] = ()
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status: int = 0
    flags: int = 0


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    stream_id: int
    headers: dict[str, list[str]]
    flags: int = 0


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int
    delta: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class UnknownControl:
    frame_type: int
    payload: bytes
    flags: int = 0


Frame = (
    DataFrame
    | SynStream
    | SynReply
    | RstStream
    | Settings
    | Ping
    | GoAway
    | HeadersFrame
    | WindowUpdate
    | UnknownControl
)


# --- header blocks ------------------------------------------------------------


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block: count, then length-prefixed names and values.

    Several values of one name are joined with NUL, as SPDY/3 requires.
    """
    parts = [_U32.pack(len(headers))]
    for name, values in headers.items():
        n = name.lower().encode()
        v = b"\0".join(x.encode() for x in values)
        parts += (_U32.pack(len(n)), n, _U32.pack(len(v)), v)
    return b"".join(parts)


def decode_header_block(block: bytes) -> dict[str, list[str]]:
    try:
        (count,) = _U32.unpack_from(block, 0)
        pos = 4
        headers: dict[str, list[str]] = {}
        for _ in range(count):
            (nlen,) = _U32.unpack_from(block, pos)
            name = block[pos + 4 : pos + 4 + nlen].decode()
            pos += 4 + nlen
            (vlen,) = _U32.unpack_from(block, pos)
            value = block[pos + 4 : pos + 4 + vlen].decode()
            pos += 4 + vlen
            if pos > len(block):
                raise SpdyError("header block truncated")
            headers.setdefault(name.lower(), []).extend(value.split("\0"))
    except (struct.error, UnicodeDecodeError) as exc:
        raise SpdyError(f"malformed header block: {exc}") from exc
    return headers


class HeaderCompressor:
    """One direction's compression context; every block ends with a sync flush."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, zdict=DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        return self._z.compress(encode_header_block(headers)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The other direction's context: it lives as long as the session."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(15, zdict=DICTIONARY)

    def decompress(self, block: bytes) -> dict[str, list[str]]:
        try:
            raw = self._z.decompress(block)
        except zlib.error as exc:
            raise SpdyError(f"header block does not inflate: {exc}") from exc
        return decode_header_block(raw)


# --- encoding -----------------------------------------------------------------


def control_frame(frame_type: int, flags: int, payload: bytes) -> bytes:
    return (
        _CONTROL_HEADER.pack(0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload
    )


def data_frame_header(stream_id: int, flags: int, length: int) -> bytes:
    return _DATA_HEADER.pack(stream_id & 0x7FFFFFFF, (flags << 24) | length)


def encode_frame(frame: Frame, compressor: HeaderCompressor | None = None) -> bytes:
    """Serialise one frame; frames carrying headers need the sender's compressor."""
    if isinstance(frame, DataFrame):
        return data_frame_header(frame.stream_id, frame.flags, len(frame.data)) + frame.data
    if isinstance(frame, SynStream | SynReply | HeadersFrame):
        if compressor is None:
            raise ValueError("frames with headers need a HeaderCompressor")
        block = compressor.compress(frame.headers)
        if isinstance(frame, SynStream):
            head = struct.pack(
                ">IIBB",
                frame.stream_id & 0x7FFFFFFF,
                frame.associated_id & 0x7FFFFFFF,
                (frame.priority & 0x7) << 5,
                0,
            )
            return control_frame(SYN_STREAM, frame.flags, head + block)
        kind = SYN_REPLY if isinstance(frame, SynReply) else HEADERS
        return control_frame(kind, frame.flags, _U32.pack(frame.stream_id & 0x7FFFFFFF) + block)
    if isinstance(frame, RstStream):
        payload = _U32_PAIR.pack(frame.stream_id & 0x7FFFFFFF, frame.status)
        return control_frame(RST_STREAM, frame.flags, payload)
    if isinstance(frame, Settings):
        body = [_U32.pack(len(frame.entries))]
        body += [_U32_PAIR.pack((f << 24) | (i & 0xFFFFFF), v) for f, i, v in frame.entries]
        return control_frame(SETTINGS, frame.flags, b"".join(body))
    if isinstance(frame, Ping):
        return control_frame(PING, frame.flags, _U32.pack(frame.ping_id))
    if isinstance(frame, GoAway):
        payload = _U32_PAIR.pack(frame.last_good_stream_id & 0x7FFFFFFF, frame.status)
        return control_frame(GOAWAY, frame.flags, payload)
    if isinstance(frame, WindowUpdate):
        payload = _U32_PAIR.pack(frame.stream_id & 0x7FFFFFFF, frame.delta & 0x7FFFFFFF)
        return control_frame(WINDOW_UPDATE, frame.flags, payload)
    return control_frame(frame.frame_type, frame.flags, frame.payload)


# --- decoding -----------------------------------------------------------------


class FrameReader:
    """Incremental frame parser: feed it received bytes, get whole frames back.

    Keeps at most one partial frame buffered; whole frames are sliced out in one pass
    per chunk, so a large transfer costs a copy per frame, never per byte.
    """

    def __init__(self, decompressor: HeaderDecompressor | None = None) -> None:
        self._buf = bytearray()
        self._headers = decompressor or HeaderDecompressor()

    def feed(self, data: bytes) -> list[Frame]:
        buffered = bool(self._buf)
        if buffered:
            self._buf += data
            view = memoryview(self._buf)
        else:
            view = memoryview(data)
        frames: list[Frame] = []
        pos = 0
        end_of_data = len(view)
        try:
            while end_of_data - pos >= 8:
                (word, flags_len) = _U32_PAIR.unpack_from(view, pos)
                end = pos + 8 + (flags_len & 0xFFFFFF)
                if end > end_of_data:
                    break
                flags = flags_len >> 24
                payload = view[pos + 8 : end].tobytes()  # the one copy per frame
                if word & 0x80000000:
                    version = (word >> 16) & 0x7FFF
                    if version != VERSION:
                        raise SpdyError(f"unsupported SPDY version {version}")
                    frames.append(self._control(word & 0xFFFF, flags, payload))
                else:
                    frames.append(DataFrame(word & 0x7FFFFFFF, payload, flags))
                pos = end
        finally:
            view.release()  # a bytearray cannot shrink while a view is exported
        if buffered:
            del self._buf[:pos]
        elif pos < end_of_data:
            self._buf += data[pos:]
        return frames

    def _control(self, kind: int, flags: int, p: bytes) -> Frame:
        try:
            if kind == SYN_STREAM:
                sid, assoc, pri, _slot = struct.unpack_from(">IIBB", p)
                headers = self._headers.decompress(p[10:])
                return SynStream(sid & 0x7FFFFFFF, headers, assoc & 0x7FFFFFFF, pri >> 5, flags)
            if kind in (SYN_REPLY, HEADERS):
                (sid,) = _U32.unpack_from(p)
                headers = self._headers.decompress(p[4:])
                if kind == SYN_REPLY:
                    return SynReply(sid & 0x7FFFFFFF, headers, flags)
                return HeadersFrame(sid & 0x7FFFFFFF, headers, flags)
            if kind == RST_STREAM:
                sid, status = _U32_PAIR.unpack_from(p)
                return RstStream(sid & 0x7FFFFFFF, status, flags)
            if kind == SETTINGS:
                (count,) = _U32.unpack_from(p)
                entries = []
                for i in range(count):
                    fid, value = _U32_PAIR.unpack_from(p, 4 + 8 * i)
                    entries.append((fid >> 24, fid & 0xFFFFFF, value))
                return Settings(tuple(entries), flags)
            if kind == PING:
                return Ping(_U32.unpack_from(p)[0], flags)
            if kind == GOAWAY:
                last, status = _U32_PAIR.unpack_from(p)
                return GoAway(last & 0x7FFFFFFF, status, flags)
            if kind == WINDOW_UPDATE:
                sid, delta = _U32_PAIR.unpack_from(p)
                return WindowUpdate(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF, flags)
        except struct.error as exc:
            raise SpdyError(f"truncated control frame of type {kind}") from exc
        return UnknownControl(kind, p, flags)


# --- session ------------------------------------------------------------------


class ByteSink(Protocol):
    """Where the session's outgoing bytes go (a socket, or websocket messages)."""

    async def send(self, data: bytes) -> None: ...


class StreamHandler(Protocol):
    """What the application does with the peer's streams.

    Called from the session's read loop, one frame at a time, so a handler that
    awaits (e.g. for a slow backend to drain) holds back reading: that is the
    session's back-pressure.
    """

    async def stream_opened(self, stream: SpdyStream) -> None: ...

    async def data_received(self, stream: SpdyStream, data: bytes) -> None: ...

    async def remote_closed(self, stream: SpdyStream) -> None: ...

    async def stream_reset(self, stream: SpdyStream, status: int) -> None: ...


@dataclass(eq=False, slots=True)
class SpdyStream:
    """A stream the peer opened; the session replied to it when it arrived."""

    session: SpdySession
    stream_id: int
    headers: dict[str, list[str]]
    remote_fin: bool = False
    local_fin: bool = False
    reset: bool = False
    unacked: int = field(default=0)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None

    async def write(self, data: bytes) -> None:
        await self.session.send_data(self, data)

    async def close(self) -> None:
        """Half-close: send FIN, the peer may go on sending."""
        await self.session.send_fin(self)

    async def abort(self, status: int = CANCEL) -> None:
        await self.session.send_reset(self, status)


class SpdySession:
    """Server side of one SPDY/3.1 connection.

    `run(chunks)` reads until the peer closes the connection, sends GOAWAY, or the
    transport fails; it raises SpdyError on a protocol violation. Writers call
    `send_data`/`send_fin`/`send_reset` from any task; frames are written whole.
    """

    # Acknowledge received DATA once this much is consumed on a stream, keeping the
    # peer's default 64 KiB send window open if it enforces one.
    WINDOW_ACK = 32 * 1024

    def __init__(self, sink: ByteSink, handler: StreamHandler) -> None:
        self._sink = sink
        self._handler = handler
        self._compressor = HeaderCompressor()
        self._reader = FrameReader()
        self._header_lock = asyncio.Lock()
        self.streams: dict[int, SpdyStream] = {}
        self.last_stream_id = 0
        self.closed = False

    async def run(self, chunks: AsyncIterator[bytes]) -> None:
        async for chunk in chunks:
            for frame in self._reader.feed(chunk):
                if await self._dispatch(frame):
                    return

    async def _dispatch(self, frame: Frame) -> bool:
        """Handle one frame; True when the peer ended the session."""
        if isinstance(frame, DataFrame):
            stream = self.streams.get(frame.stream_id)
            if stream is None or stream.remote_fin:
                await self._send(
                    control_frame(RST_STREAM, 0, _U32_PAIR.pack(frame.stream_id, INVALID_STREAM))
                )
                return False
            if frame.data:
                await self._handler.data_received(stream, frame.data)
                await self._ack(stream, len(frame.data))
            if frame.flags & FLAG_FIN:
                await self._remote_fin(stream)
        elif isinstance(frame, SynStream):
            await self._open(frame)
        elif isinstance(frame, Ping):
            # Our own ids would be even; the peer's odd ones must come back unchanged.
            await self._send(encode_frame(frame))
        elif isinstance(frame, RstStream):
            stream = self.streams.pop(frame.stream_id, None)
            if stream is not None:
                stream.reset = True
                await self._handler.stream_reset(stream, frame.status)
        elif isinstance(frame, GoAway):
            return True
        elif isinstance(frame, HeadersFrame):
            stream = self.streams.get(frame.stream_id)
            if stream is not None:
                for name, values in frame.headers.items():
                    stream.headers.setdefault(name, []).extend(values)
                if frame.flags & FLAG_FIN:
                    await self._remote_fin(stream)
        # SETTINGS, WINDOW_UPDATE and unknown control frames need no answer: the
        # session does not enforce flow control on what it sends.
        return False

    async def _open(self, frame: SynStream) -> None:
        sid = frame.stream_id
        if sid in self.streams or sid <= self.last_stream_id or sid % 2 == 0:
            await self._send(control_frame(RST_STREAM, 0, _U32_PAIR.pack(sid, PROTOCOL_ERROR)))
            return
        self.last_stream_id = sid
        stream = SpdyStream(self, sid, frame.headers)
        self.streams[sid] = stream
        async with self._header_lock:
            await self._send(encode_frame(SynReply(sid, {}), self._compressor))
        await self._handler.stream_opened(stream)
        if frame.flags & FLAG_FIN:
            await self._remote_fin(stream)

    async def _remote_fin(self, stream: SpdyStream) -> None:
        if stream.remote_fin:
            return
        stream.remote_fin = True
        self._forget_if_done(stream)
        await self._handler.remote_closed(stream)

    async def _ack(self, stream: SpdyStream, n: int) -> None:
        stream.unacked += n
        if stream.unacked >= self.WINDOW_ACK and not stream.remote_fin:
            delta, stream.unacked = stream.unacked, 0
            # Session-level window (stream 0, SPDY/3.1) and the stream's own.
            await self._send(
                control_frame(WINDOW_UPDATE, 0, _U32_PAIR.pack(0, delta))
                + control_frame(WINDOW_UPDATE, 0, _U32_PAIR.pack(stream.stream_id, delta))
            )

    def _forget_if_done(self, stream: SpdyStream) -> None:
        if stream.remote_fin and stream.local_fin:
            self.streams.pop(stream.stream_id, None)

    async def send_data(self, stream: SpdyStream, data: bytes) -> None:
        if stream.local_fin or stream.reset or self.closed:
            return
        if len(data) <= MAX_FRAME_PAYLOAD:
            await self._send(data_frame_header(stream.stream_id, 0, len(data)) + data)
            return
        view = memoryview(data)
        for start in range(0, len(data), MAX_FRAME_PAYLOAD):
            piece = view[start : start + MAX_FRAME_PAYLOAD]
            await self._send(data_frame_header(stream.stream_id, 0, len(piece)) + piece)

    async def send_fin(self, stream: SpdyStream) -> None:
        if stream.local_fin or stream.reset:
            return
        stream.local_fin = True
        self._forget_if_done(stream)
        if not self.closed:
            await self._send(data_frame_header(stream.stream_id, FLAG_FIN, 0))

    async def send_reset(self, stream: SpdyStream, status: int = CANCEL) -> None:
        if stream.reset:
            return
        stream.reset = True
        self.streams.pop(stream.stream_id, None)
        if not self.closed:
            await self._send(encode_frame(RstStream(stream.stream_id, status)))

    async def send_goaway(self, status: int = 0) -> None:
        if not self.closed:
            await self._send(encode_frame(GoAway(self.last_stream_id, status)))

    async def send_ping(self, ping_id: int) -> None:
        await self._send(encode_frame(Ping(ping_id)))

    async def _send(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            await self._sink.send(data)
        except (ConnectionError, RuntimeError) as exc:
            # The transport is gone: everything still open dies with it.
            log.debug("spdy.send_failed", error=str(exc))
            self.closed = True

    def close(self) -> None:
        """Stop writing; the caller closes the transport itself."""
        self.closed = True


def frames_bytes(frames: Iterable[Frame], compressor: HeaderCompressor | None = None) -> bytes:
    """Serialise several frames sharing one compressor (a client in tests)."""
    comp = compressor or HeaderCompressor()
    return b"".join(encode_frame(f, comp) for f in frames)
