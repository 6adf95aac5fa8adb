"""Defaults and validation of the objects clients create, as the API server applies them."""

from __future__ import annotations

import base64
import re
import secrets
import string
from typing import Any

from localmesh.sandbox import crds, errors
from localmesh.sandbox.resources import CUSTOMRESOURCEDEFINITIONS, ResourceType
from localmesh.sandbox.store import Obj, meta, now_rfc3339

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_ALNUM = string.ascii_lowercase + string.digits
LABEL_NAMES = ("namespaces", "services")


def random_suffix(n: int = 5) -> str:
    # The alphabet the API server uses for generateName (no vowels, no confusables).
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _check_name(rtype: ResourceType, name: str) -> list[tuple[str, str]]:
    if not name:
        return [("metadata.name", "Required value: name or generateName is required")]
    label = rtype.plural in LABEL_NAMES
    pattern, limit = (_DNS1123_LABEL, 63) if label else (_DNS1123_SUBDOMAIN, 253)
    if len(name) > limit or not pattern.match(name):
        what = "RFC 1123 label" if label else "RFC 1123 subdomain"
        return [
            (
                "metadata.name",
                f'Invalid value: "{name}": a lowercase {what} must consist of lower case '
                "alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character",
            )
        ]
    return []


def _port_ok(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _validate_pod(spec: dict[str, Any]) -> list[tuple[str, str]]:
    causes: list[tuple[str, str]] = []
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [("spec.containers", "Required value")]
    for i, c in enumerate(containers):
        if not isinstance(c, dict):
            causes.append((f"spec.containers[{i}]", "Invalid value"))
            continue
        if not c.get("name"):
            causes.append((f"spec.containers[{i}].name", "Required value"))
        if not c.get("image"):
            causes.append((f"spec.containers[{i}].image", "Required value"))
        for j, p in enumerate(c.get("ports") or []):
            if not _port_ok(p.get("containerPort")):
                causes.append(
                    (
                        f"spec.containers[{i}].ports[{j}].containerPort",
                        f"Invalid value: {p.get('containerPort')!r}: must be between 1 and "
                        "65535, inclusive",
                    )
                )
    return causes


def _default_pod(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    # The ServiceAccount admission plugin: every pod runs as some service account.
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec["serviceAccount"] = spec["serviceAccountName"]
    for c in spec.get("containers", []):
        c.setdefault("imagePullPolicy", "IfNotPresent")
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})
        for p in c.get("ports") or []:
            p.setdefault("protocol", "TCP")
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Pending")
    status.setdefault("qosClass", "BestEffort")


def _validate_service(spec: dict[str, Any]) -> list[tuple[str, str]]:
    causes: list[tuple[str, str]] = []
    ports = spec.get("ports")
    headless = spec.get("clusterIP") == "None"
    if spec.get("type") == "ExternalName":
        return causes
    if not ports and not headless:
        return [("spec.ports", "Required value")]
    names: set[str] = set()
    for i, p in enumerate(ports or []):
        if not _port_ok(p.get("port")):
            causes.append(
                (
                    f"spec.ports[{i}].port",
                    f"Invalid value: {p.get('port')!r}: must be between 1 and 65535, inclusive",
                )
            )
        if len(ports or []) > 1 and not p.get("name"):
            causes.append((f"spec.ports[{i}].name", "Required value"))
        if p.get("name") in names:
            causes.append((f"spec.ports[{i}].name", f'Duplicate value: "{p.get("name")}"'))
        names.add(p.get("name", ""))
        target = p.get("targetPort")
        if target is not None and not (_port_ok(target) or isinstance(target, str)):
            causes.append((f"spec.ports[{i}].targetPort", f"Invalid value: {target!r}"))
    return causes


def _default_service(obj: Obj, allocate_ip: Any) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        if not spec.get("clusterIP"):
            spec["clusterIP"] = allocate_ip()
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for p in spec.get("ports") or []:
        p.setdefault("protocol", "TCP")
        p.setdefault("targetPort", p.get("port"))
    obj.setdefault("status", {"loadBalancer": {}})


