"""JSON merge, strategic merge and JSON patch on Kubernetes-shaped objects."""

from __future__ import annotations

from typing import Any

import pytest

from localmesh.sandbox.errors import ApiError
from localmesh.sandbox.patch import apply_patch, json_patch, merge_patch, strategic_merge_patch

DEPLOY: dict[str, Any] = {
    "metadata": {"name": "d", "labels": {"a": "1", "b": "2"}},
    "spec": {
        "template": {
            "spec": {
                "containers": [
                    {"name": "web", "image": "web:1", "ports": [{"containerPort": 80}]},
                    {"name": "side", "image": "side:1"},
                ]
            }
        }
    },
}


def test_merge_patch_replaces_lists_and_deletes_nulls() -> None:
    out = merge_patch(DEPLOY, {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert out["metadata"]["labels"] == {"b": "2", "c": "3"}
    out = merge_patch(DEPLOY, {"spec": {"template": {"spec": {"containers": [{"name": "x"}]}}}})
    assert out["spec"]["template"]["spec"]["containers"] == [{"name": "x"}]
    assert DEPLOY["metadata"]["labels"] == {"a": "1", "b": "2"}  # input untouched


def test_strategic_merge_merges_containers_by_name() -> None:
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:2"}]}}}}
    containers = strategic_merge_patch(DEPLOY, patch)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["web", "side"]
    assert containers[0] == {"name": "web", "image": "web:2", "ports": [{"containerPort": 80}]}


def test_strategic_merge_directives() -> None:
    delete = {
        "spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}
    }
    out = strategic_merge_patch(DEPLOY, delete)
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["web"]
    replace = {"metadata": {"labels": {"$patch": "replace", "z": "9"}}}
    assert strategic_merge_patch(DEPLOY, replace)["metadata"]["labels"] == {"z": "9"}
    order = {"$setElementOrder/containers": [{"name": "web"}], "metadata": {"labels": {"b": None}}}
    assert strategic_merge_patch(DEPLOY, order)["metadata"]["labels"] == {"a": "1"}


def test_json_patch() -> None:
    ops = [
        {"op": "add", "path": "/metadata/labels/c", "value": "3"},
        {"op": "remove", "path": "/metadata/labels/a"},
        {"op": "replace", "path": "/spec/template/spec/containers/1/image", "value": "side:2"},
        {"op": "test", "path": "/metadata/name", "value": "d"},
    ]
    out = json_patch(DEPLOY, ops)
    assert out["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert out["spec"]["template"]["spec"]["containers"][1]["image"] == "side:2"
    with pytest.raises(ApiError) as info:
        json_patch(DEPLOY, [{"op": "remove", "path": "/metadata/nope"}])
    assert info.value.code == 422


def test_unknown_patch_type_is_415() -> None:
    with pytest.raises(ApiError) as info:
        apply_patch("application/apply-patch+yaml", DEPLOY, {})
    assert info.value.code == 415
