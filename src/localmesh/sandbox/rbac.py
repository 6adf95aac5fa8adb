"""Who is calling (bearer tokens, service-account tokens, impersonation) and what they may
do (RBAC: Roles, ClusterRoles and their bindings), as the API server decides it.

Service-account tokens are JWTs signed with a key of this sandbox (HS256): stateless like
real ones, so they survive an API server restart; a token of a deleted (or re-created)
service account is refused, as the real token authenticator checks the uid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from localmesh.sandbox import errors
from localmesh.sandbox.resources import (
    CLUSTERROLEBINDINGS,
    CLUSTERROLES,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
)
from localmesh.sandbox.store import Obj, Store

AUTHENTICATED = "system:authenticated"
MASTERS = "system:masters"
SA_PREFIX = "system:serviceaccount:"
ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_TOKEN_SECONDS = 3600
READ_VERBS = frozenset({"get", "list", "watch"})


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = (AUTHENTICATED,)
    uid: str = ""
    read_only: bool = False

    @property
    def is_admin(self) -> bool:
        return MASTERS in self.groups


def service_account_user(namespace: str, name: str, uid: str = "") -> User:
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED)
    return User(f"{SA_PREFIX}{namespace}:{name}", groups, uid)


@dataclass(frozen=True)
class Attributes:
    """What a request does, in RBAC's terms."""

    verb: str
    group: str
    resource: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource

    @property
    def resource_path(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def forbidden(user: User, a: Attributes) -> errors.ApiError:
    """403 with the message a real API server writes."""
    subject = f'{a.qualified} "{a.name}"' if a.name else a.qualified
    where = f' in the namespace "{a.namespace}"' if a.namespace else " at the cluster scope"
    details: dict[str, Any] = {"kind": a.resource}
    if a.name:
        details["name"] = a.name
    if a.group:
        details["group"] = a.group
    return errors.ApiError(
        403,
        "Forbidden",
        f'{subject} is forbidden: User "{user.name}" cannot {a.verb} resource '
        f'"{a.resource_path}" in API group "{a.group}"{where}',
        details,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Identities:
    """Static tokens (admin, read-only viewer) and service-account tokens."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._key = secrets.token_bytes(32)
        self._static: dict[str, User] = {}

    def add_static(self, token: str, user: User) -> None:
        self._static[token] = user

    def remove_static(self, token: str) -> None:
        self._static.pop(token, None)

    # ---- service-account tokens ----------------------------------------------------------
    def issue(
        self,
        namespace: str,
        name: str,
        seconds: int = DEFAULT_TOKEN_SECONDS,
        audiences: list[str] | None = None,
        pod: Obj | None = None,
    ) -> tuple[str, int]:
        """A token for the service account (which must exist); returns (token, expiry)."""
        sa = self.store.peek(SERVICEACCOUNTS, namespace, name)
        if sa is None:
            raise errors.not_found("serviceaccounts", name)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": audiences or [ISSUER],
            "sub": f"{SA_PREFIX}{namespace}:{name}",
            "iat": now,
            "nbf": now,
            "exp": now + seconds,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]},
            },
        }
        if pod is not None:
            claims["kubernetes.io"]["pod"] = {
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            }
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}", now + seconds

    def _service_account(self, token: str) -> User | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        want = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(want, _unb64(parts[2])):
                return None
            claims = json.loads(_unb64(parts[1]))
            info = claims["kubernetes.io"]
            namespace, name = info["namespace"], info["serviceaccount"]["name"]
            uid = info["serviceaccount"]["uid"]
            expires = int(claims["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        sa = self.store.peek(SERVICEACCOUNTS, namespace, name)
        if sa is None or sa["metadata"]["uid"] != uid:
            return None
        return service_account_user(namespace, name, uid)

    def authenticate(self, token: str) -> User | None:
        if not token:
            return None
        return self._static.get(token) or self._service_account(token)


def impersonate(user: User, name: str, groups: list[str]) -> User:
    """The identity an admin acts as with Impersonate-User / Impersonate-Group headers."""
    if not user.is_admin:
        raise errors.ApiError(
            403,
            "Forbidden",
            f'users "{name}" is forbidden: User "{user.name}" cannot impersonate resource '
            '"users" in API group "" at the cluster scope',
        )
    if name.startswith(SA_PREFIX) and name.count(":") == 3:
        _, _, namespace, sa = name.split(":")
        base = service_account_user(namespace, sa)
        return User(base.name, tuple(dict.fromkeys([*base.groups, *groups])))
    return User(name, tuple(dict.fromkeys([*groups, AUTHENTICATED])))


# ---- authorization ---------------------------------------------------------------------
def _subject_matches(subject: dict[str, Any], user: User, binding_ns: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return name == user.name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        return user.name == f"{SA_PREFIX}{subject.get('namespace') or binding_ns}:{name}"
    return False


def rule_allows(rule: dict[str, Any], a: Attributes) -> bool:
    """One PolicyRule against the request (RBAC's VerbMatches, APIGroupMatches, ...)."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and a.verb not in verbs:
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and a.group not in groups:
        return False
    resources = rule.get("resources") or []
    wanted = a.resource_path
    if not (
        "*" in resources
        or wanted in resources
        or (a.subresource is not None and f"*/{a.subresource}" in resources)
    ):
        return False
    names = rule.get("resourceNames") or []
    return not names or (a.name is not None and a.name in names)


@dataclass(frozen=True)
class Grant:
    """A binding that gives a user some rules: how RBAC explains an allow."""

    binding_kind: str
    binding: str
    role_kind: str
    role: str
    rules: tuple[dict[str, Any], ...]


def _role_rules(store: Store, ref: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    if ref.get("kind") == "ClusterRole":
        role = store.peek(CLUSTERROLES, None, ref.get("name", ""))
    else:
        role = store.peek(ROLES, namespace, ref.get("name", ""))
    return list((role or {}).get("rules") or [])


def grants(store: Store, user: User, namespace: str | None) -> Iterator[Grant]:
    """Every binding that applies to `user` in `namespace` (cluster bindings always)."""
    for b in store.iter(CLUSTERROLEBINDINGS):
        if any(_subject_matches(s, user, "") for s in b.get("subjects") or []):
            ref = b.get("roleRef") or {}
            yield Grant(
                "ClusterRoleBinding",
                b["metadata"]["name"],
                ref.get("kind", ""),
                ref.get("name", ""),
                tuple(_role_rules(store, ref, "")),
            )
    if namespace is None:
        return
    for b in store.iter(ROLEBINDINGS, namespace):
        if any(_subject_matches(s, user, namespace) for s in b.get("subjects") or []):
            ref = b.get("roleRef") or {}
            yield Grant(
                "RoleBinding",
                f"{b['metadata']['name']}/{namespace}",
                ref.get("kind", ""),
                ref.get("name", ""),
                tuple(_role_rules(store, ref, namespace)),
            )


# What every authenticated user may do (system:basic-user, system:discovery).
BASIC_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        "verbs": ["create"],
    },
)


def authorize(store: Store, user: User, a: Attributes) -> tuple[bool, str]:
    """(allowed, reason) for one request, as the RBAC authorizer answers it."""
    if user.is_admin:
        return True, f'allowed: "{user.name}" is in group "{MASTERS}"'
    if user.read_only and a.verb in READ_VERBS:
        return True, f'allowed: "{user.name}" may read everything'
    if any(rule_allows(r, a) for r in BASIC_RULES):
        return True, "allowed for every authenticated user"
    for g in grants(store, user, a.namespace):
        if any(rule_allows(r, a) for r in g.rules):
            return True, (
                f'RBAC: allowed by {g.binding_kind} "{g.binding}" of {g.role_kind} '
                f'"{g.role}" to User "{user.name}"'
            )
    return False, ""


def rules_for(store: Store, user: User, namespace: str) -> list[dict[str, Any]]:
    """Every resource rule that applies to `user` in `namespace` (SelfSubjectRulesReview)."""
    if user.is_admin:
        return [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]
    rules: list[dict[str, Any]] = list(BASIC_RULES)
    if user.read_only:
        rules.append({"verbs": sorted(READ_VERBS), "apiGroups": ["*"], "resources": ["*"]})
    for g in grants(store, user, namespace):
        rules.extend(r for r in g.rules if r.get("resources"))
    return rules
