"""`up --bind` beyond loopback: the mesh still starts, with a warning saying what it exposes."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmesh.sandbox import Sandbox
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import free_port, routed_to, seed_services, start_up

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]


@pytest.mark.parametrize("bind", ["0.0.0.0", "127.0.0.1"])
async def test_bind_beyond_loopback_warns_what_becomes_reachable(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path, bind: str
) -> None:
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(seed_services(port))
    up = await start_up(
        up_runtime_dir, services, up_sandbox.kubeconfig_path, "--bind", bind, "--no-edit-hosts"
    )
    try:
        assert await routed_to(port, "billing-api.localhost", "billing") is not None
        warnings = [e["event"] for e in up.logs() if "--bind" in e["event"]]
    finally:
        assert await up.stop() == 0
    if bind == "127.0.0.1":
        assert warnings == []
        return
    assert len(warnings) == 1, up.log
    assert up.logs()[0]["level"] == "warning"  # said before anything else
    assert "every network interface of this machine" in warnings[0]
    assert f"every service in {services}" in warnings[0]