def _validate_deployment(spec: dict[str, Any]) -> list[tuple[str, str]]:
    causes: list[tuple[str, str]] = []
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (
        selector.get("matchLabels") or selector.get("matchExpressions")
    ):
        causes.append(("spec.selector", "Required value"))
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    match = (selector or {}).get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in match.items()):
        causes.append(
            (
                "spec.template.metadata.labels",
                "Invalid value: `selector` does not match template `labels`",
            )
        )
    causes += [(f"spec.template.{f}", m) for f, m in _validate_pod(template.get("spec") or {})]
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        causes.append(("spec.replicas", f"Invalid value: {replicas!r}: must be >= 0"))
    return causes


def _validate_role(obj: Obj) -> list[tuple[str, str]]:
    causes: list[tuple[str, str]] = []
    rules = obj.get("rules") or []
    if not isinstance(rules, list):
        return [("rules", "Invalid value: must be a list")]
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or not rule.get("verbs"):
            causes.append(
                (f"rules[{i}].verbs", "Required value: verbs must contain at least one value")
            )
            continue
        if not (rule.get("resources") or rule.get("nonResourceURLs")):
            causes.append(
                (
                    f"rules[{i}].resources",
                    "Required value: resource rules must supply at least one resource",
                )
            )
        elif rule.get("resources") and "apiGroups" not in rule:
            causes.append(
                (
                    f"rules[{i}].apiGroups",
                    "Required value: resource rules must supply at least one api group",
                )
            )
    return causes


ROLE_REF_KINDS = ("Role", "ClusterRole")
SUBJECT_KINDS = ("ServiceAccount", "User", "Group")


def _validate_binding(obj: Obj) -> list[tuple[str, str]]:
    causes: list[tuple[str, str]] = []
    ref = obj.get("roleRef")
    if not isinstance(ref, dict) or not ref.get("name"):
        causes.append(("roleRef.name", "Required value"))
    elif ref.get("kind") not in ROLE_REF_KINDS:
        causes.append(
            (
                "roleRef.kind",
                f'Unsupported value: "{ref.get("kind")}": supported values: "Role", "ClusterRole"',
            )
        )
    for i, subject in enumerate(obj.get("subjects") or []):
        if not isinstance(subject, dict) or subject.get("kind") not in SUBJECT_KINDS:
            kind = subject.get("kind") if isinstance(subject, dict) else subject
            causes.append(
                (
                    f"subjects[{i}].kind",
                    f'Unsupported value: "{kind}": supported values: '
                    '"ServiceAccount", "User", "Group"',
                )
            )
        elif not subject.get("name"):
            causes.append((f"subjects[{i}].name", "Required value"))
    return causes


def _validate_lease(spec: dict[str, Any]) -> list[tuple[str, str]]:
    causes: list[tuple[str, str]] = []
    for field in ("leaseDurationSeconds", "leaseTransitions"):
        value = spec.get(field)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            causes.append(
                (f"spec.{field}", f"Invalid value: {value!r}: must be greater than or equal to 0")
            )
    if spec.get("leaseDurationSeconds") == 0:
        causes.append(("spec.leaseDurationSeconds", "Invalid value: 0: must be greater than 0"))
    return causes


def validate_change(rtype: ResourceType, current: Obj, new: Obj) -> None:
    """Fields the API server refuses to change on update."""
    name = current["metadata"]["name"]
    if rtype.plural in ("rolebindings", "clusterrolebindings") and new.get(
        "roleRef"
    ) != current.get("roleRef"):
        raise errors.invalid(
            rtype.kind, name, [("roleRef", "Invalid value: cannot change roleRef")], rtype.group
        )
    if rtype.plural in ("deployments", "replicasets"):
        old_sel = current.get("spec", {}).get("selector")
        if new.get("spec", {}).get("selector") != old_sel:
            raise errors.invalid(
                rtype.kind,
                name,
                [("spec.selector", "Invalid value: field is immutable")],
                rtype.group,
            )


def _default_deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault(
        "strategy",
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
    )
    obj.setdefault("status", {})


