"""RBAC decisions over Roles, ClusterRoles and their bindings."""

from __future__ import annotations

from typing import Any

from localmesh.sandbox.rbac import Attributes, Identities, User, authorize, service_account_user
from localmesh.sandbox.resources import BY_KIND, NAMESPACES, SERVICEACCOUNTS
from localmesh.sandbox.store import Store

RBAC = "rbac.authorization.k8s.io"
READ_LEASES = [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]}]


def _binding(
    kind: str, name: str, role_kind: str, subjects: list[dict[str, Any]], ns: str = ""
) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return {
        "metadata": meta,
        "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": "reader"},
        "subjects": subjects,
    }


def _store() -> Store:
    store = Store()
    for ns in ("a", "b"):
        store.create(NAMESPACES, {"metadata": {"name": ns}})
    store.create(BY_KIND["ClusterRole"], {"metadata": {"name": "reader"}, "rules": READ_LEASES})
    return store


def _get(ns: str) -> Attributes:
    return Attributes("get", "coordination.k8s.io", "leases", ns, "x")


def test_rolebinding_to_a_clusterrole_grants_only_its_namespace() -> None:
    store = _store()
    agent = service_account_user("a", "agent")
    sa = {"kind": "ServiceAccount", "name": "agent"}  # namespace: the binding's
    store.create(BY_KIND["RoleBinding"], _binding("RoleBinding", "r", "ClusterRole", [sa], "a"))
    assert authorize(store, agent, _get("a"))[0]
    assert not authorize(store, agent, _get("b"))[0]
    assert not authorize(store, service_account_user("b", "agent"), _get("a"))[0]


def test_clusterrolebinding_grants_everywhere_by_group_or_user() -> None:
    store = _store()
    group = {"kind": "Group", "apiGroup": RBAC, "name": "system:serviceaccounts:a"}
    store.create(
        BY_KIND["ClusterRoleBinding"], _binding("ClusterRoleBinding", "c", "ClusterRole", [group])
    )
    allowed, reason = authorize(store, service_account_user("a", "any"), _get("b"))
    assert allowed and 'ClusterRoleBinding "c" of ClusterRole "reader"' in reason
    assert not authorize(store, service_account_user("b", "any"), _get("b"))[0]
    assert not authorize(store, User("alice"), _get("a"))[0]
    assert authorize(store, User("root", ("system:masters",)), _get("a"))[0]
    assert authorize(store, User("viewer", read_only=True), _get("a"))[0]
    write = Attributes("delete", "coordination.k8s.io", "leases", "a", "x")
    assert not authorize(store, User("viewer", read_only=True), write)[0]


def test_service_account_tokens_name_their_account_until_it_is_gone() -> None:
    store = _store()
    store.create(SERVICEACCOUNTS, {"metadata": {"name": "agent", "namespace": "a"}})
    ids = Identities(store)
    token, _ = ids.issue("a", "agent", 600)
    user = ids.authenticate(token)
    assert user is not None and user.name == "system:serviceaccount:a:agent"
    assert "system:serviceaccounts:a" in user.groups
    head, sig = token.rsplit(".", 1)
    forged = f"{head}.{'B' if sig[0] == 'A' else 'A'}{sig[1:]}"
    assert ids.authenticate(forged) is None
    assert ids.authenticate(Identities(store).issue("a", "agent")[0]) is None  # another key
    store.delete(SERVICEACCOUNTS, "a", "agent")
    assert ids.authenticate(token) is None
