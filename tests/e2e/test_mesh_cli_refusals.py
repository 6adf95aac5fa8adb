"""`localmesh mesh` (the real CLI) refused by the cluster: a user lacking one permission,
and a router image that cannot be pulled. Each is one clear line, exit 1, no stack trace,
and the namespace is left exactly as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmesh.clustermesh.session import needed_permissions
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.up_helpers import eventually, run_cli
from tests.integration.mesh_helpers import (
    as_rules,
    kube_for,
    kubeconfig_with,
    local_server,
    managed_objects,
    namespace_objects,
    service_json,
    wait_managed_gone,
)

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory


def mesh_args(port: int) -> list[str]:
    return ["mesh", "billing/billing-api", "--expose", f"{port}:8080", "--version-mark", "dev"]


def error_lines(stderr: str) -> list[str]:
    """What the user reads: every line a `localmesh: error:` line, no traceback."""
    assert "Traceback" not in stderr, stderr
    prefix = "localmesh: error:"
    lines = stderr.splitlines()
    assert lines and all(line.startswith(prefix) for line in lines), stderr
    return [line.removeprefix(prefix).strip() for line in lines]


async def test_a_user_lacking_one_permission_is_told_which_and_nothing_changes(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    admin = kube_for(sandbox)
    wanted = needed_permissions("billing", "billing-api")
    missing = next(p for p in wanted if p.resource == "rolebindings" and p.verb == "create")
    kubeconfig = Path(
        await kubeconfig_with(sandbox, admin, as_rules([p for p in wanted if p != missing]))
    )
    await admin.close()
    service_before = await service_json(sandbox)
    objects_before = namespace_objects(sandbox)
    async with local_server() as port:
        result = await run_cli(tmp_path, *mesh_args(port), kubeconfig=kubeconfig)
    assert result.returncode == 1, result.stderr
    lines = error_lines(result.stderr)
    assert lines[0] == "missing permissions to mesh billing/billing-api (nothing was changed):"
    # Exactly the one missing permission, on a line of its own, as a command to run.
    can_i = [line for line in lines if "kubectl auth can-i" in line]
    assert can_i == lines[1:] == [missing.can_i("billing")]
    # ... and that command, run as-is with real kubectl, says what localmesh said.
    command = can_i[0].split()[1:]
    as_user = await sandbox_fixtures.kubectl(sandbox, *command, f"--kubeconfig={kubeconfig}")
    assert as_user.stdout.strip() == "no", as_user.stdout + as_user.stderr
    as_admin = await sandbox_fixtures.kubectl(sandbox, *command)
    assert as_admin.stdout.strip() == "yes", as_admin.stdout + as_admin.stderr
    assert result.stdout == ""
    assert await service_json(sandbox) == service_before
    assert namespace_objects(sandbox) == objects_before
    assert await managed_objects(sandbox) == []


async def test_an_image_that_cannot_be_pulled_is_one_line_and_leaves_nothing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    service_before = await service_json(sandbox)
    objects_before = namespace_objects(sandbox)
    image = "nowhere.invalid/not-an-image:0"
    async with local_server() as port:
        result = await run_cli(
            tmp_path,
            *mesh_args(port),
            "--router-image",
            image,
            kubeconfig=sandbox.kubeconfig_path,
            seconds=120,
        )
    assert result.returncode == 1, result.stderr
    (first,) = error_lines(result.stderr)
    assert "cannot start: " in first and ("ErrImagePull" in first or "ImagePullBackOff" in first)
    assert image in first, first
    assert "Ctrl-C" not in result.stdout  # it never claimed to be meshed
    assert await service_json(sandbox) == service_before
    await wait_managed_gone(sandbox)

    async def as_before() -> bool:
        return namespace_objects(sandbox) == objects_before

    # The router's pods go asynchronously (their Deployment is deleted, as in a cluster).
    await eventually(as_before, seconds=30, what="the namespace as before", every=0.2)
