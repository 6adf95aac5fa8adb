"""RoutedWatch's loop: how long it waits after each kind of answer, and that `stop` never
raises (the caller's leave runs right after it). The questions themselves (a router pod
the Service selects, through a port-forward) run against the sandbox in the integration
tests; here `check` answers from a script."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest
import structlog

from localmesh.clustermesh import routed_watch as rw
from localmesh.clustermesh.routed_watch import RoutedAnswer, RoutedWatch
from localmesh.forward import Connector
from localmesh.kube.objects import KubeObjects


class Scripted(RoutedWatch):
    """A watch whose answers come from `script` (a callable raises instead); the pauses it
    takes are recorded, and once the script is done `finished` is set and it waits."""

    def __init__(self, script: list[RoutedAnswer | Callable[[], Any]]) -> None:
        super().__init__(cast(KubeObjects, None), cast(Connector, None), "ns", "web", "s1")
        self.script = script
        self.pauses: list[float] = []
        self.finished = asyncio.Event()

    async def check(self) -> RoutedAnswer:
        step = self.script.pop(0)
        if isinstance(step, RoutedAnswer):
            return step
        step()
        raise AssertionError("a scripted failure raises")

    async def _pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if not self.script:
            self.finished.set()
            await asyncio.Event().wait()


HELD = RoutedAnswer(False, "mark held by ana@laptop (session s0)", held=True)


@pytest.mark.parametrize(
    ("answer", "least"),
    [
        # Answered at once by the router, and not about to change: the longest pause.
        (HELD, rw.RECHECK_SECONDS),
        (RoutedAnswer(True), rw.RECHECK_SECONDS),
        # Quick answers of every other kind still leave a pause (no back-to-back asking).
        (RoutedAnswer(False, "shadow pod not Ready"), rw.ERROR_PAUSE / 2),
        (RoutedAnswer(False, "Lease expired 3s ago"), rw.ERROR_PAUSE / 2),
        (RoutedAnswer(False, "no Ready router pod"), rw.ERROR_PAUSE / 2),
        (RoutedAnswer(False, "not meshed: service ns/web is not meshed now"), rw.ERROR_PAUSE / 2),
        (RoutedAnswer(False, "router unreachable: refused"), rw.ERROR_PAUSE / 2),
    ],
)
async def test_no_answer_has_the_watch_ask_again_at_once(
    answer: RoutedAnswer, least: float
) -> None:
    watch = Scripted([answer, answer])
    watch.start()
    try:
        async with asyncio.timeout(30):
            await watch.finished.wait()
    finally:
        await watch.stop()
    assert len(watch.pauses) == 2 and all(p >= least for p in watch.pauses), watch.pauses
    assert watch.answer == answer


def test_a_long_poll_that_took_its_time_is_not_paused_again() -> None:
    not_yet = RoutedAnswer(False, "router x has no route for it")
    assert rw.pause_after(not_yet, rw.NOT_ROUTED_WAIT) == 0.0
    assert rw.pause_after(HELD, rw.NOT_ROUTED_WAIT) == rw.RECHECK_SECONDS


async def test_stop_logs_what_the_watch_died_of_and_does_not_raise() -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    watch = Scripted([boom])
    watch.start()
    task = watch._task
    assert task is not None
    async with asyncio.timeout(30):
        await asyncio.wait({task})
    with structlog.testing.capture_logs() as logs:
        await watch.stop()  # `mesh` leaves right after this: it must not raise
    failed = [e for e in logs if e["event"] == "mesh routing watch failed"]
    assert failed and "boom" in failed[0]["error"], logs
    await watch.stop()  # twice is harmless
