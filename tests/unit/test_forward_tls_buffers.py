from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from localmesh.forward.limits import TLS_READ_BUFFER, share_tls_read_buffers
from localmesh.sandbox.certs import make_serving_certs


async def test_connections_sharing_the_read_buffer_each_get_their_own_bytes(
    tmp_path: Path,
) -> None:
    share_tls_read_buffers()
    ca, cert, key = make_serving_certs().write(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ca))

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]

    async def exchange(i: int) -> tuple[bytes, bytes, object]:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"
        )
        # Several read-buffers' worth, distinct per connection, interleaved by the loop.
        payload = bytes([i]) * 1000 + bytes(range(256)) * (3 * TLS_READ_BUFFER // 256)
        writer.write(payload)
        await writer.drain()
        got = await reader.readexactly(len(payload))
        buffer = writer.transport._ssl_protocol._ssl_buffer  # type: ignore[attr-defined]
        writer.close()
        return payload, got, buffer

    async with server:
        results = await asyncio.wait_for(asyncio.gather(*(exchange(i) for i in range(12))), 30)
    for payload, got, _ in results:
        assert got == payload
    buffers = {id(buffer) for _, _, buffer in results}
    assert len(buffers) == 1
    assert len(results[0][2]) == TLS_READ_BUFFER  # type: ignore[arg-type]
