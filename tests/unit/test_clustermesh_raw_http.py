"""The raw GET that `mesh` asks the router with (and the router asks shadows with): the
answer is read whole, however it arrives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from localmesh.clustermesh.raw_http import http_get
from localmesh.clustermesh.session import ask_routed


@asynccontextmanager
async def answering(pieces: Sequence[bytes]) -> AsyncIterator[int]:
    """A server that reads one request head, writes `pieces` one by one (each drained),
    then closes; yields its port."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
    assert all(h.startswith(b"GET ") and b"Connection: close" in h for h in heads)


async def test_a_body_in_pieces_is_read_whole() -> None:
    body = b"x" * 100_000  # far more than one read of a socket
    pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", body[:10], body[10:]]
    async with answering(pieces) as port:
        assert await http_get("127.0.0.1", port, "/", within=10) == (200, body)


async def test_a_held_mark_names_its_holder_whatever_its_length() -> None:
    holder = "anä@läptöp (session billing-api-localmesh-dev-a1b2c3) " + "é" * 3000
    text = f"mark held by {holder}\n".encode()
    pieces = [b"HTTP/1.1 409 Conflict\r\nConnection: close\r\n\r\n", text[:5], text[5:]]
    async with answering(pieces) as port:
        answer = await ask_routed("127.0.0.1", port, "s1", 0.0)
    assert not answer.routed and answer.held_by == holder.strip()


@pytest.mark.parametrize("reply", [b"", b"HTTP/1.1 200 OK\r\n", b"SSH-2.0-x\r\n\r\n"])
async def test_no_whole_answer_is_an_error(reply: bytes) -> None:
    async with answering([reply]) as port:
        with pytest.raises(ValueError, match="not a whole HTTP answer"):
            await http_get("127.0.0.1", port, "/", within=10)