def prepare_create(rtype: ResourceType, obj: Obj, allocate_cluster_ip: Any) -> Obj:
    """Apply generateName, defaults and validation; raise 422 Invalid for bad objects."""
    if not isinstance(obj, dict):
        raise errors.bad_request("the request body must be a JSON object")
    m = meta(obj)
    if not m.get("name") and m.get("generateName"):
        m["name"] = f"{m['generateName']}{random_suffix()}"
    name = m.get("name", "")
    causes = _check_name(rtype, name)
    spec = obj.get("spec") or {}
    # built-in rules by plural; a custom resource may reuse one (crds checks it instead)
    kind = "" if isinstance(rtype, crds.CustomType) else rtype.plural
    if kind == "pods":
        causes += _validate_pod(spec)
    elif kind == "services":
        causes += _validate_service(spec)
    elif kind in ("deployments", "replicasets"):
        causes += _validate_deployment(spec)
    elif kind in ("roles", "clusterroles"):
        causes += _validate_role(obj)
    elif kind in ("rolebindings", "clusterrolebindings"):
        causes += _validate_binding(obj)
    elif kind == "leases":
        causes += _validate_lease(spec)
    if causes:
        raise errors.invalid(rtype.kind, name, causes, rtype.group)
    validate_update(rtype, obj)
    if kind == "pods":
        _default_pod(obj)
    elif kind == "services":
        _default_service(obj, allocate_cluster_ip)
    elif kind == "deployments":
        _default_deployment(obj)
    elif kind == "replicasets":
        obj.setdefault("spec", {}).setdefault("replicas", 1)
        obj.setdefault("status", {"replicas": 0})
    elif kind in ("rolebindings", "clusterrolebindings"):
        for subject in obj.get("subjects") or []:
            if subject.get("kind") in ("User", "Group"):
                subject.setdefault("apiGroup", "rbac.authorization.k8s.io")
    elif kind == "leases":
        obj.setdefault("spec", {})
    elif rtype is CUSTOMRESOURCEDEFINITIONS:
        crds.prepare_definition(obj)
    elif kind == "namespaces":
        m.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj["status"] = {"phase": "Active"}
    elif kind == "events":
        obj.setdefault("firstTimestamp", now_rfc3339())
    return obj


def _merge_string_data(secret: Obj) -> None:
    """A Secret's write-only `stringData` goes into `data`, base64, over the same keys, as
    the API server stores it (a read never shows `stringData`)."""
    string_data = secret.pop("stringData", None)
    if string_data is None:
        return
    name = meta(secret).get("name", "")
    if not isinstance(string_data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in string_data.items()
    ):
        raise errors.invalid("Secret", name, [("stringData", "Invalid value")])
    data = secret.get("data") or {}
    if not isinstance(data, dict):
        raise errors.invalid("Secret", name, [("data", "Invalid value")])
    for key, value in string_data.items():
        data[key] = base64.b64encode(value.encode()).decode()
    secret["data"] = data


def validate_update(rtype: ResourceType, obj: Obj) -> None:
    """Checks shared by create and update: labels must be string maps, names must exist."""
    m = meta(obj)
    for field in ("labels", "annotations"):
        value = m.get(field)
        if value is not None and (
            not isinstance(value, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            raise errors.invalid(
                rtype.kind,
                m.get("name", ""),
                [(f"metadata.{field}", "Invalid value")],
                rtype.group,
            )
    if rtype.plural == "secrets":
        _merge_string_data(obj)
    causes: list[tuple[str, str]] = []
    if isinstance(rtype, crds.CustomType):
        causes = rtype.causes(obj)
    elif rtype is CUSTOMRESOURCEDEFINITIONS:
        causes = crds.definition_causes(obj)
    elif rtype.plural == "services" and obj.get("spec", {}).get("ports") is not None:
        causes = _validate_service(obj["spec"])
    elif rtype.plural in ("roles", "clusterroles"):
        causes = _validate_role(obj)
    elif rtype.plural == "leases":
        causes = _validate_lease(obj.get("spec") or {})
    if causes:
        raise errors.invalid(rtype.kind, m.get("name", ""), causes, rtype.group)
