"""`localmesh mesh --mode manual --apply` end to end on a sandbox with real CRDs installed:
Istio's DestinationRule and VirtualService (built from Istio's typed models) and Gateway
API's HTTPRoute (its pinned schema). The applied rules are read back with kubectl; Ctrl-C,
and SIGKILL followed by `mesh clean`, remove them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localmesh.clustermesh import manifests as m
from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.crd_helpers import crd_yaml, httproute_crd, istio_crds
from tests.e2e.test_mesh_manual import (
    kubectl_json,
    local_app,
    namespace_objects,
    printed_rules,
    ready_shadow,
    start_manual,
    stop,
    wait_unchanged,
)
from tests.e2e.up_helpers import eventually, run_cli
from tests.integration.mesh_helpers import wait_managed_gone
from tests.unit.test_clustermesh_manual import istio_round_trip

pytestmark = pytest.mark.e2e
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory
__all__ = ["local_app"]

ISTIO_RULES = "destinationrules.networking.istio.io,virtualservices.networking.istio.io"


async def install(sb: Sandbox, *crds: dict[str, Any]) -> None:
    (await sandbox_fixtures.kubectl(sb, "apply", "-f", "-", input=crd_yaml(*crds))).check()


async def rules_in_cluster(sb: Sandbox, kinds: str) -> list[Any]:
    items = (await kubectl_json(sb, "get", kinds, "-n", "billing"))["items"]
    return sorted(items, key=lambda i: str(i["kind"]))


def without_server_fields(obj: Any) -> Any:
    md = {
        k: v
        for k, v in obj["metadata"].items()
        if k not in ("uid", "resourceVersion", "creationTimestamp", "generation")
    }
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": md}


async def test_apply_creates_istio_rules_and_ctrl_c_removes_them(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    await install(sandbox, *istio_crds())
    before = await namespace_objects(sandbox)
    proc, output = await start_manual(sandbox, local_app, tmp_path, "--apply")
    try:
        await ready_shadow(sandbox)
        applied = await rules_in_cluster(sandbox, ISTIO_RULES)
        assert [r["kind"] for r in applied] == ["DestinationRule", "VirtualService"]
        # What the cluster holds is what was printed (and valid by Istio's models).
        assert [without_server_fields(r) for r in applied] == printed_rules(output)
        for rule in applied:
            assert rule["metadata"]["labels"][m.MANAGED_BY_LABEL] == m.MANAGER
            istio_round_trip(without_server_fields(rule))
            assert f"{rule['kind']} billing/{rule['metadata']['name']} (applied)" in output
        res = await sandbox_fixtures.kubectl(sandbox, "get", "vs", "-n", "billing")
        assert res.check().stdout.split()[:4] == ["NAME", "GATEWAYS", "HOSTS", "AGE"]
    finally:
        out = await stop(proc)
    assert "left billing/billing-api" in out
    assert await rules_in_cluster(sandbox, ISTIO_RULES) == []
    await wait_unchanged(sandbox, before)


async def test_applied_rules_are_cleaned_after_sigkill(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    await install(sandbox, *istio_crds())
    before = await namespace_objects(sandbox)
    proc, _ = await start_manual(sandbox, local_app, tmp_path, "--apply")
    try:
        await ready_shadow(sandbox)
        assert len(await rules_in_cluster(sandbox, ISTIO_RULES)) == 2
    finally:
        proc.kill()
        await proc.wait()
    assert len(await rules_in_cluster(sandbox, ISTIO_RULES)) == 2  # nobody removed them
    kc = sandbox.kubeconfig_path

    async def cleaned() -> str | None:
        done = await run_cli(tmp_path, "mesh", "clean", "-n", "billing", kubeconfig=kc)
        assert done.returncode == 0, done.stderr
        return done.stdout if "deleted Pod" in done.stdout else None

    report = await eventually(cleaned, seconds=60, what="clean to remove the session", every=1)
    assert "deleted DestinationRule billing/" in report, report
    assert "deleted VirtualService billing/" in report
    assert await rules_in_cluster(sandbox, ISTIO_RULES) == []
    await wait_managed_gone(sandbox)
    await wait_unchanged(sandbox, before)


async def test_shadow_service_applies_an_httproute_where_istio_is_absent(
    sandbox: Sandbox, local_app: int, tmp_path: Path
) -> None:
    await install(sandbox, httproute_crd())
    before = await namespace_objects(sandbox)
    proc, output = await start_manual(sandbox, local_app, tmp_path, "--shadow-service", "--apply")
    try:
        await ready_shadow(sandbox)
        (route,) = await rules_in_cluster(sandbox, "httproutes")
        printed = [d for d in printed_rules(output) if d["kind"] == "HTTPRoute"]
        assert [without_server_fields(route)] == printed
        assert f"HTTPRoute billing/{route['metadata']['name']} (applied)" in output
        backend = route["spec"]["rules"][0]["backendRefs"][0]["name"]
        shadow_svc = await kubectl_json(sandbox, "get", "service", backend, "-n", "billing")
        assert shadow_svc["metadata"]["labels"][m.MANAGED_BY_LABEL] == m.MANAGER
    finally:
        await stop(proc)
    assert await rules_in_cluster(sandbox, "httproutes") == []
    await wait_unchanged(sandbox, before)
