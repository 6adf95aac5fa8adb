"""Helpers for the `localmesh mesh` tests on the sandbox, whose pods run the real
`localmesh agent router` (with its Envoy) and `localmesh agent shadow`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from localmesh.cli.demo_mesh import SERVER_FIELDS
from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.marks import parse_expose, parse_version_mark
from localmesh.clustermesh.session import MeshOptions, Permission
from localmesh.kube.objects import KubeObjects
from localmesh.sandbox import Sandbox
from localmesh.sandbox.resources import EVENTS, SERVICES, TYPES
from tests.sandbox_fixtures import kubectl


def kube_for(sb: Sandbox) -> KubeObjects:
    """The real client, as the sandbox's admin."""
    return KubeObjects.connect(str(sb.kubeconfig_path))


def options(local_port: int, mark: str = "dev", **overrides: Any) -> MeshOptions:
    values: dict[str, Any] = {
        "namespace": "billing",
        "service": "billing-api",
        "mark": parse_version_mark(mark),
        "exposed": parse_expose(f"{local_port}:8080"),
        "ready_timeout": 60.0,
    }
    values.update(overrides)
    return MeshOptions(**values)


@asynccontextmanager
async def local_server() -> AsyncIterator[int]:
    """A process on 'this machine' that the exposed port points at."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def service_json(sb: Sandbox, namespace: str = "billing", name: str = "billing-api") -> Any:
    """`kubectl get -o json` of the Service, without the fields the server manages."""
    out = (await kubectl(sb, "get", "service", name, "-n", namespace, "-o", "json")).check()
    obj = json.loads(out.stdout)
    for key in SERVER_FIELDS:
        obj["metadata"].pop(key, None)
    return obj


def routed_selector(sb: Sandbox, namespace: str = "billing", name: str = "billing-api") -> Any:
    """The selector of a Service meshed in auto mode: its current router's pods."""
    origin = sb.store.get(SERVICES, namespace, m.origin_name(name))
    return m.routed_selector(name, origin["metadata"]["uid"])


async def managed_objects(sb: Sandbox, namespace: str = "billing") -> list[str]:
    """Every object labelled as localmesh's in `namespace`, as kind/name (pods that are
    terminating excluded: they are on their way out)."""
    out = (
        await kubectl(
            sb,
            "get",
            "deployments,services,pods,leases,secrets,serviceaccounts,roles,rolebindings",
            "-n",
            namespace,
            "-l",
            m.managed_selector(),
            "-o",
            "json",
        )
    ).check()
    items = json.loads(out.stdout)["items"]
    return sorted(
        f"{i['kind']}/{i['metadata']['name']}"
        for i in items
        if not i["metadata"].get("deletionTimestamp")
    )


def namespace_objects(sb: Sandbox, namespace: str = "billing") -> list[str]:
    """Every object in `namespace` as kind/name (Events aside: they record, not configure),
    to compare a namespace before and after localmesh was there."""
    return sorted(
        f"{rtype.kind}/{obj['metadata']['name']}"
        for rtype in TYPES
        if rtype.namespaced and rtype is not EVENTS
        for obj in sb.store.iter(rtype, namespace)
    )


async def wait_managed_gone(sb: Sandbox, namespace: str = "billing", seconds: float = 30) -> None:
    """Until nothing of localmesh's is left in `namespace` (pods of a deleted Deployment
    go asynchronously, as in a real cluster)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while left := await managed_objects(sb, namespace):
        assert loop.time() < until, f"left behind: {left}"
        await asyncio.sleep(0.2)


async def kubeconfig_with(sb: Sandbox, admin: KubeObjects, rules: list[dict[str, object]]) -> str:
    """A kubeconfig whose user (a ServiceAccount `dev` in billing) holds exactly `rules`."""
    rbac = "rbac.authorization.k8s.io"
    meta = {"name": "dev"}
    await admin.create("ServiceAccount", "billing", {"kind": "ServiceAccount", "metadata": meta})
    await admin.create("Role", "billing", {"kind": "Role", "metadata": meta, "rules": rules})
    await admin.create(
        "RoleBinding",
        "billing",
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "dev"},
            "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": "billing"}],
        },
    )
    token = await asyncio.to_thread(
        admin._request,
        "POST",
        "/api/v1/namespaces/billing/serviceaccounts/dev/token",
        None,
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    path = sb.kubeconfig_path.with_name("kubeconfig-dev")
    path.write_text(_with_token(sb.kubeconfig_path.read_text(), token["status"]["token"]))
    return str(path)


def as_rules(permissions: list[Permission]) -> list[dict[str, object]]:
    return [
        {
            "apiGroups": [p.group],
            "resources": [p.resource],
            "verbs": [p.verb],
            **({"resourceNames": [p.name]} if p.name else {}),
        }
        for p in permissions
    ]


def _with_token(kubeconfig: str, token: str) -> str:
    import yaml

    data = yaml.safe_load(kubeconfig)
    for user in data["users"]:
        user["user"] = {"token": token}
    return json.dumps(data)
