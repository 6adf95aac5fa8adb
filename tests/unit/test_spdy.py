"""SPDY/3.1 framing, header compression and the server session, without sockets."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

import pytest

from localmesh import spdy_wire
from localmesh.sandbox import spdy
from localmesh.sandbox.spdy import (
    DataFrame,
    Frame,
    FrameReader,
    GoAway,
    HeaderCompressor,
    HeaderDecompressor,
    HeadersFrame,
    Ping,
    RstStream,
    Settings,
    SpdySession,
    SpdyStream,
    SynReply,
    SynStream,
    WindowUpdate,
    decode_header_block,
    encode_frame,
    encode_header_block,
)
from localmesh.spdy_wire import DICTIONARY


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(DICTIONARY) == 1423
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")
    # zlib announces a preset dictionary by its Adler-32; peers reject any other one.
    assert zlib.adler32(DICTIONARY) == 0xE3C6A7C2


ALL_FRAMES: list[Frame] = [
    DataFrame(1, b"hello", spdy_wire.FLAG_FIN),
    DataFrame(0x7FFFFFFF, b""),
    SynStream(3, {"streamtype": ["data"], "port": ["8080"], "requestid": ["0"]}, 0, 2, 0),
    SynStream(5, {"x": ["a", "b"]}, 1, 7, spdy_wire.FLAG_FIN | spdy_wire.FLAG_UNIDIRECTIONAL),
    SynReply(3, {}, spdy_wire.FLAG_FIN),
    HeadersFrame(3, {"extra": ["1"]}),
    RstStream(3, spdy_wire.CANCEL),
    Settings(((0, 7, 65536), (1, 4, 100))),
    Ping(42),
    GoAway(9, 0),
    WindowUpdate(0, 1 << 20),
]


def test_every_frame_roundtrips() -> None:
    comp = HeaderCompressor()
    wire = b"".join(encode_frame(f, comp) for f in ALL_FRAMES)
    assert FrameReader().feed(wire) == ALL_FRAMES


def test_reader_reassembles_frames_split_at_every_byte() -> None:
    wire = spdy.frames_bytes(ALL_FRAMES)
    reader = FrameReader()
    out: list[Frame] = []
    for i in range(len(wire)):
        out += reader.feed(wire[i : i + 1])
    assert out == ALL_FRAMES


def test_reader_handles_many_frames_in_one_chunk_and_a_partial_tail() -> None:
    payload = bytes(range(256)) * 256
    frames = [DataFrame(1, payload) for _ in range(20)]
    wire = spdy.frames_bytes(frames)
    reader = FrameReader()
    first = reader.feed(wire[:-100])
    assert first == frames[:-1]
    assert reader.feed(wire[-100:]) == frames[-1:]


def test_control_frame_header_layout() -> None:
    # Control bit, version 3, type PING (6), flags 0, length 4, id.
    assert encode_frame(Ping(1)) == bytes.fromhex("80030006 00000004 00000001")
    assert encode_frame(DataFrame(5, b"ab", spdy_wire.FLAG_FIN)) == bytes.fromhex(
        "00000005 01000002 6162"
    )


def test_header_blocks_inflate_with_plain_zlib_and_the_dictionary() -> None:
    comp = HeaderCompressor()
    plain = zlib.decompressobj(zdict=DICTIONARY)
    blocks = [
        {"streamtype": ["error"], "port": ["8080"], "requestid": ["0"]},
        {"streamtype": ["data"], "port": ["8080"], "requestid": ["0"]},
        {"multi": ["a", "b", "c"]},
    ]
    for headers in blocks:
        raw = plain.decompress(comp.compress(headers))
        assert raw == encode_header_block(headers)
        assert decode_header_block(raw) == headers


def test_header_blocks_from_plain_zlib_decompress_in_one_context() -> None:
    z = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=DICTIONARY)
    ours = HeaderDecompressor()
    for n in range(3):
        headers = {"requestid": [str(n)], "port": ["80"]}
        block = z.compress(encode_header_block(headers)) + z.flush(zlib.Z_SYNC_FLUSH)
        assert ours.decompress(block) == headers


def test_wrong_dictionary_is_a_protocol_error() -> None:
    z = zlib.compressobj(6, zlib.DEFLATED, 15, zdict=b"not the spdy dictionary")
    block = z.compress(encode_header_block({"a": ["b"]})) + z.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(spdy.SpdyError):
        HeaderDecompressor().decompress(block)


def test_header_names_are_lowercased() -> None:
    assert decode_header_block(encode_header_block({"StreamType": ["data"]})) == {
        "streamtype": ["data"]
    }


# --- session ------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.reader = FrameReader()
        self.frames: list[Frame] = []

    async def send(self, data: bytes) -> None:
        self.frames += self.reader.feed(data)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, object]] = []

    async def stream_opened(self, stream: SpdyStream) -> None:
        self.events.append(("open", stream.stream_id, stream.header("streamtype")))

    async def data_received(self, stream: SpdyStream, data: bytes) -> None:
        self.events.append(("data", stream.stream_id, data))
        await stream.write(data.upper())

    async def remote_closed(self, stream: SpdyStream) -> None:
        self.events.append(("fin", stream.stream_id, None))
        await stream.close()

    async def stream_reset(self, stream: SpdyStream, status: int) -> None:
        self.events.append(("reset", stream.stream_id, status))


async def run_session(frames: list[Frame], *, split: int = 7) -> tuple[Sink, Recorder]:
    sink, recorder = Sink(), Recorder()
    session = SpdySession(sink, recorder)
    wire = spdy.frames_bytes(frames)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(wire), split):
            yield wire[i : i + split]

    await asyncio.wait_for(session.run(chunks()), 5)
    return sink, recorder


async def test_session_echoes_pings() -> None:
    sink, _ = await run_session([Ping(1), Ping(3)])
    assert sink.frames == [Ping(1), Ping(3)]


async def test_session_replies_to_streams_and_pipes_data() -> None:
    sink, recorder = await run_session(
        [
            SynStream(1, {"streamtype": ["error"]}, flags=spdy_wire.FLAG_FIN),
            SynStream(3, {"streamtype": ["data"]}),
            DataFrame(3, b"abc"),
            DataFrame(3, b"", spdy_wire.FLAG_FIN),
        ]
    )
    assert recorder.events == [
        ("open", 1, "error"),
        ("fin", 1, None),
        ("open", 3, "data"),
        ("data", 3, b"abc"),
        ("fin", 3, None),
    ]
    assert sink.frames == [
        SynReply(1, {}),
        DataFrame(1, b"", spdy_wire.FLAG_FIN),
        SynReply(3, {}),
        DataFrame(3, b"ABC"),
        DataFrame(3, b"", spdy_wire.FLAG_FIN),
    ]


async def test_session_resets_data_for_unknown_streams_and_reports_resets() -> None:
    sink, recorder = await run_session(
        [DataFrame(9, b"x"), SynStream(1, {}), RstStream(1, spdy_wire.CANCEL), DataFrame(1, b"y")]
    )
    assert recorder.events == [("open", 1, None), ("reset", 1, spdy_wire.CANCEL)]
    assert sink.frames == [
        RstStream(9, spdy_wire.INVALID_STREAM),
        SynReply(1, {}),
        RstStream(1, spdy_wire.INVALID_STREAM),
    ]


async def test_session_refuses_even_and_reused_stream_ids() -> None:
    sink, recorder = await run_session([SynStream(2, {}), SynStream(5, {}), SynStream(3, {})])
    assert recorder.events == [("open", 5, None)]
    assert sink.frames == [
        RstStream(2, spdy_wire.PROTOCOL_ERROR),
        SynReply(5, {}),
        RstStream(3, spdy_wire.PROTOCOL_ERROR),
    ]


async def test_goaway_ends_the_session() -> None:
    sink, _ = await run_session([GoAway(0), Ping(1)])
    assert sink.frames == []


async def test_session_opens_the_peers_window_on_bulk_data() -> None:
    chunk = b"z" * 16384
    frames: list[Frame] = [SynStream(1, {}), *(DataFrame(1, chunk) for _ in range(4))]
    sink, _ = await run_session(frames, split=5000)
    updates = [f for f in sink.frames if isinstance(f, WindowUpdate)]
    assert updates == [WindowUpdate(0, 32768), WindowUpdate(1, 32768)] * 2


async def test_bad_version_is_a_protocol_error() -> None:
    bad = bytearray(encode_frame(Ping(1)))
    bad[1] = 2  # SPDY/2
    with pytest.raises(spdy.SpdyError):
        FrameReader().feed(bytes(bad))
