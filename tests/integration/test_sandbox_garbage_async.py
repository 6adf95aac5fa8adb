"""The sandbox's garbage collector in its asynchronous mode (`faults.garbage_delay` > 0),
as a real cluster's: an owner goes at once, what it owned only later; a dependent whose
owner was recreated under the same name is collected too. Driven with real kubectl and
the official kubernetes client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from localmesh.sandbox import Sandbox, Scenario
from localmesh.sandbox.resources import CONFIGMAPS, DEPLOYMENTS, LEASES, REPLICASETS
from tests import sandbox_fixtures
from tests.integration.test_sandbox_garbage import config_map, lease, names, owned_by
from tests.integration.test_sandbox_processes import PROBE, agent_deployment
from tests.sandbox_fixtures import SandboxFactory, kubectl

pytestmark = pytest.mark.integration
sandbox_factory = sandbox_fixtures.sandbox_factory

NAMESPACE = "mesh"
EMPTY = Scenario(namespaces=(NAMESPACE,))
HELD = 3600.0  # the collector does nothing until the test calls collect_garbage_now()


def core(sb: Sandbox) -> client.CoreV1Api:
    return client.CoreV1Api(sandbox_fixtures.kube_client(sb))


async def configmap_names(sb: Sandbox) -> set[str]:
    listed: Any = await asyncio.to_thread(core(sb).list_namespaced_config_map, NAMESPACE)
    return {str(item.metadata.name) for item in listed.items} - {"kube-root-ca.crt"}


async def test_background_deletion_removes_the_owner_now_and_its_dependents_later(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(EMPTY)
    sb.faults.garbage_delay = HELD
    owner = sb.cluster.create(LEASES, lease("owner"))
    dependent = sb.cluster.create(CONFIGMAPS, config_map("dependent", owned_by(owner)))
    sb.cluster.create(CONFIGMAPS, config_map("chained", owned_by(dependent)))
    sb.cluster.create(CONFIGMAPS, config_map("moved", owned_by(owner)))

    (await kubectl(sb, "delete", "lease", "owner", "-n", NAMESPACE)).check()
    gone = await kubectl(sb, "get", "lease", "owner", "-n", NAMESPACE)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    # The window: the owner is gone, what it owned is still there, unmarked.
    assert await configmap_names(sb) == {"dependent", "chained", "moved"}
    assert not sb.store.get(CONFIGMAPS, NAMESPACE, "dependent")["metadata"].get("deletionTimestamp")

    # An owner of the same name again: a new uid, so not the owner they name...
    again = sb.cluster.create(LEASES, lease("owner"))
    assert again["metadata"]["uid"] != owner["metadata"]["uid"]
    # ... except for the one whose reference is moved to it meanwhile (the client writes).
    moved: Any = await asyncio.to_thread(core(sb).read_namespaced_config_map, "moved", NAMESPACE)
    moved.metadata.owner_references = [
        client.V1OwnerReference(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            name="owner",
            uid=again["metadata"]["uid"],
        )
    ]
    await asyncio.to_thread(core(sb).replace_namespaced_config_map, "moved", NAMESPACE, moved)

    assert sb.faults.collect_garbage_now() >= 2  # the owner, then its dependent's turn
    assert await configmap_names(sb) == {"moved"}
    assert names(sb, LEASES) == {"owner"}


async def test_a_short_delay_collects_by_itself(sandbox_factory: SandboxFactory) -> None:
    sb = await sandbox_factory(EMPTY)
    sb.faults.garbage_delay = 0.2
    owner = sb.cluster.create(LEASES, lease("owner"))
    sb.cluster.create(CONFIGMAPS, config_map("dependent", owned_by(owner)))
    await asyncio.to_thread(core(sb).delete_namespaced_config_map, "dependent", NAMESPACE)
    sb.cluster.create(CONFIGMAPS, config_map("dependent", owned_by(owner)))
    (await kubectl(sb, "delete", "lease", "owner", "-n", NAMESPACE)).check()
    await sb.wait_for(lambda: not names(sb, CONFIGMAPS) - {"kube-root-ca.crt"}, what="collected")
    # A reference to an owner already gone is looked at after the delay too.
    sb.cluster.create(CONFIGMAPS, config_map("late", owned_by(owner)))
    await sb.wait_for(lambda: "late" not in names(sb, CONFIGMAPS), what="the late dependent")


def _deployment(sb: Sandbox) -> dict[str, Any]:
    deployment = agent_deployment(readinessProbe=PROBE)
    deployment["spec"]["template"]["spec"]["serviceAccountName"] = "default"
    return deployment


async def test_background_deletion_of_a_deployment_leaves_its_pods_for_a_while(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(EMPTY)
    sb.apply([_deployment(sb)])
    await sb.wait_all_ready(60)
    (pod,) = sb.pods(NAMESPACE)
    sb.faults.garbage_delay = HELD
    (await kubectl(sb, "delete", "deploy", "agent", "-n", NAMESPACE, "--wait=false")).check()
    assert sb.store.peek(DEPLOYMENTS, NAMESPACE, "agent") is None
    # Its replica set and Ready pod outlive it: a client must not take them for current.
    assert len(names(sb, REPLICASETS)) == 1
    assert sb.ready_pod(NAMESPACE, pod["metadata"]["name"]) is not None
    sb.faults.collect_garbage_now()
    await sb.wait_for(
        lambda: not sb.pods(NAMESPACE) and not names(sb, REPLICASETS),
        seconds=60,
        what="the replica set and its pod collected",
    )


async def test_foreground_deletion_marks_the_owner_now_and_removes_it_after_them(
    sandbox_factory: SandboxFactory,
) -> None:
    sb = await sandbox_factory(EMPTY)
    sb.apply([_deployment(sb)])
    await sb.wait_all_ready(60)
    sb.faults.garbage_delay = HELD
    (await kubectl(sb, "delete", "deploy", "agent", "-n", NAMESPACE, "--cascade=foreground",
                   "--wait=false")).check()  # fmt: skip
    apps = client.AppsV1Api(sandbox_fixtures.kube_client(sb))
    owner: Any = await asyncio.to_thread(apps.read_namespaced_deployment, "agent", NAMESPACE)
    assert owner.metadata.deletion_timestamp is not None
    assert "foregroundDeletion" in owner.metadata.finalizers
    # Nothing of it collected yet: the replica set and its pod are as they were.
    (rs,) = sb.store.iter(REPLICASETS, NAMESPACE)
    assert not rs["metadata"].get("deletionTimestamp")
    assert all(not p["metadata"].get("deletionTimestamp") for p in sb.pods(NAMESPACE))
    sb.faults.collect_garbage_now()
    await sb.wait_for(
        lambda: sb.store.peek(DEPLOYMENTS, NAMESPACE, "agent") is None,
        seconds=60,
        what="the deployment gone after its replica set and pod",
    )
    assert not sb.pods(NAMESPACE) and not names(sb, REPLICASETS)
