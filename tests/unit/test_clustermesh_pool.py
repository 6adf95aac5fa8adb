"""The tunnel pool's retry schedule, driven through the Dialer seam by dialers that fail
or that never get an answer (no sockets, no monkeypatching)."""

from __future__ import annotations

import asyncio

from localmesh.clustermesh.tunnel_laptop import BACKOFF_INITIAL, TunnelClient
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


async def test_failed_opens_back_off_once_per_round_up_to_the_cap() -> None:
    dialer = RefusingDialer()
    client = TunnelClient(dialer, new_secret(), {8080: 9090}, pool=4)
    client.start()
    try:
        await wait_dials(dialer, 4)  # the first round: the whole pool at once
        # (each dial fails within the step that made it, before this task runs again)
        # Four failures of one round count as one step, not four.
        assert client.retry_delay == BACKOFF_INITIAL
        await wait_dials(dialer, 7)  # then one probe at a time, each doubling the delay
        assert client.retry_delay == BACKOFF_INITIAL * 2**3
        assert not client.ready
        assert client.stats.open_failures >= 7
        assert client.state.startswith("reconnecting (cannot reach the shadow at shadow.test")
    finally:
        await client.stop()
    assert client.state == "stopped"
