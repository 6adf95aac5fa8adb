"""Store semantics: resourceVersions, conflicts, watch replay, selector transitions, 410."""

from __future__ import annotations

import pytest

from localmesh.sandbox.errors import ApiError
from localmesh.sandbox.resources import CONFIGMAPS, NAMESPACES, PODS
from localmesh.sandbox.selectors import FieldSelector, LabelSelector, Selector
from localmesh.sandbox.store import Store


def cm(name: str, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels}, "data": {}}


@pytest.fixture
def store() -> Store:
    s = Store(history_size=100)
    s.create(NAMESPACES, {"metadata": {"name": "ns"}})
    return s


async def test_versions_and_conflicts(store: Store) -> None:
    a = store.create(CONFIGMAPS, cm("a"))
    assert int(a["metadata"]["resourceVersion"]) == store.rv
    with pytest.raises(ApiError) as info:
        store.create(CONFIGMAPS, cm("a"))
    assert (info.value.code, info.value.reason) == (409, "AlreadyExists")
    a["data"] = {"k": "v"}
    b = store.update(CONFIGMAPS, a)
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    with pytest.raises(ApiError) as info:
        store.update(CONFIGMAPS, a)  # a carries the old version
    assert (info.value.code, info.value.reason) == (409, "Conflict")
    rv = store.rv
    assert store.update(CONFIGMAPS, b) == b and store.rv == rv  # no-op: no new version


async def test_watch_replays_and_translates_selector_moves(store: Store) -> None:
    start = str(store.rv)
    obj = store.create(CONFIGMAPS, cm("a", app="x"))
    obj["metadata"]["labels"] = {"app": "y"}
    obj = store.update(CONFIGMAPS, obj)
    obj["metadata"]["labels"] = {"app": "x"}
    store.update(CONFIGMAPS, obj)
    store.delete(CONFIGMAPS, "ns", "a")
    sel = Selector(LabelSelector.parse("app=x"))
    initial, w = store.watch(CONFIGMAPS, "ns", sel, start)
    assert [t for t, _ in initial] == ["ADDED", "DELETED", "ADDED", "DELETED"]
    store.create(CONFIGMAPS, cm("b", app="x"))
    store.create(CONFIGMAPS, cm("c", app="z"))
    assert w.queue.get_nowait()[0] == "ADDED" and w.queue.empty()


async def test_watch_without_version_lists_then_expired_version_is_410(store: Store) -> None:
    store.create(CONFIGMAPS, cm("a"))
    old = str(store.rv)
    store.create(CONFIGMAPS, cm("b"))
    initial, _ = store.watch(CONFIGMAPS, None, Selector(), None)
    assert [(t, o["metadata"]["name"]) for t, o in initial] == [("ADDED", "a"), ("ADDED", "b")]
    store.compact()
    with pytest.raises(ApiError) as info:
        store.watch(CONFIGMAPS, None, Selector(), old)
    assert (info.value.code, info.value.reason) == (410, "Expired")


async def test_history_limit_expires_old_versions() -> None:
    s = Store(history_size=5)
    s.create(NAMESPACES, {"metadata": {"name": "ns"}})
    first = str(s.rv)
    for i in range(10):
        s.create(CONFIGMAPS, cm(f"c{i}"))
    with pytest.raises(ApiError):
        s.watch(CONFIGMAPS, None, Selector(), first)
    initial, _ = s.watch(CONFIGMAPS, None, Selector(), str(s.rv - 3))
    assert len(initial) == 3


async def test_label_index_select(store: Store) -> None:
    store.create(CONFIGMAPS, cm("a", app="x", tier="1"))
    store.create(CONFIGMAPS, cm("b", app="x", tier="2"))
    assert [o["metadata"]["name"] for o in store.select(CONFIGMAPS, "ns", {"app": "x"})] == [
        "a",
        "b",
    ]
    assert [o["metadata"]["name"] for o in store.select(CONFIGMAPS, "ns", {"tier": "2"})] == ["b"]
    store.delete(CONFIGMAPS, "ns", "b")
    assert store.select(CONFIGMAPS, "ns", {"tier": "2"}) == []


async def test_field_selector_watch_sees_phase_transitions() -> None:
    s = Store()
    s.create(NAMESPACES, {"metadata": {"name": "ns"}})
    pod = s.create(
        PODS, {"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Pending"}}
    )
    _, w = s.watch(PODS, "ns", Selector(fields=FieldSelector.parse("status.phase=Running")), None)
    pod["status"]["phase"] = "Running"
    pod = s.update(PODS, pod)
    pod["status"]["phase"] = "Succeeded"
    s.update(PODS, pod)
    assert [w.queue.get_nowait()[0] for _ in range(2)] == ["ADDED", "DELETED"]
    assert w.queue.empty()
