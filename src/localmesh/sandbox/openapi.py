"""Just enough OpenAPI v3 for kubectl: per group-version, one PATCH path per kind that
takes `fieldValidation`, so kubectl validates on the server instead of downloading schemas
(kubectl create/apply refuse to run when no OpenAPI document can be fetched)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from localmesh.sandbox.resources import TYPES, ResourceType

V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _item_path(t: ResourceType) -> str:
    ns = "/namespaces/{namespace}" if t.namespaced else ""
    return f"/{_gv_path(t.group, t.version)}{ns}/{t.plural}/{{name}}"


def group_versions(extra: Sequence[ResourceType] = ()) -> list[tuple[str, str]]:
    return sorted({(t.group, t.version) for t in (*TYPES, *extra)})


def document(group: str, version: str, extra: Sequence[ResourceType] = ()) -> dict[str, Any] | None:
    """`extra`: the custom resources' types (crds), served like the built-in ones."""
    types = [t for t in (*TYPES, *extra) if t.group == group and t.version == version]
    if not types:
        return None
    params = [
        {"name": n, "in": "query", "schema": {"type": "string"}}
        for n in ("dryRun", "fieldManager", "fieldValidation", "force")
    ]
    paths: dict[str, Any] = {}
    for t in types:
        gvk = {"group": t.group, "version": t.version, "kind": t.kind}
        op = {
            "operationId": f"patch{t.kind}",
            "parameters": params,
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        }
        paths[_item_path(t)] = {"patch": op}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def _hash(group: str, version: str, extra: Sequence[ResourceType]) -> str:
    text = json.dumps(document(group, version, extra), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32].upper()


def root(extra: Sequence[ResourceType] = ()) -> dict[str, Any]:
    return {
        "paths": {
            _gv_path(g, v): {
                "serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}?hash={_hash(g, v, extra)}"
            }
            for g, v in group_versions(extra)
        }
    }


def lookup(path: str, extra: Sequence[ResourceType] = ()) -> dict[str, Any] | None:
    """The document for /openapi/v3/<path> (api/v1, apis/apps/v1, ...), or None."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) == 2:
        return document("", parts[1], extra)
    if parts[0] == "apis" and len(parts) == 3:
        return document(parts[1], parts[2], extra)
    return None
