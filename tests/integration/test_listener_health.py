"""ListenerHealth against the real Envoy (static bootstrap): what it sees and repairs."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from localmesh.listenerhealth import ListenerHealth
from tests.integration.backends import curl_json
from tests.integration.conftest import SupervisorFactory, free_port, process_exists
from tests.integration.test_envoy_supervisor import HttpBackends, static_bootstrap

pytestmark = pytest.mark.integration


async def test_a_drained_listener_is_seen_and_repaired_by_a_new_envoy(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    alpha = await http_backends("alpha")
    port = free_port()
    supervisor = envoy_supervisors(static_bootstrap(port, {"alpha.localhost": alpha.port}))
    await supervisor.start()
    health = ListenerHealth(supervisor, "127.0.0.1", port)
    health.repair_after = 3600.0
    assert (await health.check()).ok
    first = supervisor.pid
    assert first is not None

    assert supervisor.admin_address is not None
    drain = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--unix-socket", supervisor.admin_address, "-X", "POST",
        "http://envoy-admin/drain_listeners", stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await drain.wait() == 0
    check = await health.check()
    assert not check.ok and check.repaired == ""
    assert check.problem == (
        f"nothing accepts connections on 127.0.0.1:{port} although Envoy (pid {first}) "
        "runs: its listener was drained or closed"
    )
    await health.check_and_repair()
    await health.check_and_repair()
    assert supervisor.pid == first  # a fault younger than repair_after is left alone
    health.repair_after = 0.0
    await health.check_and_repair()
    assert supervisor.pid not in (None, first)
    check = await health.check()
    assert check.ok and check.repaired.startswith("Envoy restarted at ")
    assert check.repaired.endswith("(" + f"nothing accepts connections on 127.0.0.1:{port}"
                                   f" although Envoy (pid {first}) runs: its listener was "
                                   "drained or closed)")  # fmt: skip
    assert (await curl_json(port, "alpha.localhost"))["backend"] == "alpha"


async def test_a_stopped_envoy_is_seen_and_replaced(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    alpha = await http_backends("alpha")
    port = free_port()
    supervisor = envoy_supervisors(static_bootstrap(port, {"alpha.localhost": alpha.port}))
    await supervisor.start()
    health = ListenerHealth(supervisor, "127.0.0.1", port)
    health.repair_after = 0.0
    first = supervisor.pid
    assert first is not None
    os.kill(first, signal.SIGSTOP)
    check = await health.check()
    assert not check.ok and "does not answer its admin API" in check.problem
    await health.check_and_repair()
    assert not process_exists(first)
    assert (await health.check()).ok
    assert (await curl_json(port, "alpha.localhost"))["backend"] == "alpha"
