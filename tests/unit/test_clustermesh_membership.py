"""The Service annotations that record a mesh, and Lease liveness (pure rules)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.membership import (
    PRUNE_GRACE_SECONDS,
    lease_dead,
    lease_live,
    mesh_state,
    restored,
    routed,
    with_session,
    without_sessions,
)

SERVICE: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "ns", "annotations": {"team": "a"}},
    "spec": {"selector": {"b": "2", "a": "1"}, "ports": [{"port": 80}]},
}


def test_first_session_records_the_selector_before_the_swap() -> None:
    one = with_session(SERVICE, "s1")
    notes = one["metadata"]["annotations"]
    assert json.loads(notes[m.ORIGINAL_SELECTOR_ANNOTATION]) == {"b": "2", "a": "1"}
    assert list(json.loads(notes[m.ORIGINAL_SELECTOR_ANNOTATION])) == ["b", "a"]  # order kept
    assert notes[m.MODE_ANNOTATION] == "auto"
    assert one["spec"]["selector"] == SERVICE["spec"]["selector"]  # not changed yet
    swapped = routed(one)
    two = with_session(swapped, "s2")
    assert mesh_state(two).sessions == ("s1", "s2")
    # The second session keeps the first record, not the router's selector.
    assert mesh_state(two).original_selector == {"b": "2", "a": "1"}
    assert with_session(two, "s2") == two
    assert SERVICE["metadata"]["annotations"] == {"team": "a"}  # input untouched


def test_last_session_out_restores_exactly() -> None:
    meshed = with_session(routed(with_session(SERVICE, "s1")), "s2")
    one_left = without_sessions(meshed, ["s1"])
    assert mesh_state(one_left).sessions == ("s2",)
    assert one_left["spec"]["selector"] == m.router_selector("web")
    assert without_sessions(one_left, ["s2"]) == SERVICE
    bare = copy.deepcopy(SERVICE)
    del bare["metadata"]["annotations"]
    assert restored(routed(with_session(bare, "s1"))) == bare  # no empty annotations left


def test_lease_liveness() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def lease(age: float, duration: int = 10) -> dict[str, Any]:
        return {
            "metadata": {},
            "spec": {
                "leaseDurationSeconds": duration,
                "renewTime": m.micro_time(now - timedelta(seconds=age)),
            },
        }

    assert lease_live(lease(9.5), now)
    assert not lease_live(lease(10.5), now)
    assert not lease_live(None, now)
    assert not lease_live({"metadata": {}, "spec": {}}, now)
    dying = lease(1)
    dying["metadata"]["deletionTimestamp"] = "x"
    assert not lease_live(dying, now)
    # Removing someone else's session waits out clock skew.
    assert not lease_live(lease(12), now) and not lease_dead(lease(12), now)
    assert lease_dead(lease(10 + PRUNE_GRACE_SECONDS + 0.5), now) and lease_dead(None, now)
