"""Pytest fixtures that start a sandbox cluster. Bind them in a test module (or conftest):

    from tests import sandbox_fixtures

    sandbox = sandbox_fixtures.sandbox
    sandbox_factory = sandbox_fixtures.sandbox_factory

sandbox                      the default scenario (users-api, billing-api, admin-web), all
                             pods Ready; a fresh cluster per test (starts in ~20 ms)
sandbox_factory(scenario=None, **kw) -> Sandbox
                             started with any Scenario and Sandbox options; stopped after
kubectl(sb, *args, input=None) -> KubectlResult
                             runs the real kubectl against `sb` without blocking the loop
kube_client(sb) -> kubernetes.client.ApiClient
                             the official client configured from the sandbox's kubeconfig
                             (it is synchronous: call it through asyncio.to_thread)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localmesh.sandbox import Sandbox, Scenario
from localmesh.sandbox.resources import ENDPOINTSLICES

SandboxFactory = Callable[..., Awaitable[Sandbox]]
__all__ = [
    "ENDPOINTSLICES",
    "KubectlResult",
    "kube_client",
    "kubectl",
    "sandbox",
    "sandbox_factory",
]


@dataclass(frozen=True)
class KubectlResult:
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> KubectlResult:
        assert self.returncode == 0, f"kubectl failed ({self.returncode}): {self.stderr}"
        return self


async def kubectl(
    sb: Sandbox, *args: str, input: str | None = None, seconds: float = 30.0, **env: str
) -> KubectlResult:
    """Run the real kubectl (the /usr/bin dispatcher picks the version the sandbox reports)."""
    proc = await asyncio.create_subprocess_exec(
        "kubectl",
        *args,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=sb.env(**env),
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(input.encode() if input is not None else None), seconds
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return KubectlResult(proc.returncode, out.decode(), err.decode())


def kube_client(sb: Sandbox, token: str | None = None) -> Any:
    """An ApiClient of the official client, loaded from the sandbox's kubeconfig."""
    from kubernetes import client, config

    configuration = client.Configuration()
    load: Any = config.load_kube_config
    load(config_file=str(sb.kubeconfig_path), client_configuration=configuration)
    if token is not None:
        configuration.api_key = {"BearerToken": f"Bearer {token}"}
        configuration.refresh_api_key_hook = None
    return client.ApiClient(configuration)


@pytest.fixture
async def sandbox_factory(tmp_path: Path) -> AsyncIterator[SandboxFactory]:
    started: list[Sandbox] = []

    async def start(scenario: Scenario | None = None, **kwargs: Any) -> Sandbox:
        kwargs.setdefault("kubeconfig_path", tmp_path / f"kubeconfig-{len(started)}")
        sb = Sandbox(scenario, **kwargs)
        started.append(sb)
        await sb.up()
        return sb

    yield start
    for sb in reversed(started):
        await sb.down()


@pytest.fixture
async def sandbox(sandbox_factory: SandboxFactory) -> Sandbox:
    return await sandbox_factory()
