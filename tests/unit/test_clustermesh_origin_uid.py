"""The router's pods carry their origin Service's uid; the meshed Service selects only
those; an object owned by another origin is told apart from one owned by this one."""

from __future__ import annotations

from typing import Any

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.membership import _stale, routed

PORTS = [m.RouterPort(8080, None)]


def test_the_router_pods_carry_the_origin_uid_the_deployment_selector_does_not() -> None:
    deployment = m.router_deployment("billing", "billing-api", "img", PORTS, origin_uid="u-1")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels == {**m.router_selector("billing-api"), m.ORIGIN_UID_LABEL: "u-1"}
    assert deployment["spec"]["selector"]["matchLabels"] == m.router_selector("billing-api")
    assert deployment["metadata"]["labels"] == m.router_selector("billing-api")
    assert m.router_pod_labels(deployment, "billing-api") == labels


def test_a_deployment_without_the_label_is_selected_as_before() -> None:
    deployment = m.router_deployment("billing", "billing-api", "img", PORTS)
    assert m.router_pod_labels(deployment, "billing-api") == m.router_selector("billing-api")


def test_routed_selects_the_router_of_one_origin() -> None:
    service: dict[str, Any] = {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}}}
    assert routed(service, "u-2")["spec"]["selector"] == m.routed_selector("web", "u-2")
    assert routed(service)["spec"]["selector"] == m.router_selector("web")
    assert service["spec"]["selector"] == {"app": "web"}  # a copy is changed


def _owned(uid: str | None) -> dict[str, object]:
    obj: dict[str, object] = {"kind": "Role", "metadata": {"name": "r"}}
    if uid is not None:
        owner = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "o", "uid": uid}}
        m.owned_by(obj, owner)
    return obj


def test_stale_means_owned_by_another_owner_than_the_one_wanted() -> None:
    assert _stale(_owned("old"), _owned("new"))
    assert not _stale(_owned("new"), _owned("new"))
    assert _stale(_owned(None), _owned("new"))  # orphaned: not this origin's either
    assert not _stale(_owned("old"), _owned(None))  # the origin Service itself has no owner
    assert m.owner_uids(_owned("x")) == {"x"} and m.owner_uids(_owned(None)) == set()
