"""CustomResourceDefinitions (`apiextensions.k8s.io/v1`) and the custom resources they
define, served as the API server serves them.

A CRD is stored like any other object. Accepted at once (its status says Established and
NamesAccepted on create, where a real cluster's controller adds them a moment later), it
puts one `CustomType` per served version into discovery, OpenAPI, routing and RBAC; its
objects live in one table whatever version wrote them (the `None` conversion strategy:
only `apiVersion` differs between versions). Objects are checked against the version's
openAPIV3Schema (types, required fields, enums, patterns); unknown fields are neither
pruned nor refused. Deleting the CRD deletes its objects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs

from localmesh.sandbox import tables
from localmesh.sandbox.resources import CUSTOMRESOURCEDEFINITIONS, ResourceType, resource_entry
from localmesh.sandbox.store import Obj, Store, StoredEvent, now_rfc3339

CRDS = CUSTOMRESOURCEDEFINITIONS


@dataclass(frozen=True)
class CustomType(ResourceType):
    """One served version of a CRD's resource."""

    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    columns: tuple[tables.Column, ...] = field(default=(), compare=False, hash=False)
    singular_name: str = ""
    categories: tuple[str, ...] = ()
    storage: bool = False

    @property
    def singular(self) -> str:
        return self.singular_name or self.kind.lower()

    def causes(self, obj: Obj) -> list[tuple[str, str]]:
        """What the version's schema says is wrong with `obj` (empty: nothing)."""
        if not self.schema:
            return []
        validator = jsonschema.Draft7Validator(self.schema)
        out = []
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in err.absolute_path) or "<root>"
            out.append((where, f"Invalid value: {err.message}"))
        return out[:20]


def _condition(type_: str, reason: str, message: str) -> dict[str, str]:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_rfc3339(),
    }


def definition_causes(obj: Obj) -> list[tuple[str, str]]:
    """The API server's checks of a CRD that matter to a client."""
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    causes: list[tuple[str, str]] = []
    if not group or "." not in str(group):
        causes.append(("spec.group", "Invalid value: should be a domain with at least one dot"))
    if not plural:
        causes.append(("spec.names.plural", "Required value"))
    if not kind:
        causes.append(("spec.names.kind", "Required value"))
    if group and plural and obj.get("metadata", {}).get("name") != f"{plural}.{group}":
        causes.append(("metadata.name", 'Invalid value: must be spec.names.plural+"."+spec.group'))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            ("spec.scope", 'Unsupported value: supported values: "Cluster", "Namespaced"')
        )
    versions = spec.get("versions") or []
    if not versions or sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(
            (
                "spec.versions",
                "Invalid value: must have exactly one version marked as storage version",
            )
        )
    return causes


def prepare_definition(obj: Obj) -> None:
    """A new CRD's status: names accepted and established (no controller delay here)."""
    names = (obj.get("spec") or {}).get("names") or {}
    accepted = dict(names)
    accepted.setdefault("singular", str(names.get("kind", "")).lower())
    accepted.setdefault("listKind", f"{names.get('kind', '')}List")
    obj["status"] = {
        "acceptedNames": accepted,
        "conditions": [
            _condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            _condition(
                "Established", "InitialNamesAccepted", "the initial names have been accepted"
            ),
        ],
        "storedVersions": [v["name"] for v in obj["spec"]["versions"] if v.get("storage")],
    }


def _json_path(obj: Any, path: str) -> Any:
    """A printer column's simple JSONPath (`.spec.hosts`, `.status.conditions[0].type`)."""
    value = obj
    for part in path.strip().lstrip(".").replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("[") and part.endswith("]"):
            try:
                value = value[int(part[1:-1])] if isinstance(value, list) else None
            except (ValueError, IndexError):
                return None
        else:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return None
    return value


