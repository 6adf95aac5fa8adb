"""One short HTTP/1.1 GET on a raw asyncio connection (the agents' and `mesh`'s questions
to a health port): no client library, so the router and shadow pods start light."""

from __future__ import annotations

import asyncio


async def http_get(
    host: str, port: int, path: str, *, within: float, host_header: str | None = None
) -> tuple[int, bytes]:
    """(status, body) of `GET path`, the body read whole (by Content-Length, else to EOF):
    a body can arrive in several pieces, through a port-forward above all. TimeoutError
    after `within` seconds in all; OSError, asyncio.IncompleteReadError or ValueError when
    the connection or the answer breaks."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host_header or host}\r\n"
                "User-Agent: localmesh\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise ValueError("the answer's head is too long") from None
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
            length = None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await (reader.readexactly(length) if length is not None else reader.read())
            return int(parts[1]), body
    finally:
        if writer is not None:
            writer.close()
