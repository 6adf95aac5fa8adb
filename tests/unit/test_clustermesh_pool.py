"""The tunnel pool's retry schedule, driven through the Dialer seam by dialers that fail
or that never get an answer (no sockets, no monkeypatching)."""

from __future__ import annotations

import asyncio

from localmesh.clustermesh import tunnel_wire as wire
from localmesh.clustermesh.tunnel_laptop import (
    BACKOFF_INITIAL,
    BACKOFF_MAX_CONNECTING,
    TcpDialer,
    TunnelClient,
)
from localmesh.clustermesh.tunnel_wire import Stream, new_secret


class RefusingDialer:
    """Every dial fails as a refused connection would; counts the attempts."""

    label = "shadow.test:15390"

    def __init__(self) -> None:
        self.dials = 0
        self.changed = asyncio.Event()

    async def dial(self) -> Stream:
        self.dials += 1
        self.changed.set()
        raise ConnectionRefusedError(111, "Connection refused")

    async def close(self) -> None:
        return None


async def wait_dials(dialer: RefusingDialer, count: int) -> None:
    async with asyncio.timeout(60):
        while dialer.dials < count:
            dialer.changed.clear()
            await dialer.changed.wait()


async def test_failed_opens_back_off_once_per_round_up_to_the_connecting_cap() -> None:
    dialer = RefusingDialer()
    client = TunnelClient(dialer, new_secret(), {8080: 9090}, pool=4)
    client.start()
    try:
        await wait_dials(dialer, 4)  # the first round: the whole pool at once
        # (each dial fails within the step that made it, before this task runs again)
        # Four failures of one round count as one step, not four.
        assert client.retry_delay == BACKOFF_INITIAL
        await wait_dials(dialer, 6)  # then one probe at a time, each doubling the delay
        assert client.retry_delay == BACKOFF_INITIAL * 2**2
        # Never connected yet (the shadow pod is starting): the delay stays short.
        await wait_dials(dialer, 7)
        assert client.retry_delay == BACKOFF_MAX_CONNECTING < BACKOFF_INITIAL * 2**3
        assert not client.ready
        assert client.stats.open_failures >= 7
        assert client.state.startswith("reconnecting (cannot reach the shadow at shadow.test")
    finally:
        await client.stop()
    assert client.state == "stopped"


class CountingTcpDialer(TcpDialer):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.dialled = asyncio.Event()

    async def dial(self) -> Stream:
        try:
            return await super().dial()
        finally:
            asyncio.get_running_loop().call_soon(self.dialled.set)  # after the failure counts


async def test_once_connected_a_lost_tunnel_backs_off_beyond_the_connecting_cap() -> None:
    """A shadow that accepted once and then went away is retried ever more slowly (a
    broken port-forward must not hammer the API server)."""
    accepted = asyncio.Event()

    async def shadow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(wire.hello(secret)))
        writer.write(wire.ACCEPTED)
        await writer.drain()
        accepted.set()
        writer.close()  # lost while idle

    secret = new_secret()
    server = await asyncio.start_server(shadow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dialer = CountingTcpDialer("127.0.0.1", port)
    client = TunnelClient(dialer, secret, {8080: 9090}, pool=1)
    client.start()
    try:
        async with asyncio.timeout(60):
            await accepted.wait()
            server.close()
            await server.wait_closed()
            while client.retry_delay <= BACKOFF_MAX_CONNECTING:
                dialer.dialled.clear()
                await dialer.dialled.wait()  # each failed dial doubles the delay
        assert client.stats.opened >= 1
    finally:
        await client.stop()
