"""SPDY/3.1 client framing: the dictionary, header blocks, frames, incremental parsing."""

from __future__ import annotations

import struct
import zlib

from localmesh import spdy_wire
from localmesh.forward import spdy
from localmesh.sandbox import spdy as server


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(spdy_wire.DICTIONARY) == 1423
    assert spdy_wire.DICTIONARY == spdy_wire.DICTIONARY


def test_syn_stream_headers_inflate_on_the_other_side() -> None:
    compressor = spdy.Compressor()
    reader = server.FrameReader()
    frames = spdy.syn_stream(
        compressor, 1, {"streamtype": "error", "port": "80", "requestid": "0"}, fin=True
    ) + spdy.syn_stream(
        compressor, 3, {"streamtype": "data", "port": "80", "requestid": "0"}, fin=False
    )
    parsed = reader.feed(frames)
    assert [type(f).__name__ for f in parsed] == ["SynStream", "SynStream"]
    first, second = parsed
    assert isinstance(first, server.SynStream) and isinstance(second, server.SynStream)
    assert (first.stream_id, first.flags, first.headers["streamtype"]) == (1, 1, ["error"])
    assert (second.stream_id, second.flags, second.headers["port"]) == (3, 0, ["80"])


def test_frames_parse_across_arbitrary_chunk_boundaries() -> None:
    reply_block = zlib.compressobj(zdict=spdy_wire.DICTIONARY)
    block = reply_block.compress(b"\0\0\0\0") + reply_block.flush(zlib.Z_SYNC_FLUSH)
    wire = (
        spdy.control(spdy_wire.SYN_REPLY, 0, struct.pack(">I", 3) + block)
        + spdy.data(3, b"hello")
        + spdy.data(3, b"", fin=True)
        + spdy.ping(2)
        + spdy.rst_stream(5)
    )
    reader = spdy.FrameReader()
    frames: list[spdy.Frame] = []
    for i in range(0, len(wire), 7):
        frames += reader.feed(wire[i : i + 7])
    assert [(f.kind, f.stream_id) for f in frames] == [
        (spdy_wire.SYN_REPLY, 3),
        (0, 3),
        (0, 3),
        (spdy_wire.PING, 2),
        (spdy_wire.RST_STREAM, 5),
    ]
    assert frames[1].payload == b"hello" and not frames[1].fin
    assert frames[2].fin and frames[2].payload == b""


def test_small_header_compressor_is_read_by_a_full_window_peer() -> None:
    """The compressor's 2 KiB window (to keep one session per pod small) must still be
    inflated by a peer that uses SPDY's standard 32 KiB window, block after block."""
    import zlib

    from localmesh.forward import spdy as fspdy

    compressor = fspdy.Compressor()
    peer = zlib.decompressobj(15, zdict=spdy_wire.DICTIONARY)
    for request_id in range(3):
        headers = {"streamtype": "data", "port": "8080", "requestid": str(request_id)}
        block = compressor.compress(headers)
        assert str(request_id).encode() in peer.decompress(block)
