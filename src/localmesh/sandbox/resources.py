"""The resource types the sandbox serves and the discovery documents that describe them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RBAC_GROUP = "rbac.authorization.k8s.io"
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    # Spec and status are written separately (PUT/PATCH of the object keeps the status).
    has_status: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", False, ("ns",), ("status",), True),
    ResourceType("", "v1", "nodes", "Node", False, ("no",), ("status",), True),
    ResourceType("", "v1", "pods", "Pod", True, ("po",), ("status", "portforward", "log"), True),
    ResourceType("", "v1", "services", "Service", True, ("svc",), ("status",), True),
    ResourceType("", "v1", "endpoints", "Endpoints", True, ("ep",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    ResourceType("", "v1", "secrets", "Secret", True),
    ResourceType("", "v1", "events", "Event", True, ("ev",)),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",), ("token",)),
    ResourceType(
        "apps", "v1", "deployments", "Deployment", True, ("deploy",), ("status", "scale"), True
    ),
    ResourceType(
        "apps", "v1", "replicasets", "ReplicaSet", True, ("rs",), ("status", "scale"), True
    ),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
    ResourceType(RBAC_GROUP, "v1", "roles", "Role", True),
    ResourceType(RBAC_GROUP, "v1", "rolebindings", "RoleBinding", True),
    ResourceType(RBAC_GROUP, "v1", "clusterroles", "ClusterRole", False),
    ResourceType(RBAC_GROUP, "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    # what they define is served by crds.CustomResources
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        ("crd", "crds"),
        ("status",),
        True,
    ),
)

BY_PATH: dict[tuple[str, str, str], ResourceType] = {
    (t.group, t.version, t.plural): t for t in TYPES
}
BY_PLURAL: dict[str, ResourceType] = {t.plural: t for t in TYPES}
BY_KIND: dict[str, ResourceType] = {t.kind: t for t in TYPES}

PODS = BY_PLURAL["pods"]
SERVICES = BY_PLURAL["services"]
ENDPOINTS = BY_PLURAL["endpoints"]
ENDPOINTSLICES = BY_PLURAL["endpointslices"]
NAMESPACES = BY_PLURAL["namespaces"]
NODES = BY_PLURAL["nodes"]
DEPLOYMENTS = BY_PLURAL["deployments"]
CONFIGMAPS = BY_PLURAL["configmaps"]
EVENTS = BY_PLURAL["events"]
SERVICEACCOUNTS = BY_PLURAL["serviceaccounts"]
REPLICASETS = BY_PLURAL["replicasets"]
LEASES = BY_PLURAL["leases"]
ROLES = BY_PLURAL["roles"]
ROLEBINDINGS = BY_PLURAL["rolebindings"]
CLUSTERROLES = BY_PLURAL["clusterroles"]
CLUSTERROLEBINDINGS = BY_PLURAL["clusterrolebindings"]
CUSTOMRESOURCEDEFINITIONS = BY_PLURAL["customresourcedefinitions"]
# Kinds kubectl lists under `kubectl get all`.
ALL_CATEGORY = frozenset({"pods", "services", "deployments", "replicasets"})


# Served outside the store: `kubectl auth can-i` and `kubectl auth whoami` create these
# and read the answer.
AUTHORIZATION_GROUP = "authorization.k8s.io"
AUTHENTICATION_GROUP = "authentication.k8s.io"
SELF_SUBJECT_ACCESS_REVIEWS = "selfsubjectaccessreviews"
_REVIEWS: dict[str, tuple[tuple[str, str, str], ...]] = {
    AUTHORIZATION_GROUP: (
        (SELF_SUBJECT_ACCESS_REVIEWS, "selfsubjectaccessreview", "SelfSubjectAccessReview"),
        ("selfsubjectrulesreviews", "selfsubjectrulesreview", "SelfSubjectRulesReview"),
    ),
    AUTHENTICATION_GROUP: (("selfsubjectreviews", "selfsubjectreview", "SelfSubjectReview"),),
}
# path -> kind of every review the API server answers itself
SELF_REVIEWS: dict[str, str] = {
    f"/apis/{group}/v1/{plural}": kind
    for group, reviews in _REVIEWS.items()
    for plural, _, kind in reviews
}


def groups() -> dict[str, str]:
    """group name -> its one served version (core excluded)."""
    out: dict[str, str] = {}
    for t in TYPES:
        if t.group:
            out[t.group] = t.version
    for group in _REVIEWS:
        out[group] = "v1"
    return out


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def api_group_list() -> dict[str, Any]:
    items = []
    for group, version in groups().items():
        gv = {"groupVersion": f"{group}/{version}", "version": version}
        items.append({"name": group, "versions": [gv], "preferredVersion": gv})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": items}


def api_group(group: str) -> dict[str, Any] | None:
    version = groups().get(group)
    if version is None:
        return None
    gv = {"groupVersion": f"{group}/{version}", "version": version}
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [gv],
        "preferredVersion": gv,
    }


def resource_entry(t: ResourceType, categories: tuple[str, ...]) -> dict[str, Any]:
    """The APIResourceList entry of a type itself (built-in or custom; not its subresources)."""
    entry: dict[str, Any] = {
        "name": t.plural,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": list(ALL_VERBS),
    }
    if t.short_names:
        entry["shortNames"] = list(t.short_names)
    if categories:
        entry["categories"] = list(categories)
    return entry


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    if group in _REVIEWS and version == "v1":
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}",
            "resources": [
                {
                    "name": plural,
                    "singularName": singular,
                    "namespaced": False,
                    "kind": kind,
                    "verbs": ["create"],
                }
                for plural, singular, kind in _REVIEWS[group]
            ],
        }
    types = [t for t in TYPES if t.group == group and t.version == version]
    if not types:
        return None
    resources: list[dict[str, Any]] = []
    for t in types:
        resources.append(resource_entry(t, ("all",) if t.plural in ALL_CATEGORY else ()))
        for sub in t.subresources:
            sub_entry: dict[str, Any] = {
                "name": f"{t.plural}/{sub}",
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }
            if sub == "portforward":
                sub_entry.update(kind="PodPortForwardOptions", verbs=["create", "get"])
            elif sub == "log":
                sub_entry.update(kind="Pod", verbs=["get"])
            elif sub == "scale":
                sub_entry.update(kind="Scale", group="autoscaling", version="v1")
            elif sub == "token":
                sub_entry.update(
                    kind="TokenRequest",
                    group="authentication.k8s.io",
                    version="v1",
                    verbs=["create"],
                )
            resources.append(sub_entry)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }
