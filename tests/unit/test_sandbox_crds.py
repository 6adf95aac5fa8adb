"""The sandbox's CustomResourceDefinitions without a server: the checks of a CRD, the types
it defines, their printer columns and schemas, and the store following CRD writes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from localmesh.sandbox import errors
from localmesh.sandbox.cluster import Cluster
from localmesh.sandbox.crds import CRDS, definition_causes, types_of
from localmesh.sandbox.tables import table


def crd(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wd"]},
            "scope": "Namespaced",
            "versions": [
                {"name": "v1beta1", "served": True, "storage": False},
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer"},
                                        "tags": {"type": "array", "items": {"type": "string"}},
                                    },
                                }
                            },
                        }
                    },
                    "additionalPrinterColumns": [
                        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                        {"name": "Tags", "type": "string", "jsonPath": ".spec.tags"},
                        {"name": "First", "type": "string", "jsonPath": ".spec.tags[0]"},
                    ],
                },
                {"name": "v0", "served": False, "storage": False},
            ],
        },
    }
    base["spec"].update(spec)
    return base


def test_definition_checks_name_scope_and_storage_version() -> None:
    assert definition_causes(crd()) == []
    wrong = crd()
    wrong["metadata"]["name"] = "gadgets.example.dev"
    assert [c[0] for c in definition_causes(wrong)] == ["metadata.name"]
    assert [c[0] for c in definition_causes(crd(scope="Global"))] == ["spec.scope"]
    two = crd()
    two["spec"]["versions"][0]["storage"] = True
    assert [c[0] for c in definition_causes(two)] == ["spec.versions"]
    assert definition_causes(crd(group="nodots"))[0][0] == "spec.group"


def test_served_versions_become_types() -> None:
    types = types_of(crd())
    assert [(t.group, t.version, t.plural, t.kind) for t in types] == [
        ("example.dev", "v1beta1", "widgets", "Widget"),
        ("example.dev", "v1", "widgets", "Widget"),
    ]
    v1 = types[1]
    assert v1.namespaced and v1.short_names == ("wd",) and v1.singular == "widget"
    assert v1.causes({"spec": {"size": 2}}) == []
    assert v1.causes({"spec": {"size": "2"}}) == [
        ("spec.size", "Invalid value: '2' is not of type 'integer'")
    ]
    assert [c[0] for c in v1.causes({"spec": {}})] == ["spec"]
    assert types[0].causes({"spec": "anything"}) == []  # no schema: nothing to check


def test_printer_columns_follow_the_json_paths() -> None:
    v1 = types_of(crd())[1]
    obj = {
        "metadata": {"name": "w", "creationTimestamp": "2020-01-01T00:00:00Z"},
        "spec": {"size": 3, "tags": ["a", "b"]},
    }
    out = table(v1, [obj], "5", {})
    assert [c["name"] for c in out["columnDefinitions"]] == ["Name", "Size", "Tags", "First"]
    assert out["rows"][0]["cells"] == ["w", 3, '["a","b"]', "a"]
    # Without printer columns: name and age, as the API server does.
    bare = types_of(crd())[0]
    assert [c["name"] for c in table(bare, [obj], "5", {})["columnDefinitions"]] == [
        "Name",
        "Age",
    ]


async def test_the_cluster_follows_crd_writes() -> None:  # its controllers need a loop
    cluster = Cluster()
    cluster.bootstrap()
    cluster.create(CRDS, crd())
    stored = cluster.store.get(CRDS, None, "widgets.example.dev")
    assert {c["type"] for c in stored["status"]["conditions"]} == {
        "NamesAccepted",
        "Established",
    }
    v1 = cluster.crds.lookup("example.dev", "v1", "widgets")
    beta = cluster.crds.lookup("example.dev", "v1beta1", "widgets")
    assert v1 is not None and beta is not None
    assert cluster.crds.lookup("example.dev", "v0", "widgets") is None
    widget = {"metadata": {"name": "w", "namespace": "default"}, "spec": {"size": 1}}
    cluster.create(v1, widget)
    # One table for every version.
    assert beta is not None and [o["metadata"]["name"] for o in cluster.store.iter(beta)] == ["w"]
    with pytest.raises(errors.ApiError) as info:
        cluster.create(v1, {**copy.deepcopy(widget), "spec": {"size": "big"}})
    assert info.value.code == 422
    group = cluster.crds.api_group("example.dev")
    assert group is not None and group["preferredVersion"]["version"] == "v1"
    cluster.delete(CRDS, None, "widgets.example.dev")
    assert list(cluster.store.iter(v1)) == []
    assert cluster.crds.types() == []
    await cluster.shutdown()
