"""The sandbox's garbage collector works for every type, as the real one does; Secrets
take `stringData`; a pod that opts out of its service-account token still starts."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from localmesh.sandbox import Sandbox, Scenario
from localmesh.sandbox.resources import (
    BY_PLURAL,
    CONFIGMAPS,
    DEPLOYMENTS,
    LEASES,
    PODS,
    REPLICASETS,
    ROLES,
)
from tests import sandbox_fixtures
from tests.crd_helpers import _crd, crd_yaml, istio_crds
from tests.integration.test_sandbox_processes import PROBE, agent_deployment
from tests.sandbox_fixtures import SandboxFactory, kubectl

pytestmark = pytest.mark.integration
sandbox_factory = sandbox_fixtures.sandbox_factory

SECRETS = BY_PLURAL["secrets"]
NAMESPACE = "mesh"
EMPTY = Scenario(namespaces=(NAMESPACE,))


def owned_by(*owners: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": o["apiVersion"],
            "kind": o["kind"],
            "name": o["metadata"]["name"],
            "uid": o["metadata"]["uid"],
        }
        for o in owners
    ]


def lease(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NAMESPACE}, "spec": {"holderIdentity": "a"}}


def config_map(name: str, owners: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NAMESPACE, "ownerReferences": owners}}


def names(sb: Sandbox, rtype: Any) -> set[str]:
    return {o["metadata"]["name"] for o in sb.store.iter(rtype, NAMESPACE)}


async def test_deleting_an_owner_collects_dependents_of_every_type(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(EMPTY)
    cluster = sb.cluster
    owner = cluster.create(LEASES, lease("owner"))
    secret = cluster.create(
        SECRETS,
        {"metadata": {"name": "s", "namespace": NAMESPACE, "ownerReferences": owned_by(owner)}},
    )
    role = cluster.create(
        ROLES,
        {
            "metadata": {"name": "r", "namespace": NAMESPACE, "ownerReferences": owned_by(owner)},
            "rules": [],
        },
    )
    # A chain: the config map is the secret's, the secret the lease's.
    cluster.create(CONFIGMAPS, config_map("chained", owned_by(secret)))
    # Two owners: it stays while one of them does, without the reference to the other.
    other = cluster.create(LEASES, lease("other"))
    cluster.create(CONFIGMAPS, config_map("shared", owned_by(owner, other)))
    assert role["metadata"]["uid"]

    (await kubectl(sb, "delete", "lease", "owner", "-n", NAMESPACE)).check()
    await sb.wait_for(
        lambda: (
            not names(sb, SECRETS)
            and not names(sb, ROLES)
            and "chained" not in names(sb, CONFIGMAPS)
        ),
        what="the dependents to be collected",
    )
    shared = sb.store.get(CONFIGMAPS, NAMESPACE, "shared")
    await sb.wait_for(
        lambda: (
            sb.store.get(CONFIGMAPS, NAMESPACE, "shared")["metadata"]["ownerReferences"]
            == owned_by(other)
        ),
        what="the reference to the deleted owner to be dropped",
    )
    assert shared["metadata"]["name"] == "shared"


async def test_a_dependent_of_an_owner_already_gone_is_collected(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(EMPTY)
    owner = sb.cluster.create(LEASES, lease("owner"))
    sb.cluster.delete(LEASES, NAMESPACE, "owner")
    # Same name, new uid: not the owner it names.
    sb.cluster.create(LEASES, lease("owner"))
    sb.cluster.create(CONFIGMAPS, config_map("late", owned_by(owner)))
    unknown = [{"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": "x"}]
    sb.cluster.create(CONFIGMAPS, config_map("unknown-kind", unknown))
    await sb.wait_for(lambda: "late" not in names(sb, CONFIGMAPS), what="the late dependent")
    assert "unknown-kind" in names(sb, CONFIGMAPS)  # never collected on a guess


async def test_orphan_propagation_keeps_dependents_and_pods_go_gracefully(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(EMPTY)
    owner = sb.cluster.create(LEASES, lease("owner"))
    sb.cluster.create(CONFIGMAPS, config_map("kept", owned_by(owner)))
    (await kubectl(sb, "delete", "lease", "owner", "-n", NAMESPACE, "--cascade=orphan")).check()
    kept = sb.store.get(CONFIGMAPS, NAMESPACE, "kept")
    assert "ownerReferences" not in kept["metadata"]

    # A running pod owned by a lease terminates like any deleted pod.
    owner = sb.cluster.create(LEASES, lease("pod-owner"))
    pod = agent_deployment(readinessProbe=PROBE)["spec"]["template"]["spec"]
    pod["serviceAccountName"] = "default"
    sb.cluster.create(
        PODS,
        {
            "metadata": {
                "name": "owned",
                "namespace": NAMESPACE,
                "ownerReferences": owned_by(owner),
            },
            "spec": pod,
        },
    )
    await sb.wait_for(lambda: sb.ready_pod(NAMESPACE, "owned"), seconds=60, what="pod Ready")
    (await kubectl(sb, "delete", "lease", "pod-owner", "-n", NAMESPACE)).check()
    await sb.wait_for(lambda: "owned" not in names(sb, PODS), seconds=60, what="pod gone")


async def test_secret_string_data_is_stored_in_data(sandbox_factory: SandboxFactory) -> None:
    sb = await sandbox_factory(EMPTY)
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tunnel", "namespace": NAMESPACE},
        "data": {"a": base64.b64encode(b"old").decode(), "b": base64.b64encode(b"b").decode()},
        "stringData": {"a": "new", "c": "plain text"},
    }
    res = await kubectl(sb, "apply", "-f", "-", input=json.dumps(manifest))
    res.check()
    out = (await kubectl(sb, "get", "secret", "tunnel", "-n", NAMESPACE, "-o", "json")).check()
    stored = json.loads(out.stdout)
    assert "stringData" not in stored
    assert {k: base64.b64decode(v).decode() for k, v in stored["data"].items()} == {
        "a": "new",
        "b": "b",
        "c": "plain text",
    }
    # On update too (a replace sending stringData only adds over the stored data).
    current = sb.store.get(SECRETS, NAMESPACE, "tunnel")
    current["stringData"] = {"b": "changed"}
    updated = sb.cluster.replace(SECRETS, NAMESPACE, "tunnel", current)
    assert base64.b64decode(updated["data"]["b"]) == b"changed"
    assert "stringData" not in updated


async def test_a_pod_without_its_token_starts(sandbox_factory: SandboxFactory) -> None:
    sb = await sandbox_factory(EMPTY)
    deployment = agent_deployment(readinessProbe=PROBE)
    spec = deployment["spec"]["template"]["spec"]
    spec["serviceAccountName"] = "default"
    spec["automountServiceAccountToken"] = False
    sb.apply([deployment])
    await sb.wait_all_ready(60)
    (pod,) = sb.pods(NAMESPACE)
    kubelet = sb.cluster.kubelet
    directory = kubelet.pod_dir(kubelet.runtime(NAMESPACE, pod["metadata"]["name"]))
    assert directory.is_dir() and not (directory / "serviceaccount").exists()


async def test_foreground_deletion_keeps_the_owner_until_its_dependents_are_gone(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(EMPTY)
    deployment = agent_deployment(readinessProbe=PROBE)
    deployment["spec"]["template"]["spec"]["serviceAccountName"] = "default"
    sb.apply([deployment])
    await sb.wait_all_ready(60)
    sb.faults.termination_delay = 1.0  # the pod takes a while to go
    (await kubectl(sb, "delete", "deploy", "agent", "-n", NAMESPACE, "--cascade=foreground",
                   "--wait=false")).check()  # fmt: skip
    owner = sb.store.get(DEPLOYMENTS, NAMESPACE, "agent")
    assert owner["metadata"]["deletionTimestamp"]
    assert "foregroundDeletion" in owner["metadata"]["finalizers"]
    await sb.wait_for(
        lambda: sb.store.peek(DEPLOYMENTS, NAMESPACE, "agent") is None,
        seconds=60,
        what="the deployment gone after its replica set and pod",
    )
    assert not sb.pods(NAMESPACE) and not names(sb, REPLICASETS)


async def test_custom_resources_own_and_are_owned(sandbox_factory: SandboxFactory) -> None:
    sb = await sandbox_factory(EMPTY)
    res = await kubectl(sb, "apply", "-f", "-", input=crd_yaml(*istio_crds()))
    res.check()
    owner = sb.cluster.create(LEASES, lease("owner"))
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "dr", "namespace": NAMESPACE, "ownerReferences": owned_by(owner)},
        "spec": {"host": "billing-api"},
    }
    (await kubectl(sb, "apply", "-f", "-", input=json.dumps(rule))).check()
    stored = json.loads(
        (await kubectl(sb, "get", "destinationrule", "dr", "-n", NAMESPACE, "-o", "json"))
        .check()
        .stdout
    )
    sb.cluster.create(CONFIGMAPS, config_map("of-the-rule", owned_by(stored)))
    (await kubectl(sb, "delete", "lease", "owner", "-n", NAMESPACE)).check()

    async def gone() -> bool:
        out = await kubectl(sb, "get", "destinationrules", "-n", NAMESPACE, "-o", "name")
        return not out.check().stdout.strip() and "of-the-rule" not in names(sb, CONFIGMAPS)

    deadline = asyncio.get_running_loop().time() + 30
    while not await gone():
        assert asyncio.get_running_loop().time() < deadline, "the rule and its dependent stay"
        await asyncio.sleep(0.1)


async def test_a_custom_resource_reusing_a_builtin_plural_is_collected(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(EMPTY)
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    crd = _crd(
        "example.dev", "Lease", "leases", short=[], versions=("v1",), schema=schema, columns=[]
    )
    (await kubectl(sb, "apply", "-f", "-", input=crd_yaml(crd))).check()
    custom = next(t for t in sb.cluster.crds.types() if t.group == "example.dev")
    owner = sb.cluster.create(CONFIGMAPS, {"metadata": {"name": "owner", "namespace": NAMESPACE}})
    dependent = {"name": "dep", "namespace": NAMESPACE, "ownerReferences": owned_by(owner)}
    sb.cluster.create(
        custom, {"apiVersion": "example.dev/v1", "kind": "Lease", "metadata": dependent}
    )
    sb.cluster.create(LEASES, lease("dep"))  # the built-in kind of the same plural and name
    sb.cluster.delete(CONFIGMAPS, NAMESPACE, "owner")
    await sb.wait_for(
        lambda: not list(sb.store.iter(custom, NAMESPACE)), what="the custom dependent"
    )
    assert "dep" in names(sb, LEASES)  # not the one the owner had
