"""The sandbox's exec-plugin kubeconfig: real kubectl runs the plugin, and the API server
refuses a plugin token once its expirationTimestamp has passed."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime

import pytest

from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.sandbox_fixtures import SandboxFactory, kube_client, kubectl

pytestmark = pytest.mark.integration
sandbox_factory = sandbox_fixtures.sandbox_factory

SECONDS = 2.0


async def _plugin_credential(sb: Sandbox) -> dict[str, str]:
    assert sb.exec_credentials is not None
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(sb.exec_credentials.plugin_path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    status: dict[str, str] = json.loads(out)["status"]
    return status


async def test_kubectl_runs_the_plugin_and_expired_tokens_are_refused(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(exec_token_seconds=SECONDS)
    assert "exec" in sb.kubeconfig_path.read_text()
    (await kubectl(sb, "get", "pods", "-n", "billing")).check()
    credential = await _plugin_credential(sb)
    expiry = datetime.fromisoformat(credential["expirationTimestamp"]).timestamp()
    assert expiry - time.time() <= SECONDS + 1

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CoreV1Api(kube_client(sb, credential["token"]))
    await asyncio.to_thread(api.list_namespace)  # valid until it expires

    # What is awaited here is the passing of time itself: the token's expiry.
    await asyncio.sleep(max(0.0, expiry + 0.5 - time.time()))
    with pytest.raises(ApiException) as refused:
        await asyncio.to_thread(api.list_namespace)
    assert refused.value.status == 401
    assert sb.exec_credentials is not None and sb.exec_credentials.expired_refused >= 1
