"""Service-account identities and RBAC: tokens from the TokenRequest API, 403s with the
messages real clusters give, `kubectl auth can-i` by the same rules."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from typing import Any

import pytest
from kubernetes import client, watch

from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.integration.test_sandbox_client import api_error, call
from tests.integration.test_sandbox_mesh_objects import MINORS, OBJECTS
from tests.sandbox_fixtures import SandboxFactory, kube_client, kubectl

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory

AGENT = "system:serviceaccount:billing:mesh-agent"


def _forbidden(verb: str, resource: str, group: str, name: str = "") -> str:
    qualified = f"{resource}.{group}" if group else resource
    subject = f'{qualified} "{name}"' if name else qualified
    return (
        f'{subject} is forbidden: User "{AGENT}" cannot {verb} resource "{resource}" '
        f'in API group "{group}" in the namespace "billing"'
    )


@pytest.mark.parametrize("version", MINORS)
async def test_kubectl_with_a_service_account_token(
    sandbox_factory: SandboxFactory, version: str
) -> None:
    sb = await sandbox_factory(kube_version=version)
    (await kubectl(sb, "apply", "-f", "-", input=OBJECTS)).check()
    token = await kubectl(sb, "create", "token", "mesh-agent", "-n", "billing", "--duration=2h")
    claims = json.loads(base64.urlsafe_b64decode(token.check().stdout.split(".")[1] + "=="))
    assert claims["exp"] - claims["iat"] == 7200
    as_agent = ("--token", token.stdout.strip(), "-n", "billing")
    res = await kubectl(sb, "get", "leases", *as_agent)
    assert "mesh-alice" in res.check().stdout
    res = await kubectl(sb, "get", "pods", *as_agent)
    assert res.returncode == 1
    assert res.stderr.strip() == f"Error from server (Forbidden): {_forbidden('list', 'pods', '')}"
    res = await kubectl(sb, "delete", "lease", "mesh-alice", *as_agent)
    assert _forbidden("delete", "leases", "coordination.k8s.io", "mesh-alice") in res.stderr
    # can-i answers by the same rules, for the token's own identity and impersonated.
    for who in (as_agent, ("--as", AGENT, "-n", "billing")):
        res = await kubectl(sb, "auth", "can-i", "watch", "leases", *who)
        assert res.check().stdout.strip() == "yes"
        res = await kubectl(sb, "auth", "can-i", "create", "leases", *who)
        assert res.returncode == 1 and res.stdout.strip() == "no"
        res = await kubectl(sb, "auth", "can-i", "list", "leases", "-n", "users", *who[:2])
        assert res.returncode == 1 and res.stdout.strip() == "no"
    res = await kubectl(sb, "auth", "can-i", "--list", *as_agent)
    rows = [line.split() for line in res.check().stdout.splitlines()]
    assert ["leases.coordination.k8s.io", "[]", "[]", "[get", "list", "watch]"] in rows
    if version != "1.27":  # whoami left alpha in 1.28
        res = await kubectl(sb, "auth", "whoami", *as_agent)
        assert AGENT in res.check().stdout
    # The admin may do everything; the viewer token only reads.
    res = await kubectl(sb, "auth", "can-i", "delete", "rolebindings", "-n", "billing")
    assert res.check().stdout.strip() == "yes"


async def test_token_of_a_deleted_service_account_is_refused(sandbox: Sandbox) -> None:
    sandbox.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "gone", "namespace": "billing"},
            }
        ]
    )
    token = sandbox.service_account_token("billing", "gone")
    res = await kubectl(sandbox, "auth", "whoami", "--token", token)
    assert "system:serviceaccount:billing:gone" in res.check().stdout
    (await kubectl(sandbox, "delete", "sa", "gone", "-n", "billing")).check()
    # A service account of the same name is a new identity: the old token stays dead.
    sandbox.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "gone", "namespace": "billing"},
            }
        ]
    )
    res = await kubectl(sandbox, "get", "pods", "--token", token)
    assert res.returncode == 1 and "You must be logged in to the server" in res.stderr


ROLE_WITHOUT_WATCH = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "lease-reader", "namespace": "billing"},
    "rules": [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["mine"],
            "verbs": ["update", "patch"],
        },
    ],
}


async def test_role_without_watch_gets_403_from_the_official_client(sandbox: Sandbox) -> None:
    sandbox.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "mesh-agent", "namespace": "billing"},
            },
            ROLE_WITHOUT_WATCH,
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "lease-reader", "namespace": "billing"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "lease-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "mesh-agent"}],
            },
        ]
    )
    admin = client.CoordinationV1Api(kube_client(sandbox))
    for name in ("mine", "theirs"):
        body = {"metadata": {"name": name}, "spec": {"holderIdentity": "x"}}
        await call(admin.create_namespaced_lease, "billing", body)
    token = sandbox.service_account_token("billing", "mesh-agent")
    agent = client.CoordinationV1Api(kube_client(sandbox, token=token))
    listed = await call(agent.list_namespaced_lease, "billing")
    assert {lease.metadata.name for lease in listed.items} == {"mine", "theirs"}

    failures: list[BaseException] = []

    def run_watch() -> None:
        w: Any = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for _ in w.stream(agent.list_namespaced_lease, "billing", timeout_seconds=5):
                pass
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run_watch, daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join, 15)
    assert failures and getattr(failures[0], "status", None) == 403
    body = json.loads(getattr(failures[0], "body", "{}"))
    assert body["message"] == _forbidden("watch", "leases", "coordination.k8s.io")

    # resourceNames: the agent may renew its own lease and no other.
    patch = {"spec": {"holderIdentity": "agent"}}
    renewed = await call(agent.patch_namespaced_lease, "mine", "billing", patch)
    assert renewed.spec.holder_identity == "agent"
    status, err = await api_error(agent.patch_namespaced_lease, "theirs", "billing", patch)
    assert status == 403 and err["reason"] == "Forbidden"
    assert err["message"] == _forbidden("patch", "leases", "coordination.k8s.io", "theirs")
    assert err["details"] == {"name": "theirs", "group": "coordination.k8s.io", "kind": "leases"}
    # A watch of its own lease by name is allowed by a resourceNames rule.
    sandbox.apply(
        [
            {
                **ROLE_WITHOUT_WATCH,
                "metadata": {"name": "own-lease", "namespace": "billing"},
                "rules": [
                    {
                        "apiGroups": ["coordination.k8s.io"],
                        "resources": ["leases"],
                        "resourceNames": ["mine"],
                        "verbs": ["watch"],
                    }
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "own-lease", "namespace": "billing"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "own-lease",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "mesh-agent"}],
            },
        ]
    )
    own = await call(
        agent.list_namespaced_lease,
        "billing",
        watch=True,
        field_selector="metadata.name=mine",
        timeout_seconds=1,
        _preload_content=False,
    )
    assert own.status == 200
    own.release_conn()
    status, err = await api_error(
        agent.list_namespaced_lease,
        "billing",
        watch=True,
        field_selector="metadata.name=theirs",
        timeout_seconds=1,
        _preload_content=False,
    )
    assert status == 403
    # TokenRequest is itself authorized: the agent cannot mint tokens.
    core = client.CoreV1Api(kube_client(sandbox, token=token))
    status, err = await api_error(
        core.create_namespaced_service_account_token, "mesh-agent", "billing", {"spec": {}}
    )
    assert status == 403 and 'cannot create resource "serviceaccounts/token"' in err["message"]
