"""`up --watch` with each file watch backend: macOS's (watchfiles) is run here on Linux."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmesh.filewatch import BACKEND_ENV_VAR, BACKENDS
from localmesh.sandbox import Sandbox
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    eventually,
    free_port,
    routed_to,
    services_yaml,
    start_up,
    write_atomically,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

BILLING = {
    "host": "billing-api.localhost",
    "namespace": "billing",
    "service": "billing-api",
    "port_name": "http",
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_an_edit_is_applied_with_each_backend(
    up_sandbox: Sandbox,
    up_runtime_dir: Path,
    tmp_path: Path,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(BACKEND_ENV_VAR, backend)  # inherited by `up`
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(services_yaml(port, [BILLING]))
    up = await start_up(
        up_runtime_dir, services, up_sandbox.kubeconfig_path, "--watch", "--no-edit-hosts"
    )
    try:
        assert await routed_to(port, "billing-api.localhost", "billing")
        assert await routed_to(port, "new.localhost", "billing") is None
        new = {**BILLING, "host": "new.localhost"}
        write_atomically(services, services_yaml(port, [BILLING, new]))

        async def applied() -> str | None:
            return await routed_to(port, "new.localhost", "billing")

        await eventually(applied, seconds=10, what="the edit to be applied")
    finally:
        assert await up.stop() == 0, up.describe()
