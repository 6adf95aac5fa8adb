"""CustomResourceDefinitions in the sandbox: real kubectl and the official client install
Istio's and Gateway API's CRDs, then create, read, list, watch, update and delete their
objects; schemas, RBAC, namespace and CRD deletion apply to them."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from localmesh.sandbox import Sandbox
from localmesh.sandbox.crds import CRDS
from tests import sandbox_fixtures
from tests.crd_helpers import crd_yaml, httproute_crd, istio_crds
from tests.integration.test_sandbox_client import api_error, call
from tests.sandbox_fixtures import SandboxFactory, kube_client, kubectl

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

ISTIO = "networking.istio.io"


def destination_rule(name: str = "billing-api", version: str = "v1") -> dict[str, Any]:
    return {
        "apiVersion": f"{ISTIO}/{version}",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": "billing"},
        "spec": {
            "host": "billing-api.billing.svc.cluster.local",
            "subsets": [{"name": "cluster", "labels": {"app": "billing-api"}}],
        },
    }


async def install(sb: Sandbox, *crds: dict[str, Any]) -> None:
    res = await kubectl(sb, "apply", "-f", "-", input=crd_yaml(*crds))
    for crd in crds:
        name = crd["metadata"]["name"]
        assert f"customresourcedefinition.apiextensions.k8s.io/{name} created" in (
            res.check().stdout
        )


@pytest.mark.parametrize("version", ["1.27", "1.30", "1.33"])
async def test_kubectl_installs_istio_crds_and_manages_their_objects(
    sandbox_factory: SandboxFactory, version: str
) -> None:
    sb = await sandbox_factory(kube_version=version)
    await install(sb, *istio_crds(), httproute_crd())
    # The CRD is accepted and established at once; `kubectl wait` sees it.
    res = await kubectl(
        sb, "wait", "--for=condition=established", "crd/destinationrules.networking.istio.io"
    )
    assert "condition met" in res.check().stdout
    crd = json.loads(
        (await kubectl(sb, "get", "crd", "virtualservices.networking.istio.io", "-o", "json"))
        .check()
        .stdout
    )
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    # Discovery lists the kinds, short names included.
    res = await kubectl(sb, "api-resources", "--api-group", ISTIO, "-o", "wide")
    rows = [line.split() for line in res.check().stdout.splitlines()[1:]]
    assert sorted((r[0], r[1]) for r in rows) == [
        ("destinationrules", "dr"),
        ("virtualservices", "vs"),
    ]
    res = await kubectl(sb, "api-versions")
    assert {f"{ISTIO}/v1", f"{ISTIO}/v1beta1", "gateway.networking.k8s.io/v1"} <= set(
        res.check().stdout.split()
    )
    # Client-side apply: created, then configured.
    dr = destination_rule()
    res = await kubectl(sb, "apply", "-f", "-", input=yaml.safe_dump(dr))
    assert res.check().stdout.strip() == f"destinationrule.{ISTIO}/billing-api created"
    dr["spec"]["subsets"][0]["labels"]["version"] = "v1"
    res = await kubectl(sb, "apply", "-f", "-", input=yaml.safe_dump(dr))
    assert res.check().stdout.strip() == f"destinationrule.{ISTIO}/billing-api configured"
    # `kubectl get` prints the CRD's printer columns.
    res = await kubectl(sb, "get", "dr", "-n", "billing")
    header, row = (line.split() for line in res.check().stdout.splitlines())
    assert header == ["NAME", "HOST", "AGE"]
    assert row[:2] == ["billing-api", "billing-api.billing.svc.cluster.local"]
    got = json.loads(
        (await kubectl(sb, "get", "destinationrule", "billing-api", "-n", "billing", "-o", "json"))
        .check()
        .stdout
    )
    assert got["spec"]["subsets"][0]["labels"] == {"app": "billing-api", "version": "v1"}
    # The schema is enforced.
    bad = destination_rule("bad")
    bad["spec"]["subsets"] = "all"
    res = await kubectl(sb, "apply", "-f", "-", input=yaml.safe_dump(bad))
    assert res.returncode == 1
    assert 'The DestinationRule "bad" is invalid' in res.stderr
    assert "spec.subsets" in res.stderr
    # Deleting the CRD deletes its objects; the kind is no longer served.
    dr_type = sb.cluster.crds.lookup(ISTIO, "v1", "destinationrules")
    assert dr_type is not None and len(list(sb.store.iter(dr_type))) == 1
    res = await kubectl(sb, "delete", "crd", "destinationrules.networking.istio.io")
    res.check()
    assert list(sb.store.iter(dr_type)) == []
    assert sb.cluster.crds.lookup(ISTIO, "v1", "destinationrules") is None
    res = await kubectl(sb, "get", "destinationrules.v1.networking.istio.io", "-n", "billing")
    assert res.returncode == 1


async def test_official_client_custom_objects(sandbox: Sandbox) -> None:
    await install(sandbox, *istio_crds())
    api = client.CustomObjectsApi(kube_client(sandbox))
    args = (ISTIO, "v1", "billing", "destinationrules")
    created = await call(api.create_namespaced_custom_object, *args, destination_rule())
    assert created["metadata"]["uid"] and created["kind"] == "DestinationRule"
    # Every served version reads the same object.
    old = await call(
        api.get_namespaced_custom_object,
        ISTIO,
        "v1beta1",
        "billing",
        "destinationrules",
        "billing-api",
    )
    assert old["metadata"]["uid"] == created["metadata"]["uid"]
    listed = await call(api.list_namespaced_custom_object, *args)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["billing-api"]
    everywhere = await call(api.list_cluster_custom_object, ISTIO, "v1", "destinationrules")
    assert len(everywhere["items"]) == 1
    patched = await call(
        api.patch_namespaced_custom_object,
        *args,
        "billing-api",
        {"spec": {"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}},
    )
    assert patched["spec"]["trafficPolicy"]["tls"]["mode"] == "ISTIO_MUTUAL"
    assert int(patched["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    # A replace from a stale read is refused.
    status, body = await api_error(
        api.replace_namespaced_custom_object, *args, "billing-api", created
    )
    assert status == 409 and body["reason"] == "Conflict"
    # Schema violations are 422 with the field named.
    bad = destination_rule("bad")
    bad["spec"]["host"] = 7
    status, body = await api_error(api.create_namespaced_custom_object, *args, bad)
    assert status == 422 and body["details"]["causes"][0]["field"] == "spec.host"
    # A watch sees the changes, from the list's resourceVersion on.
    events: list[tuple[str, str]] = []
    ready = threading.Event()

    def watch_events() -> None:
        w: Any = watch.Watch()  # type: ignore[no-untyped-call]
        ready.set()
        for ev in w.stream(
            api.list_namespaced_custom_object,
            *args,
            resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=20,
        ):
            events.append((ev["type"], ev["object"]["metadata"]["name"]))
            if ev["type"] == "DELETED":
                w.stop()

    watcher = asyncio.create_task(asyncio.to_thread(watch_events))
    await asyncio.to_thread(ready.wait, 10)
    await call(api.delete_namespaced_custom_object, *args, "billing-api")
    await asyncio.wait_for(watcher, 30)
    assert events == [("MODIFIED", "billing-api"), ("DELETED", "billing-api")]
    status, _ = await api_error(api.get_namespaced_custom_object, *args, "billing-api")
    assert status == 404


async def test_cluster_scoped_crd_and_status_subresource(sandbox: Sandbox) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "meshes.example.localmesh.dev"},
        "spec": {
            "group": "example.localmesh.dev",
            "names": {"kind": "Mesh", "plural": "meshes"},
            "scope": "Cluster",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                },
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }
    api = client.CustomObjectsApi(kube_client(sandbox))
    ext = client.ApiextensionsV1Api(kube_client(sandbox))
    made = await call(ext.create_custom_resource_definition, crd)
    assert {c.type for c in made.status.conditions} == {"NamesAccepted", "Established"}
    mesh = {"apiVersion": "example.localmesh.dev/v1", "kind": "Mesh", "metadata": {"name": "m"}}
    status, body = await api_error(
        api.create_cluster_custom_object, "example.localmesh.dev", "v1", "meshes", mesh
    )
    assert status == 422 and "spec" in body["message"]
    mesh["spec"] = {"size": 2}
    mesh["status"] = {"phase": "ignored"}
    created = await call(
        api.create_cluster_custom_object, "example.localmesh.dev", "v1", "meshes", mesh
    )
    # Spec and status are written separately, as the status subresource has it.
    await call(
        api.patch_cluster_custom_object_status,
        "example.localmesh.dev",
        "v1",
        "meshes",
        "m",
        {"status": {"phase": "Ready"}},
    )
    replaced = await call(
        api.replace_cluster_custom_object,
        "example.localmesh.dev",
        "v1",
        "meshes",
        "m",
        {**mesh, "metadata": {"name": "m"}, "spec": {"size": 3}, "status": {"phase": "Lost"}},
    )
    assert replaced["spec"] == {"size": 3} and replaced["status"] == {"phase": "Ready"}
    assert created["metadata"]["uid"] == replaced["metadata"]["uid"]
    res = await kubectl(sandbox, "get", "meshes")
    assert res.check().stdout.split()[:3] == ["NAME", "AGE", "m"]
    names = [c.metadata.name for c in (await call(ext.list_custom_resource_definition)).items]
    assert names == ["meshes.example.localmesh.dev"]
    await call(ext.delete_custom_resource_definition, "meshes.example.localmesh.dev")
    assert list(sandbox.store.iter(CRDS)) == []


async def test_rbac_and_namespace_deletion_cover_custom_resources(sandbox: Sandbox) -> None:
    await install(sandbox, *istio_crds())
    rbac = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader, namespace: billing}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: dr-reader, namespace: billing}
rules:
  - apiGroups: [networking.istio.io]
    resources: [destinationrules]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dr-reader, namespace: billing}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: dr-reader}
subjects: [{kind: ServiceAccount, name: reader, namespace: billing}]
"""
    (await kubectl(sandbox, "apply", "-f", "-", input=rbac)).check()
    (await kubectl(sandbox, "apply", "-f", "-", input=yaml.safe_dump(destination_rule()))).check()
    token = (await kubectl(sandbox, "create", "token", "reader", "-n", "billing")).check()
    as_reader = ("--token", token.stdout.strip(), "-n", "billing")
    res = await kubectl(sandbox, "get", "dr", *as_reader)
    assert "billing-api" in res.check().stdout
    vs = {
        "apiVersion": f"{ISTIO}/v1",
        "kind": "VirtualService",
        "metadata": {"name": "billing-api", "namespace": "billing"},
        "spec": {
            "hosts": ["billing-api"],
            "http": [{"route": [{"destination": {"host": "billing-api"}}]}],
        },
    }
    res = await kubectl(sandbox, "create", "-f", "-", *as_reader, input=yaml.safe_dump(vs))
    assert res.returncode == 1
    assert (
        'cannot create resource "virtualservices" in API group "networking.istio.io"' in res.stderr
    )
    res = await kubectl(
        sandbox, "auth", "can-i", "delete", "destinationrules.networking.istio.io", *as_reader
    )
    assert res.stdout.strip() == "no"
    # Deleting the namespace deletes its custom resources too.
    (await kubectl(sandbox, "create", "-f", "-", input=yaml.safe_dump(vs))).check()
    (await kubectl(sandbox, "delete", "namespace", "billing", "--wait=false")).check()
    await sandbox.wait_for(
        lambda: (
            not any(list(sandbox.store.iter(t, "billing")) for t in sandbox.cluster.crds.types())
        ),
        what="the namespace's custom resources gone",
    )


async def test_kubectl_get_watch_prints_custom_resource_rows(sandbox: Sandbox) -> None:
    await install(sandbox, *istio_crds())
    proc = await asyncio.create_subprocess_exec(
        "kubectl",
        "get",
        "destinationrules",
        "-n",
        "billing",
        "-w",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=sandbox.env(),
    )
    stdout = proc.stdout
    assert stdout is not None
    try:
        api = client.CustomObjectsApi(kube_client(sandbox))
        args = (ISTIO, "v1beta1", "billing", "destinationrules")

        async def next_row() -> list[str]:
            line = await asyncio.wait_for(stdout.readline(), 20)
            assert line, "kubectl get -w ended early"
            return line.decode().split()

        # An empty namespace prints nothing until the first object comes.
        await call(api.create_namespaced_custom_object, *args, destination_rule("first"))
        row = await next_row()
        if row[0] == "NAME":
            assert row == ["NAME", "HOST", "AGE"]
            row = await next_row()
        assert row[:2] == ["first", "billing-api.billing.svc.cluster.local"]
        await call(api.delete_namespaced_custom_object, *args, "first")
        assert (await next_row())[0] == "first"
    finally:
        proc.terminate()
        await proc.wait()
