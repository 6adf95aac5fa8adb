"""Is the mesh's one listener bound and serving? Checked, and repaired when it is not.

    health = ListenerHealth(envoy, "127.0.0.1", 8080)
    await health.run()               # a task: checks every CHECK_EVERY s, repairs lasting faults
    check = await health.check()     # at status time: the fact now, and the last repair

Two facts, both needed: Envoy's admin API answers (a stopped or looping Envoy does not, while
the kernel still completes connections to its listener), and the listener's address accepts
a TCP connection (a listener drained through the admin API is closed, although Envoy still
lists it). Envoy ignores LDS updates once its listeners were stopped, so re-pushing the
listener cannot bring it back: the repair is a new Envoy process, which binds the listener
again from the control plane's cache. A fault is repaired once checks have seen it for
REPAIR_AFTER seconds (LOCALMESH_REPAIR_AFTER overrides it), so a process that is just being
restarted is left alone. A listener Envoy cannot bind (its NACK is in status already) is
not "repaired": a new process could not bind it either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import datetime

import structlog

from localmesh.control import CheckStatus
from localmesh.envoy import EnvoySupervisor
from localmesh.errors import EnvoyError

log = structlog.get_logger(__name__)

CHECK_NAME = "listener"
CHECK_EVERY = 1.0  # seconds between periodic checks
ADMIN_TIMEOUT = 3.0  # a healthy Envoy answers /ready in milliseconds, even on a busy machine
CONNECT_TIMEOUT = 1.0
REPAIR_AFTER = 3.0  # seconds a fault lasts before Envoy is restarted
RESTART_TIMEOUT = 30.0  # a restarted Envoy is LIVE once it has its first CDS and LDS


def connect_address(bind: str) -> str:
    """Where a local client reaches a listener bound to `bind` (a wildcard: loopback)."""
    if bind in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind == "::":
        return "::1"
    return bind


async def _accepts(address: str, port: int) -> bool:
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()
    return True


def _listen(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class ListenerHealth:
    """Checks that Envoy serves the listener on (bind, port); restarts Envoy when not."""

    def __init__(self, envoy: EnvoySupervisor, bind: str, port: int) -> None:
        self._envoy = envoy
        self._address = connect_address(bind)
        self.port = port  # follows the config (`up --watch` may change listener_port)
        self.repair_after = float(os.environ.get("LOCALMESH_REPAIR_AFTER", REPAIR_AFTER))
        self._since: float | None = None  # loop time the current fault was first seen
        self.last_repair = ""

    async def probe(self) -> str:
        """Why the listener is not serving right now; "" when it is."""
        envoy = self._envoy
        pid = envoy.pid
        if pid is None:
            return "no Envoy process (its supervisor is starting a new one)"
        listen = _listen(self._address, self.port)
        if not await envoy.answers(ADMIN_TIMEOUT):
            return (
                f"Envoy (pid {pid}) does not answer its admin API within {ADMIN_TIMEOUT:g}s "
                "(stopped or stuck): its listener serves nothing"
            )
        if not await _accepts(self._address, self.port):
            return (
                f"nothing accepts connections on {listen} although Envoy (pid {pid}) runs: "
                "its listener was drained or closed"
            )
        return ""

    async def check(self) -> CheckStatus:
        problem = await self.probe()
        return CheckStatus(
            name=CHECK_NAME, ok=not problem, problem=problem, repaired=self.last_repair
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)  # the checking interval, not synchronisation
            await self.check_and_repair()

    async def check_and_repair(self) -> None:
        problem = await self.probe()
        now = asyncio.get_running_loop().time()
        if not problem or self._envoy.pid is None or self.port in self._envoy.listener_errors:
            self._since = None  # no fault, a restart under way, or one a restart cannot fix
            return
        if self._since is None:
            self._since = now
        if now - self._since < self.repair_after:
            return
        log.error("envoy's listener is not serving; restarting envoy", reason=problem)
        try:
            async with asyncio.timeout(RESTART_TIMEOUT):
                await self._envoy.restart(problem)
        except (EnvoyError, TimeoutError) as exc:
            log.error("envoy restart did not complete", error=str(exc) or "timed out")
            return
        self._since = None
        when = datetime.now().astimezone().strftime("%H:%M:%S")
        self.last_repair = f"Envoy restarted at {when} ({problem})"
        log.info("envoy restarted to repair its listener", pid=self._envoy.pid)
