"""Label and field selector parsing and matching, as the Kubernetes API defines them."""

from __future__ import annotations

import pytest

from localmesh.sandbox.errors import ApiError
from localmesh.sandbox.selectors import FieldSelector, LabelSelector

LABELS = {"app": "web", "tier": "front", "env": "prod"}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=api", False),
        ("app!=api", True),
        ("missing!=x", True),
        ("app in (web, api)", True),
        ("app notin (web)", False),
        ("missing notin (web)", True),
        ("tier", True),
        ("!tier", False),
        ("!missing", True),
        ("app=web,tier in (front,back),!missing", True),
        ("app=web,env=dev", False),
    ],
)
def test_label_selector(text: str, matches: bool) -> None:
    assert LabelSelector.parse(text).matches(LABELS) is matches


def test_label_selector_rejects_garbage() -> None:
    with pytest.raises(ApiError) as info:
        LabelSelector.parse("app in web")
    assert info.value.code == 400


def test_field_selector_paths() -> None:
    pod = {"metadata": {"name": "p1", "namespace": "ns"}, "status": {"phase": "Running"}}
    assert FieldSelector.parse("metadata.name=p1").matches(pod)
    assert FieldSelector.parse("metadata.name==p1,status.phase=Running").matches(pod)
    assert not FieldSelector.parse("status.phase=Pending").matches(pod)
    assert FieldSelector.parse("status.phase!=Pending").matches(pod)
    assert FieldSelector.parse("spec.nodeName=").matches(pod)  # absent compares as ""