def _column(col: dict[str, Any]) -> tables.Column:
    path, type_ = str(col.get("jsonPath", "")), str(col.get("type", "string"))

    def cell(obj: Obj) -> Any:
        value = _json_path(obj, path)
        if value is None:
            return None
        if type_ == "date":
            return tables.age({"metadata": {"creationTimestamp": value}})
        if isinstance(value, dict | list):
            return json.dumps(value, separators=(",", ":"))
        return value

    name = str(col.get("name", ""))
    return (name, "string" if type_ == "date" else type_, int(col.get("priority", 0)), cell)


def _columns(version: dict[str, Any]) -> tuple[tables.Column, ...]:
    extra = version.get("additionalPrinterColumns")
    if extra is None:
        return (tables.NAME, tables.AGE)
    return (tables.NAME, *(_column(c) for c in extra))


def types_of(crd: Obj) -> list[CustomType]:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        out.append(
            CustomType(
                str(spec["group"]),
                str(version["name"]),
                str(names["plural"]),
                str(names["kind"]),
                spec.get("scope") == "Namespaced",
                tuple(names.get("shortNames") or ()),
                tuple(s for s in ("status", "scale") if s in subresources),
                "status" in subresources,
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                columns=_columns(version),
                singular_name=str(names.get("singular") or ""),
                categories=tuple(names.get("categories") or ()),
                storage=bool(version.get("storage")),
            )
        )
    return out


def _version_order(version: str) -> tuple[int, int, int]:
    """Kubernetes' version priority: GA > beta > alpha, then higher numbers first."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if m is None:
        return (3, 0, 0)
    stage = {"": 0, "beta": 1, "alpha": 2}[m.group(2) or ""]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0))


class CustomResources:
    """The custom types the cluster's CRDs define, kept in step with the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # CRD name -> its types (watches and the store match types by group and plural, so
        # replacing them on an update keeps both working)
        self._by_crd: dict[str, list[CustomType]] = {}
        store.subscribe(self._on_event)

    def types(self) -> list[CustomType]:
        return [t for ts in self._by_crd.values() for t in ts]

    def lookup(self, group: str, version: str, plural: str) -> CustomType | None:
        for t in self.types():
            if (t.group, t.version, t.plural) == (group, version, plural):
                return t
        return None

    def _on_event(self, ev: StoredEvent) -> None:
        if ev.rtype != CRDS:
            return
        name = ev.obj["metadata"]["name"]
        if ev.type == "DELETED":
            for rtype in self._by_crd.pop(name, [])[:1]:
                for obj in list(self.store.iter(rtype)):
                    md = obj["metadata"]
                    self.store.delete(rtype, md.get("namespace"), md["name"])
            return
        self._by_crd[name] = types_of(ev.obj)

    # ---- discovery -----------------------------------------------------------------------
    def _groups(self) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for t in self.types():
            out.setdefault(t.group, set()).add(t.version)
        return {g: sorted(vs, key=_version_order) for g, vs in out.items()}

    def api_group_list(self, builtin: dict[str, Any]) -> dict[str, Any]:
        groups = [g for g in (self.api_group(name) for name in self._groups()) if g]
        for g in groups:
            g.pop("kind")
            g.pop("apiVersion")
        return {**builtin, "groups": [*builtin["groups"], *groups]}

    def api_group(self, group: str) -> dict[str, Any] | None:
        versions = self._groups().get(group)
        if not versions:
            return None
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": gvs,
            "preferredVersion": gvs[0],
        }

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        found = [t for t in self.types() if (t.group, t.version) == (group, version)]
        if not found:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}",
            "resources": list(_entries(found)),
        }


def _entries(types: Iterable[CustomType]) -> Iterable[dict[str, Any]]:
    for t in types:
        yield resource_entry(t, t.categories)
        for sub in t.subresources:
            yield {
                "name": f"{t.plural}/{sub}",
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind if sub == "status" else "Scale",
                "verbs": ["get", "patch", "update"],
            }
