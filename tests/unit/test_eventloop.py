import asyncio

import uvloop

from localmesh import eventloop


async def loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_run_uses_uvloop_and_returns_the_result() -> None:
    assert eventloop.run(loop_type()) is uvloop.Loop
