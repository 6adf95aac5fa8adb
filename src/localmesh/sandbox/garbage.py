"""The garbage collector: objects whose owners are all gone are deleted, as
kube-controller-manager's garbage collector does, for every resource type.

An owner is named by an entry of `metadata.ownerReferences` (apiVersion, kind, name, uid)
and exists only while an object of that kind and name with that uid does (in the
dependent's namespace, or cluster-wide for a cluster-scoped kind). So:

- deleting an owner deletes its dependents (background propagation), and theirs in turn;
  pods terminate gracefully, as the real collector deletes them with their default grace;
- a dependent that names an owner that no longer exists (created or updated too late)
  is deleted as soon as it is seen; one whose owner kind is unknown is left alone;
- a dependent with at least one owner left stays; references to gone owners are removed
  from it (the real collector patches them away);
- `propagationPolicy: Orphan` removes the reference from the dependents instead;
  `Foreground` keeps the owner (deletionTimestamp, finalizer `foregroundDeletion`) until
  its dependents are gone, and so in turn for theirs.

An index from owner uid to dependents keeps each deletion cheap with thousands of pods.

By default it collects at once (the delete call's own cascade), which keeps tests simple.
With `faults.garbage_delay` > 0 it runs as a real cluster's does, asynchronously: each
deleted owner, and each new reference, is looked at that many seconds later, reading the
objects as they are then. So a Background delete removes the owner at once and its
dependents later (theirs later again); a Foreground delete marks the owner at once and
deletes its dependents later; a dependent whose owner was recreated under the same name
(another uid) is collected as one whose owner is gone, unless its references were
changed to a live owner meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from localmesh.sandbox import errors
from localmesh.sandbox.resources import TYPES, ResourceType
from localmesh.sandbox.store import Obj, StoredEvent, table_key

if TYPE_CHECKING:
    from localmesh.sandbox.cluster import Cluster

log = structlog.get_logger(__name__)

PROPAGATION_POLICIES = ("Background", "Foreground", "Orphan")
Key = tuple[str, str, str]  # (store table: store.table_key, namespace, name)
_BY_API_KIND: dict[tuple[str, str], ResourceType] = {(t.api_version, t.kind): t for t in TYPES}


def _refs(obj: Obj | None) -> list[dict[str, Any]]:
    if obj is None:
        return []
    refs = obj["metadata"].get("ownerReferences") or []
    return [r for r in refs if isinstance(r, dict)]


def _key(rtype: ResourceType, obj: Obj) -> Key:
    md = obj["metadata"]
    return (table_key(rtype), md.get("namespace", "") or "", md["name"])


class GarbageCollector:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._dependents: dict[str, set[Key]] = {}  # owner uid -> dependents
        self._gone: set[str] = set()  # uids of deleted objects, to collect after
        self._check: set[Key] = set()  # dependents whose owners may be missing
        self._scheduled = False
        self._waiting: dict[str, Key] = {}  # foreground owners by uid: gone once alone
        # Actions waiting for `delay` (asynchronous mode): timer and action, by token.
        self._deferred: dict[object, tuple[asyncio.TimerHandle, Callable[[], None]]] = {}
        # by store table, as the store tells types apart (a CRD may reuse a plural)
        self._types: dict[str, ResourceType] = {table_key(t): t for t in TYPES}

    def owner_type(self, ref: dict[str, Any]) -> ResourceType | None:
        """The type an ownerReference names (None when the sandbox does not serve it)."""
        wanted = (str(ref.get("apiVersion", "")), str(ref.get("kind", "")))
        found = _BY_API_KIND.get(wanted)
        if found is None:
            found = next(
                (t for t in self.cluster.crds.types() if (t.api_version, t.kind) == wanted), None
            )
        return found

    # -- event intake ----------------------------------------------------------------------
    def on_event(self, ev: StoredEvent) -> None:
        key = _key(ev.rtype, ev.obj)
        self._types.setdefault(key[0], ev.rtype)  # custom resources join
        old_uids = {str(r.get("uid")) for r in _refs(ev.old)}
        new_uids = set() if ev.type == "DELETED" else {str(r.get("uid")) for r in _refs(ev.obj)}
        for uid in old_uids - new_uids:
            dependents = self._dependents.get(uid)
            if dependents is not None:
                dependents.discard(key)
                if not dependents:
                    del self._dependents[uid]
        for uid in new_uids - old_uids:
            self._dependents.setdefault(uid, set()).add(key)
        if ev.type == "DELETED":
            uid = ev.obj["metadata"].get("uid")
            if uid and uid in self._dependents:
                self._later(gone=uid)
                return
            if not any(u in self._waiting for u in old_uids):
                return
        elif new_uids - old_uids:
            self._later(check=key)  # a new reference: its owner may already be gone
            return
        else:
            return
        self._schedule()  # a foreground owner may have lost its last dependent

    @property
    def delay(self) -> float:
        """Seconds from a deletion (or a new reference) to the collector looking at it."""
        return self.cluster.faults.garbage_delay

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    def _schedule(self) -> None:
        if not self._scheduled:
            loop = self._loop()
            if loop is not None:  # no loop: Cluster.delete's flush runs it
                loop.call_soon(self.flush)
                self._scheduled = True

    def _defer(self, action: Callable[[], None]) -> bool:
        """Run `action` `delay` seconds from now (False: no delay, or no loop to wait on)."""
        loop = self._loop()
        if self.delay <= 0 or loop is None:
            return False
        token = object()

        def run() -> None:
            if self._deferred.pop(token, None) is not None:
                action()

        self._deferred[token] = (loop.call_later(self.delay, run), run)
        return True

    def _later(self, *, gone: str | None = None, check: Key | None = None) -> None:
        """Queue an owner gone or a reference to check: now, or `delay` seconds from now."""
        if self._defer(lambda: self._due(gone, check)):
            return
        self._due(gone, check, flush=False)
        self._schedule()

    def _due(self, gone: str | None, check: Key | None, flush: bool = True) -> None:
        if gone is not None:
            self._gone.add(gone)
        if check is not None:
            self._check.add(check)
        if flush:
            self.flush()

    def catch_up(self) -> int:
        """Do now what waits for the delay, and what that leads to (a test ends the window
        in which owned objects outlive their owner). Returns how many actions ran."""
        ran = 0
        while self._deferred:
            handle, run = self._deferred[next(iter(self._deferred))]
            handle.cancel()
            run()
            ran += 1
        return ran

    def flush(self) -> None:
        self._scheduled = False
        while True:
            gone, self._gone = self._gone, set()
            check, self._check = self._check, set()
            for uid in gone:
                check |= self._dependents.get(uid, set())
            for key in sorted(check):
                self._attempt(key)
            done = [uid for uid in self._waiting if not self._dependents.get(uid)]
            for uid in done:  # foreground owners whose dependents are all gone
                table, namespace, name = self._waiting.pop(uid)
                with contextlib.suppress(errors.ApiError):
                    self.cluster.store.delete(self._types[table], namespace or None, name)
            if not (self._gone or self._check or done):
                return

    # -- deciding --------------------------------------------------------------------------
    def _owner_exists(self, namespace: str, ref: dict[str, Any]) -> bool:
        rtype = self.owner_type(ref)
        if rtype is None:
            return True  # a kind this cluster does not know: never collect on a guess
        owner = self.cluster.store.peek(
            rtype, namespace if rtype.namespaced else None, str(ref.get("name", ""))
        )
        return owner is not None and owner["metadata"].get("uid") == ref.get("uid")

    def _attempt(self, key: Key) -> None:
        table, namespace, name = key
        rtype = self._types[table]
        obj = self.cluster.store.peek(rtype, namespace or None, name)
        refs = _refs(obj)
        if obj is None or not refs:
            return
        solid = [r for r in refs if self._owner_exists(namespace, r)]
        if solid:
            if len(solid) < len(refs):  # drop the references to owners that are gone
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = solid
                with contextlib.suppress(errors.ApiError):
                    self.cluster.store.update(rtype, new, check_version=False)
            return
        if obj["metadata"].get("deletionTimestamp"):
            return  # already on its way out
        log.debug("garbage collected", kind=rtype.kind, namespace=namespace, name=name)
        with contextlib.suppress(errors.ApiError):
            self.cluster.delete(rtype, namespace or None, name)

    def has_dependents(self, owner_uid: str) -> bool:
        return bool(self._dependents.get(owner_uid))

    def delete_in_foreground(self, rtype: ResourceType, owner: Obj) -> Obj:
        """Mark `owner` deleted (foregroundDeletion finalizer) and collect its dependents;
        it goes once the last of them has."""
        key = _key(rtype, owner)
        new = copy.deepcopy(owner)
        finalizers = new["metadata"].setdefault("finalizers", [])
        if "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        self.cluster.store.update(rtype, new, check_version=False)
        marked = self.cluster.store.mark_deleting(rtype, key[1] or None, key[2], 0)
        uid = owner["metadata"]["uid"]
        self._waiting[uid] = key
        if not self._defer(lambda: self._delete_dependents(uid)):
            self._delete_dependents(uid)
        return marked

    def _delete_dependents(self, owner_uid: str) -> None:
        """Delete the dependents of a foreground owner, in the foreground too (as the real
        collector does); the owner goes once the last of them has."""
        for dependent in sorted(self._dependents.get(owner_uid, set())):
            table, namespace, name = dependent
            with contextlib.suppress(errors.ApiError):
                self.cluster.delete(
                    self._types[table], namespace or None, name, propagation="Foreground"
                )
        self.flush()

    def orphan(self, owner_uid: str) -> None:
        """Remove references to `owner_uid` from its dependents (propagationPolicy Orphan)."""
        for table, namespace, name in sorted(self._dependents.get(owner_uid, set())):
            rtype = self._types[table]
            obj = self.cluster.store.peek(rtype, namespace or None, name)
            if obj is None:
                continue
            new = copy.deepcopy(obj)
            kept = [r for r in _refs(obj) if r.get("uid") != owner_uid]
            if kept:
                new["metadata"]["ownerReferences"] = kept
            else:
                new["metadata"].pop("ownerReferences", None)
            with contextlib.suppress(errors.ApiError):
                self.cluster.store.update(rtype, new, check_version=False)
