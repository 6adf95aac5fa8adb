"""`localmesh init -n ...` against the sandbox's live Services, then `localmesh up` (no -f)
on the file it wrote: real objects, real CLI, real curl and grpcio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from localmesh.config import load_config
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    CliResult,
    UpProcess,
    free_port,
    grpc_greet,
    http_get,
    private_runtime_dir,
    run_cli,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

# Beside the default scenario: a name in two namespaces (billing-api), a Service of
# several ports, and the three kinds init leaves out.
EXTRA = """\
apiVersion: v1
kind: Service
metadata: {name: billing-api, namespace: users}
spec:
  selector: {app: frontend}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: users-both, namespace: users}
spec:
  selector: {app: users-api}
  ports:
  - {name: api, port: 50051, targetPort: grpc, appProtocol: grpc}
  - {name: debug, port: 9999, targetPort: grpc}
---
apiVersion: v1
kind: Service
metadata: {name: users-headless, namespace: users}
spec:
  clusterIP: None
  selector: {app: users-api}
  ports: [{name: grpc, port: 50051}]
---
apiVersion: v1
kind: Service
metadata: {name: users-outside, namespace: users}
spec: {type: ExternalName, externalName: users.example.com}
---
apiVersion: v1
kind: Service
metadata: {name: users-manual, namespace: users}
spec:
  ports: [{port: 80}]
"""

EXPECTED_HOSTS = {
    "billing-api.billing.localhost": ("billing", "billing-api", None, None),
    "billing-api.users.localhost": ("users", "billing-api", None, None),
    "frontend.localhost": ("users", "frontend", None, None),
    "users-api.localhost": ("users", "users-api", None, "grpc"),
    "users-both.localhost": ("users", "users-both", "api", "grpc"),
    "debug.users-both.localhost": ("users", "users-both", "debug", None),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(up_sandbox: Sandbox) -> AsyncIterator[Sandbox]:
    applied = await sandbox_fixtures.kubectl(up_sandbox, "apply", "-f", "-", input=EXTRA)
    applied.check()
    yield up_sandbox


async def init(sb: Sandbox, workdir: Path, *args: str, seconds: float = 60) -> CliResult:
    return await run_cli(
        private_runtime_dir(workdir)
        if not (workdir / "xdg-runtime").exists()
        else workdir / "xdg-runtime",
        "init",
        *args,
        kubeconfig=sb.kubeconfig_path,
        cwd=workdir,
        seconds=seconds,
    )


async def test_init_writes_the_live_services(cluster: Sandbox, tmp_path: Path) -> None:
    port = free_port()
    done = await init(
        cluster, tmp_path, "-n", "billing", "-n", "users", "--listener-port", str(port)
    )
    assert done.returncode == 0, done
    assert done.stdout.startswith("wrote services.yaml: 6 hosts from billing, users"), done
    written = tmp_path / "services.yaml"
    text = written.read_text()
    assert text.startswith("# services.yaml for localmesh, written by `localmesh init -n billing")
    config = load_config(written)  # the project's own loader accepts it
    assert config.listener_port == port
    got = {
        e.host: (e.namespace, e.service, e.port_name, None if e.inferred else e.protocol.value)
        for e in config.services
    }
    assert got == EXPECTED_HOSTS
    assert "  # skipped users-headless: headless" in text
    assert "  # skipped users-outside: ExternalName (users.example.com)" in text
    assert "  # skipped users-manual: no selector" in text


async def test_init_never_overwrites_without_force(cluster: Sandbox, tmp_path: Path) -> None:
    target = tmp_path / "mine.yaml"
    target.write_text("# my own edits\n")
    refused = await init(cluster, tmp_path, "-n", "billing", "-o", "mine.yaml")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "localmesh: error: mine.yaml exists: pass --force to overwrite it, or -o another file"
    )
    assert target.read_text() == "# my own edits\n"
    forced = await init(cluster, tmp_path, "-n", "billing", "-o", "mine.yaml", "--force")
    assert forced.returncode == 0, forced
    assert "billing-api.localhost" in {e.host for e in load_config(target).services}
    leftovers = await asyncio.to_thread(lambda: list(tmp_path.glob(".mine.yaml.*")))
    assert leftovers == []  # no temporary file left


async def test_a_missing_namespace_is_a_clear_error(cluster: Sandbox, tmp_path: Path) -> None:
    failed = await init(cluster, tmp_path, "-n", "billing", "-n", "billng")
    assert failed.returncode == 1
    (line,) = failed.stderr.splitlines()
    assert line.startswith("localmesh: error: namespace 'billng' does not exist (context ")
    assert line.endswith(
        "; did you mean 'billing'? namespaces: admin, billing, default, kube-node-lease, "
        "kube-public, kube-system, users"
    ), line
    assert not (tmp_path / "services.yaml").exists()


async def test_up_serves_the_generated_file(cluster: Sandbox, tmp_path: Path) -> None:
    port = free_port()
    done = await init(
        cluster, tmp_path, "-n", "billing", "-n", "users", "--listener-port", str(port)
    )
    assert done.returncode == 0, done
    up = await UpProcess.start(
        tmp_path / "xdg-runtime",
        "--kubeconfig",
        cluster.kubeconfig_path,
        "--no-edit-hosts",
        cwd=tmp_path,
    )
    try:
        await up.wait_listening()
        assert "using ./services.yaml (no -f given)" in up.stderr, up.describe()
        reply = await http_get(port, "billing-api.billing.localhost", "/hello")
        assert reply.status == 200, up.describe()
        assert reply.json()["namespace"] == "billing"
        greeted = await grpc_greet(port, "users-both.localhost")
        assert greeted.namespace == "users"
    finally:
        assert await up.stop() == 0, up.describe()


async def test_namespaces_complete_from_the_cluster(cluster: Sandbox, tmp_path: Path) -> None:
    script = """
source <(localmesh completion bash)
COMP_LINE="localmesh init -n "; COMP_POINT=${#COMP_LINE}
COMP_WORDS=(localmesh init -n ""); COMP_CWORD=3
_python_argcomplete localmesh
printf '%s\\n' "${COMPREPLY[@]}"
"""
    from tests.e2e.up_helpers import cli_env

    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(private_runtime_dir(tmp_path), cluster.kubeconfig_path),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert out.decode().split() == [
        "admin",
        "billing",
        "default",
        "kube-node-lease",
        "kube-public",
        "kube-system",
        "users",
    ]
