"""The sandbox holds 1,000 services (one http-echo pod each) for the scale benchmarks."""

from __future__ import annotations

import asyncio
import time

import pytest

from localmesh.sandbox import scale_scenario
from localmesh.sandbox.resources import ENDPOINTSLICES, SERVICES
from tests import sandbox_fixtures
from tests.sandbox_fixtures import SandboxFactory, kubectl

pytestmark = pytest.mark.integration
sandbox_factory = sandbox_fixtures.sandbox_factory


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


@pytest.mark.timeout(120)
async def test_thousand_services(sandbox_factory: SandboxFactory) -> None:
    before = rss_mib()
    started = time.monotonic()
    sb = await sandbox_factory(scale_scenario(1000, namespaces=4), ready_timeout=90)
    up_seconds = time.monotonic() - started
    grown = rss_mib() - before
    print(f"1000 services up in {up_seconds:.2f}s, RSS +{grown:.0f} MiB")
    assert len(list(sb.store.iter(SERVICES))) == 1000
    slices = list(sb.store.iter(ENDPOINTSLICES))
    assert len(slices) == 1000
    assert all(s["endpoints"][0]["conditions"]["ready"] for s in slices)
    assert grown < 500, f"RSS grew by {grown:.0f} MiB"
    # kubectl lists them all, and a pod far down the list answers on its own IP.
    res = (await kubectl(sb, "get", "svc", "-A", "--no-headers")).check()
    assert len(res.stdout.splitlines()) == 1000
    ip = sb.pods("scale-3", {"app": "svc-0999"})[0]["status"]["podIP"]
    reader, writer = await asyncio.open_connection(ip, 8080)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()
