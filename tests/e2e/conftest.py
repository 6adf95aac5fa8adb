"""Fixtures of the `localmesh up` end-to-end tests (tests/e2e/test_up_*.py).

up_sandbox        the default sandbox scenario (the seed's example), shared by a module;
                  modules using it run in one event loop per module (see `UP_LOOP`)
up_runtime_dir    a private XDG_RUNTIME_DIR (0700) for this test's meshes
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from localmesh.sandbox import Sandbox
from tests.e2e.up_helpers import private_runtime_dir

# The sandbox serves from the loop of the tests that use it: one loop per module.
UP_LOOP = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def up_sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    kubeconfig = tmp_path_factory.mktemp("up-sandbox") / "kubeconfig"
    async with Sandbox.start(kubeconfig_path=kubeconfig) as sb:
        yield sb


@pytest.fixture
def up_runtime_dir(tmp_path: Path) -> Path:
    return private_runtime_dir(tmp_path)
