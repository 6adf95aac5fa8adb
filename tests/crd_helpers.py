"""CustomResourceDefinitions for tests: Istio's DestinationRule and VirtualService, and
Gateway API's HTTPRoute, to install in a sandbox.

Istio's schemas come from Istio's own typed models (cloudcoil-models-istio, generated from
Istio's CRD schemas): their JSON Schema, with the `$ref`s inlined and pydantic's
`anyOf [X, null]` folded back to X, is the CRD's openAPIV3Schema. HTTPRoute's is the copy
pinned in tests/unit/schemas (the file says where it came from).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from cloudcoil.models.istio.networking.v1 import DestinationRule, VirtualService

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSIONS = ("v1alpha3", "v1beta1", "v1")  # all served; v1 stored (as Istio ships them)
HTTPROUTE_SCHEMA = Path(__file__).parent / "unit" / "schemas" / "httproute-v1.json"


def _structural(schema: Any, defs: dict[str, Any]) -> Any:
    """pydantic's JSON Schema as a Kubernetes structural schema: no $ref, no null types."""
    if isinstance(schema, list):
        return [_structural(s, defs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _structural(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    options = schema.get("anyOf")
    if options is not None:
        kept = [o for o in options if o != {"type": "null"}]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default", "title")}
            return _structural({**kept[0], **rest}, defs)
    return {
        k: _structural(v, defs)
        for k, v in schema.items()
        if k not in ("title", "default", "$defs", "const")
    }


def _istio_schema(model: Any) -> dict[str, Any]:
    raw = model.model_json_schema()
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    props = schema["properties"]
    props["metadata"] = {"type": "object"}
    props["status"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schema["type"] = "object"
    return schema


def _crd(
    group: str,
    kind: str,
    plural: str,
    *,
    short: list[str],
    versions: tuple[str, ...],
    schema: dict[str, Any],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": v,
                    "served": True,
                    "storage": v == versions[-1],
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
                for v in versions
            ],
        },
    }


AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def istio_crds() -> list[dict[str, Any]]:
    """DestinationRule and VirtualService, with the printer columns Istio gives them."""
    return [
        _crd(
            ISTIO_GROUP,
            "DestinationRule",
            "destinationrules",
            short=["dr"],
            versions=ISTIO_VERSIONS,
            schema=_istio_schema(DestinationRule),
            columns=[{"name": "Host", "type": "string", "jsonPath": ".spec.host"}, AGE_COLUMN],
        ),
        _crd(
            ISTIO_GROUP,
            "VirtualService",
            "virtualservices",
            short=["vs"],
            versions=ISTIO_VERSIONS,
            schema=_istio_schema(VirtualService),
            columns=[
                {"name": "Gateways", "type": "string", "jsonPath": ".spec.gateways"},
                {"name": "Hosts", "type": "string", "jsonPath": ".spec.hosts"},
                AGE_COLUMN,
            ],
        ),
    ]


def httproute_crd() -> dict[str, Any]:
    schema = json.loads(HTTPROUTE_SCHEMA.read_text())["schema"]
    return _crd(
        "gateway.networking.k8s.io",
        "HTTPRoute",
        "httproutes",
        short=[],
        versions=("v1",),
        schema=schema,
        columns=[
            {"name": "Hostnames", "type": "string", "jsonPath": ".spec.hostnames"},
            AGE_COLUMN,
        ],
    )


def crd_yaml(*crds: dict[str, Any]) -> str:
    """For `kubectl apply -f -`."""
    return yaml.safe_dump_all(crds)
