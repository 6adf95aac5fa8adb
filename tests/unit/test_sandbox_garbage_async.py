"""The sandbox garbage collector's asynchronous mode, on the cluster object itself (its
timers run on the test's loop; no API server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from localmesh.errors import ConfigError
from localmesh.sandbox.cluster import Cluster
from localmesh.sandbox.resources import CONFIGMAPS, LEASES, NAMESPACES
from localmesh.sandbox.sandbox import GARBAGE_DELAY_ENV, garbage_delay_of

NS = "mesh"


def _cluster(delay: float) -> Cluster:
    cluster = Cluster()
    cluster.bootstrap()
    cluster.create(NAMESPACES, {"metadata": {"name": NS}})
    cluster.faults.garbage_delay = delay
    return cluster


def _ref(owner: dict[str, Any]) -> list[dict[str, Any]]:
    meta = owner["metadata"]
    return [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
    ]


def _owned(cluster: Cluster, name: str, owner: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": NS, "ownerReferences": _ref(owner)}
    return cluster.create(CONFIGMAPS, {"metadata": meta})


def _lease(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.create(LEASES, {"metadata": {"name": name, "namespace": NS}, "spec": {}})


def _names(cluster: Cluster) -> set[str]:
    return {o["metadata"]["name"] for o in cluster.store.iter(CONFIGMAPS, NS)} - {
        "kube-root-ca.crt"
    }


async def _until(cluster: Cluster, done: Callable[[], bool]) -> None:
    """Until `done()`, looked at after each change in the store."""
    changed = asyncio.Event()
    cluster.store.subscribe(lambda _: changed.set())
    async with asyncio.timeout(30):
        while True:
            changed.clear()
            if done():
                return
            await changed.wait()


async def test_without_a_delay_the_delete_collects_at_once() -> None:
    cluster = _cluster(0.0)
    owner = _lease(cluster, "owner")
    _owned(cluster, "dep", owner)
    cluster.delete(LEASES, NS, "owner")
    assert _names(cluster) == set()


async def test_with_a_delay_dependents_outlive_their_owner_until_it_passes() -> None:
    cluster = _cluster(0.05)
    owner = _lease(cluster, "owner")
    _owned(cluster, "dep", owner)
    cluster.delete(LEASES, NS, "owner")
    assert cluster.store.peek(LEASES, NS, "owner") is None
    assert _names(cluster) == {"dep"}
    await _until(cluster, lambda: not _names(cluster))


async def test_a_recreated_owner_does_not_save_what_the_old_one_owned() -> None:
    cluster = _cluster(3600.0)
    owner = _lease(cluster, "owner")
    _owned(cluster, "old", owner)
    cluster.delete(LEASES, NS, "owner")
    again = _lease(cluster, "owner")
    _owned(cluster, "new", again)
    assert _names(cluster) == {"old", "new"}
    assert cluster.faults.collect_garbage_now() >= 1
    assert _names(cluster) == {"new"}
    assert cluster.faults.collect_garbage_now() == 0  # nothing left pending


async def test_foreground_marks_the_owner_now_and_deletes_it_after_its_dependents() -> None:
    cluster = _cluster(3600.0)
    owner = _lease(cluster, "owner")
    _owned(cluster, "dep", owner)
    marked = cluster.delete(LEASES, NS, "owner", propagation="Foreground")
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert _names(cluster) == {"dep"}
    cluster.faults.collect_garbage_now()
    assert _names(cluster) == set()
    await _until(cluster, lambda: cluster.store.peek(LEASES, NS, "owner") is None)


def test_the_delay_comes_from_the_option_else_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(GARBAGE_DELAY_ENV, raising=False)
    assert garbage_delay_of(None) == 0.0
    monkeypatch.setenv(GARBAGE_DELAY_ENV, "2.5")
    assert garbage_delay_of(None) == 2.5
    assert garbage_delay_of(0.0) == 0.0  # the option wins
    monkeypatch.setenv(GARBAGE_DELAY_ENV, "soon")
    with pytest.raises(ConfigError, match="LOCALMESH_SANDBOX_GARBAGE_DELAY='soon'"):
        garbage_delay_of(None)
    with pytest.raises(ConfigError, match="0 or more"):
        garbage_delay_of(-1.0)
