"""The objects a mesh uses (Lease, ServiceAccount, Role, RoleBinding, ReplicaSet, ...) through
real kubectl (every minor) and the official Python client."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from kubernetes import client

from localmesh.sandbox import Sandbox
from localmesh.sandbox.resources import BY_KIND, PODS, REPLICASETS
from tests import sandbox_fixtures
from tests.integration.test_sandbox_client import api_error, call
from tests.sandbox_fixtures import SandboxFactory, kube_client, kubectl

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

MINORS = [f"1.{m}" for m in range(27, 34)]

OBJECTS = """
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: mesh-alice, namespace: billing}
spec: {holderIdentity: alice, leaseDurationSeconds: 30}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: mesh-agent, namespace: billing}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: mesh-agent, namespace: billing}
rules:
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: mesh-agent, namespace: billing}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: mesh-agent}
subjects:
  - {kind: ServiceAccount, name: mesh-agent, namespace: billing}
  - {kind: User, name: alice}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: mesh-config, namespace: billing}
data: {mark: dev}
"""


def _tables(out: str) -> dict[str, list[list[str]]]:
    """`kubectl get a,b,c` output -> {kind prefix of the names: [header, rows...]}."""
    tables: dict[str, list[list[str]]] = {}
    for block in out.strip().split("\n\n"):
        lines = [line.split() for line in block.splitlines()]
        kind = lines[1][1].split("/")[0]
        tables[kind] = lines
    return tables


@pytest.mark.parametrize("version", MINORS)
async def test_kubectl_gets_every_mesh_kind(sandbox_factory: SandboxFactory, version: str) -> None:
    sb = await sandbox_factory(kube_version=version)
    (await kubectl(sb, "apply", "-f", "-", input=OBJECTS)).check()
    res = await kubectl(sb, "get", "lease,cm,sa,role,rolebinding,deploy,rs", "-A")
    tables = _tables(res.check().stdout)
    lease = tables["lease.coordination.k8s.io"]
    assert lease[0] == ["NAMESPACE", "NAME", "HOLDER", "AGE"]
    assert lease[1][:3] == ["billing", "lease.coordination.k8s.io/mesh-alice", "alice"]
    cms = tables["configmap"]
    assert cms[0] == ["NAMESPACE", "NAME", "DATA", "AGE"]
    assert ["billing", "configmap/mesh-config", "1"] in [r[:3] for r in cms[1:]]
    sas = tables["serviceaccount"]
    assert sas[0] == ["NAMESPACE", "NAME", "SECRETS", "AGE"]
    names = {(r[0], r[1]) for r in sas[1:]}
    # Every namespace has its default service account.
    assert {("billing", "serviceaccount/mesh-agent"), ("users", "serviceaccount/default")} <= names
    assert ("kube-system", "serviceaccount/default") in names
    roles = tables["role.rbac.authorization.k8s.io"]
    assert roles[0] == ["NAMESPACE", "NAME", "CREATED", "AT"]
    assert roles[1][:2] == ["billing", "role.rbac.authorization.k8s.io/mesh-agent"]
    bindings = tables["rolebinding.rbac.authorization.k8s.io"]
    assert bindings[0] == ["NAMESPACE", "NAME", "ROLE", "AGE"]
    assert bindings[1][:3] == [
        "billing",
        "rolebinding.rbac.authorization.k8s.io/mesh-agent",
        "Role/mesh-agent",
    ]
    deploys = tables["deployment.apps"]
    assert deploys[0] == ["NAMESPACE", "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert ["billing", "deployment.apps/billing-api", "1/1", "1", "1"] in [
        r[:5] for r in deploys[1:]
    ]
    rss = tables["replicaset.apps"]
    assert rss[0] == ["NAMESPACE", "NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    rs_row = next(r for r in rss[1:] if r[0] == "billing")
    assert rs_row[1].startswith("replicaset.apps/billing-api-") and rs_row[2:5] == ["1", "1", "1"]
    # A write from a stale copy loses: 409 Conflict, as in a real cluster.
    lease_json = await kubectl(sb, "get", "lease", "mesh-alice", "-n", "billing", "-o", "json")
    stale = lease_json.check().stdout
    renew = '{"spec":{"holderIdentity":"bob"}}'
    (await kubectl(sb, "patch", "lease", "mesh-alice", "-n", "billing", "-p", renew)).check()
    res = await kubectl(sb, "replace", "-f", "-", input=stale)
    assert res.returncode == 1
    assert (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "mesh-alice": the object '
        "has been modified; please apply your changes to the latest version and try again"
    ) in res.stderr
    wide = await kubectl(sb, "get", "rolebinding", "-n", "billing", "-o", "wide")
    header, row = wide.check().stdout.splitlines()
    assert header.split() == ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    assert row.split()[3] == "alice" and row.split()[-1] == "billing/mesh-agent"


async def test_deployment_owns_a_replicaset_that_owns_its_pods(sandbox: Sandbox) -> None:
    (pod,) = sandbox.pods("billing")
    (rs,) = list(sandbox.store.iter(REPLICASETS, "billing"))
    assert pod["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert rs["metadata"]["name"] == f"billing-api-{pod['metadata']['labels']['pod-template-hash']}"
    # A new template: a second ReplicaSet takes over, the first is scaled to zero.
    patch = '{"spec":{"template":{"metadata":{"labels":{"version":"v2"}}}}}'
    (await kubectl(sandbox, "patch", "deploy", "billing-api", "-n", "billing", "-p", patch)).check()

    def rolled() -> bool:
        sets = {r["metadata"]["name"]: r for r in sandbox.store.iter(REPLICASETS, "billing")}
        pods = [p for p in sandbox.pods("billing") if not p["metadata"].get("deletionTimestamp")]
        return (
            len(sets) == 2
            and sets[rs["metadata"]["name"]]["spec"]["replicas"] == 0
            and len(pods) == 1
            and pods[0]["metadata"]["labels"].get("version") == "v2"
        )

    await sandbox.wait_for(rolled, what="the new replica set to take over")
    (await kubectl(sandbox, "delete", "deploy", "billing-api", "-n", "billing")).check()
    await sandbox.wait_for(
        lambda: (
            not list(sandbox.store.iter(REPLICASETS, "billing"))
            and not list(sandbox.store.iter(PODS, "billing"))
        ),
        what="replica sets and pods of the deleted deployment to go",
    )


async def test_lease_writes_with_stale_versions_conflict(sandbox: Sandbox) -> None:
    coord = client.CoordinationV1Api(kube_client(sandbox))
    body = {
        "metadata": {"name": "mesh-bob", "namespace": "billing"},
        "spec": {"holderIdentity": "bob", "leaseDurationSeconds": 15},
    }
    made = await call(coord.create_namespaced_lease, "billing", body)
    stale = made.metadata.resource_version
    renewed = await call(
        coord.patch_namespaced_lease,
        "mesh-bob",
        "billing",
        {"spec": {"renewTime": "2026-01-01T00:00:00.000000Z"}},
    )
    assert renewed.metadata.resource_version != stale
    # A replace naming the old version loses, as a second holder's renewal would.
    made.spec.holder_identity = "mallory"
    status, err = await api_error(coord.replace_namespaced_lease, "mesh-bob", "billing", made)
    assert status == 409 and err["reason"] == "Conflict"
    assert err["message"].startswith(
        'Operation cannot be fulfilled on leases.coordination.k8s.io "mesh-bob"'
    )
    # A patch carrying the old version as a precondition loses too.
    status, err = await api_error(
        coord.patch_namespaced_lease,
        "mesh-bob",
        "billing",
        {"metadata": {"resourceVersion": stale}, "spec": {"holderIdentity": "mallory"}},
    )
    assert status == 409
    # With the current version both go through.
    fresh = await call(coord.read_namespaced_lease, "mesh-bob", "billing")
    fresh.spec.holder_identity = "carol"
    taken = await call(coord.replace_namespaced_lease, "mesh-bob", "billing", fresh)
    assert taken.spec.holder_identity == "carol" and taken.spec.renew_time is not None
    bad = {"spec": {"leaseDurationSeconds": -1}}
    status, err = await api_error(coord.patch_namespaced_lease, "mesh-bob", "billing", bad)
    assert status == 422 and "spec.leaseDurationSeconds" in err["message"]


async def test_patch_flavours_and_watch_on_mesh_kinds(sandbox: Sandbox) -> None:
    (await kubectl(sandbox, "apply", "-f", "-", input=OBJECTS)).check()
    watch = await asyncio.create_subprocess_exec(
        "kubectl",
        "get",
        "leases",
        "-n",
        "billing",
        "-w",
        "-o",
        "jsonpath={.spec.holderIdentity}{'\\n'}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=sandbox.env(),
    )
    assert watch.stdout is not None
    try:
        assert (await asyncio.wait_for(watch.stdout.readline(), 20)).strip() == b"alice"
        patches = [
            ("merge", '{"spec":{"holderIdentity":"bob"}}'),
            ("strategic", '{"spec":{"holderIdentity":"carol"}}'),
            ("json", '[{"op":"replace","path":"/spec/holderIdentity","value":"dave"}]'),
        ]
        for kind, body in patches:
            res = await kubectl(
                sandbox, "patch", "lease", "mesh-alice", "-n", "billing", "--type", kind, "-p", body
            )
            res.check()
        seen = [(await asyncio.wait_for(watch.stdout.readline(), 20)).strip() for _ in patches]
        assert seen == [b"bob", b"carol", b"dave"]
    finally:
        watch.terminate()
        await watch.wait()
    # Role rules and binding subjects are replaced as a whole by a strategic merge.
    rules = '{"rules":[{"apiGroups":[""],"resources":["configmaps"],"verbs":["get"]}]}'
    (await kubectl(sandbox, "patch", "role", "mesh-agent", "-n", "billing", "-p", rules)).check()
    out = (
        await kubectl(sandbox, "get", "role", "mesh-agent", "-n", "billing", "-o", "json")
    ).check()
    assert json.loads(out.stdout)["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}
    ]
    # roleRef is immutable, as in a real cluster.
    ref = '{"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"other"}}'
    res = await kubectl(
        sandbox, "patch", "rolebinding", "mesh-agent", "-n", "billing", "--type", "merge", "-p", ref
    )
    assert res.returncode != 0 and "cannot change roleRef" in res.stderr


@pytest.mark.parametrize("version", MINORS)
async def test_kubectl_create_commands(sandbox_factory: SandboxFactory, version: str) -> None:
    # kubectl >= 1.32 sends these objects in protobuf.
    sb = await sandbox_factory(kube_version=version)
    ns = ("-n", "billing")
    commands = [
        ("create", "sa", "mesh-agent"),
        ("create", "role", "mesh-agent", "--verb=get,watch", "--resource=leases,pods/log"),
        (
            "create",
            "rolebinding",
            "mesh-agent",
            "--role=mesh-agent",
            "--serviceaccount=billing:mesh-agent",
        ),
        ("create", "cm", "mesh-config", "--from-literal=mark=dev"),
        ("create", "secret", "generic", "mesh-secret", "--from-literal=key=s3cret"),
        (
            "create",
            "deployment",
            "agent",
            "--image=localmesh:dev",
            "--port=8080",
            "--",
            "localmesh",
            "agent",
        ),
    ]
    for args in commands:
        (await kubectl(sb, *ns, *args)).check()
    store = sb.store
    role = store.get(BY_KIND["Role"], "billing", "mesh-agent")
    assert role["rules"] == [
        {"verbs": ["get", "watch"], "apiGroups": [""], "resources": ["pods/log"]},
        {"verbs": ["get", "watch"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"]},
    ]
    binding = store.get(BY_KIND["RoleBinding"], "billing", "mesh-agent")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "mesh-agent",
    }
    (subject,) = binding["subjects"]
    assert {k: subject[k] for k in ("kind", "name", "namespace")} == {
        "kind": "ServiceAccount",
        "name": "mesh-agent",
        "namespace": "billing",
    }
    assert store.get(BY_KIND["ConfigMap"], "billing", "mesh-config")["data"] == {"mark": "dev"}
    secret = store.get(BY_KIND["Secret"], "billing", "mesh-secret")
    assert secret["data"] == {"key": base64.b64encode(b"s3cret").decode()}
    deploy = store.get(BY_KIND["Deployment"], "billing", "agent")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "localmesh:dev" and container["command"] == ["localmesh", "agent"]
    assert container["ports"] == [{"containerPort": 8080}]
    assert deploy["spec"]["selector"] == {"matchLabels": {"app": "agent"}}
    res = await kubectl(
        sb,
        "auth",
        "can-i",
        "get",
        "pods",
        "--subresource=log",
        *ns,
        "--as",
        "system:serviceaccount:billing:mesh-agent",
    )
    assert res.check().stdout.strip() == "yes"


async def test_rollout_restart_history_and_undo(sandbox: Sandbox) -> None:
    deploy = ("deploy/billing-api", "-n", "billing")
    (first,) = list(sandbox.store.iter(REPLICASETS, "billing"))
    (await kubectl(sandbox, "rollout", "restart", *deploy)).check()
    (await kubectl(sandbox, "rollout", "status", *deploy, "--timeout=30s")).check()
    history = (await kubectl(sandbox, "rollout", "history", *deploy)).check().stdout
    assert [line.split()[0] for line in history.splitlines()[2:] if line] == ["1", "2"]
    (await kubectl(sandbox, "rollout", "undo", *deploy)).check()
    (await kubectl(sandbox, "rollout", "status", *deploy, "--timeout=30s")).check()

    def first_back() -> bool:
        sets = {r["metadata"]["name"]: r for r in sandbox.store.iter(REPLICASETS, "billing")}
        rs = sets[first["metadata"]["name"]]
        return (
            len(sets) == 2
            and rs["spec"]["replicas"] == 1
            and rs["status"].get("readyReplicas") == 1
        )

    await sandbox.wait_for(first_back, what="the first replica set back in use")
    rs = sandbox.store.get(REPLICASETS, "billing", first["metadata"]["name"])
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
