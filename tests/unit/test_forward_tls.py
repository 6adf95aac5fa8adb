"""record_sized_reads: TLS reads ask for one record at a time and lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tracemalloc
from pathlib import Path

import uvloop

from localmesh.forward.tls import RECORD_SIZE, RecordSizedReads, record_sized_reads
from localmesh.sandbox.certs import make_serving_certs


def contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca, cert, key = make_serving_certs().write(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(ca))
    return server, client


def handshaken(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A client and a server SSLObject joined by memory pipes, past the handshake."""
    there, back = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(back, there, server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(there, back, server_side=True)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
    return client, server


def peak_while_reading(client: ssl.SSLObject, server: ssl.SSLObject, payload: bytes) -> int:
    """Bytes allocated at the peak while reading `payload` with 256 KiB reads, as uvloop does."""
    server.write(payload)
    chunks: list[bytes] = []
    tracemalloc.start()
    try:
        while sum(map(len, chunks)) < len(payload):
            chunks.append(client.read(256 * 1024))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert b"".join(chunks) == payload
    return peak


def test_reads_allocate_one_record_not_the_size_asked(tmp_path: Path) -> None:
    server_ctx, client_ctx = contexts(tmp_path)
    payload = bytes(range(256)) * 256  # 64 KiB: four full records
    plain = peak_while_reading(*handshaken(client_ctx, server_ctx), payload)
    client, server = handshaken(record_sized_reads(client_ctx), server_ctx)
    assert isinstance(client, RecordSizedReads)
    bounded = peak_while_reading(client, server, payload)
    assert plain >= 256 * 1024  # what every read cost before
    assert bounded < len(payload) + 2 * RECORD_SIZE
    buffer = bytearray(256 * 1024)  # a caller's own buffer is filled as before
    server.write(b"hello")
    assert client.read(len(buffer), buffer) == 5 and buffer[:5] == b"hello"


def test_a_uvloop_tls_stream_carries_a_megabyte_intact(tmp_path: Path) -> None:
    server_ctx, client_ctx = contexts(tmp_path)
    payload = bytes(range(251)) * 4200  # ~1 MiB, no period that aligns with records

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(len(payload)))
        await writer.drain()
        writer.close()

    async def main() -> bytes:
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=record_sized_reads(client_ctx)
            )
            writer.write(payload)
            got = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
            writer.close()
            return got

    assert uvloop.run(main()) == payload
