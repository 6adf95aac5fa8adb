"""One short HTTP/1.1 GET on a raw asyncio connection (the agents' and `mesh`'s questions
to a health port): no client library, so the router and shadow pods start light."""

from __future__ import annotations

import asyncio


async def http_get(
    host: str, port: int, path: str, *, within: float, host_header: str | None = None
) -> tuple[int, bytes]:
    """(status, body) of `GET path` with `Connection: close`, the answer read to EOF (the
    health servers asked close after their short answer): a body can arrive in several
    pieces, through a port-forward above all, and an older router's Content-Length may be
    short. TimeoutError after `within` seconds in all; OSError or ValueError when the
    connection or the answer breaks."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host_header or host}\r\n"
                "User-Agent: localmesh\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            reply = await reader.read()
    finally:
        if writer is not None:
            writer.close()
    head, found, body = reply.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if not found or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not a whole HTTP answer: {reply[:80]!r}")
    return int(parts[1]), body
