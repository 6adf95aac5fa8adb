"""The reverse tunnel's wire format, and the byte pump both of its ends use.

Every tunnel connection is a TCP connection this machine opens to the shadow's tunnel port
(through a port-forward), kept idle until the shadow hands it an inbound connection:

    this machine -> shadow   HELLO     b"LMT1" + the session secret (32 bytes)
    shadow -> this machine   1 byte    0x01 accepted (the connection is now idle)
                                       0x02 refused: wrong secret (the shadow closes)
        ... idle until an inbound connection arrives on an exposed port ...
    shadow -> this machine   2 bytes   the exposed (remote) port, big-endian; the inbound
                                       bytes follow at once, without waiting for an answer
    this machine -> shadow   1 byte    0x00 connected to the local port, its bytes follow
                                       0x01 the local port refused or did not answer (the
                                       machine then closes; the shadow resets the inbound
                                       connection before any response byte)
    then raw bytes both ways; a FIN is passed on as a FIN (half-close), a reset as a reset.
    (Through a port-forward, a FIN from the shadow's side ends the whole connection at
    this machine's forwarder: a client that half-closes first loses the answer there.)

A new inbound connection costs no round trip: the idle connection is already open and
authenticated, and the request bytes travel with the port header. The secret is random
per session and reaches the shadow through its pod spec (env var or mounted file), so a
pod that can reach the tunnel port cannot take the session's traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

MAGIC = b"LMT1"
SECRET_SIZE = 32
HELLO_SIZE = len(MAGIC) + SECRET_SIZE
ACCEPTED = b"\x01"
REFUSED = b"\x02"
LOCAL_OK = b"\x00"
LOCAL_FAILED = b"\x01"
PORT_HEADER = struct.Struct("!H")

SECRET_ENV = "LOCALMESH_TUNNEL_SECRET"  # hex, as `new_secret().hex()` gives it
DEFAULT_TUNNEL_PORT = 15390

READ_SIZE = 256 * 1024
STREAM_LIMIT = 256 * 1024
WRITE_HIGH_WATER = 1024 * 1024  # bytes buffered towards a slow reader before waiting
HANDSHAKE_TIMEOUT = 10.0
# How long the shadow waits for the status byte: the machine answers once its local
# connect is done (bounded there: 3 s per loopback address), so this only ends
# connections whose tunnel died without a FIN.
STATUS_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_SIZE)


def parse_secret(text: str) -> bytes:
    """A secret from its hex form; ValueError with a readable message if it is not one."""
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("the tunnel secret is not hexadecimal") from None
    if len(secret) != SECRET_SIZE:
        raise ValueError(
            f"the tunnel secret has {len(secret)} bytes; {SECRET_SIZE} are needed "
            f"({2 * SECRET_SIZE} hex digits)"
        )
    return secret


def hello(secret: bytes) -> bytes:
    return MAGIC + secret


@dataclass
class PumpResult:
    """One direction of a spliced connection: bytes so far and how it ended."""

    count: Callable[[int], None] | None = None  # told of every chunk (live counters)
    bytes: int = 0
    reset: bool = False  # the source was reset (not a clean FIN)


async def pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    result: PumpResult,
) -> None:
    """Copy `reader` to `writer` until EOF, then pass the FIN on (half-close)."""
    count = result.count
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            result.bytes += len(data)
            if count is not None:
                count(len(data))
            writer.write(data)
            if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await writer.drain()
    except ConnectionError:
        result.reset = True
        return
    if writer.can_write_eof() and not writer.is_closing():
        with contextlib.suppress(OSError):
            writer.write_eof()


async def splice(
    a: Stream,
    b: Stream,
    forward: PumpResult,
    backward: PumpResult,
    *,
    up: asyncio.Future[None] | None = None,
) -> None:
    """Bytes both ways between two connections until both directions have ended; a reset
    on one side resets the other. `forward` and `backward` count a -> b and b -> a; `up`
    is the a -> b pump when it is already running."""
    if up is None:
        up = asyncio.ensure_future(pump(a[0], b[1], forward))
    down = asyncio.ensure_future(pump(b[0], a[1], backward))
    try:
        pending: set[asyncio.Future[None]] = {up, down}
        while pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if forward.reset or backward.reset:
                break
    except asyncio.CancelledError:
        reset(a[1])
        reset(b[1])
        raise
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
    if forward.reset or backward.reset:
        reset(a[1])
        reset(b[1])
    else:
        await close(a[1])
        await close(b[1])


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0): the peer sees a reset, not an orderly end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # ValueError: uvloop's socket of a transport that closed meanwhile has no fd left.
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
