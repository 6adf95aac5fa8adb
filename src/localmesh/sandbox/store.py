"""The in-memory object store: one global resourceVersion counter, history, watches.

Stored objects are never mutated in place: every write stores a new dict, so a watcher's
queued event and a history entry always show the object as it was at that version.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import datetime
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from localmesh.sandbox import errors
from localmesh.sandbox.resources import NAMESPACES, TYPES, ResourceType
from localmesh.sandbox.selectors import Selector

Obj = dict[str, Any]
BUILTIN_GROUPS = frozenset(t.group for t in TYPES)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(obj: Obj) -> dict[str, Any]:
    m: dict[str, Any] = obj.setdefault("metadata", {})
    return m


def table_key(rtype: ResourceType) -> str:
    """Where a type's objects live: its plural, qualified by the group outside the
    built-in kinds (a CRD may reuse a plural), shared by all versions."""
    return rtype.plural if rtype.group in BUILTIN_GROUPS else f"{rtype.plural}.{rtype.group}"


@dataclass(frozen=True)
class StoredEvent:
    rv: int
    rtype: ResourceType
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None


@dataclass(eq=False)
class Watcher:
    """One open watch: events already filtered and translated for its selector."""

    rtype: ResourceType
    namespace: str | None
    selector: Selector
    queue: asyncio.Queue[tuple[str, Obj]] = field(default_factory=asyncio.Queue)

    def translate(self, ev: StoredEvent) -> tuple[str, Obj] | None:
        """The event this watch sees: objects entering/leaving its selector are ADDED/DELETED."""
        if ev.rtype is not self.rtype and table_key(ev.rtype) != table_key(self.rtype):
            return None  # (the versions of one custom resource share a table)
        if self.namespace is not None and ev.obj["metadata"].get("namespace") != self.namespace:
            return None
        now = self.selector.matches(ev.obj)
        if ev.type == "ADDED":
            return ("ADDED", ev.obj) if now else None
        if ev.type == "DELETED":
            before = self.selector.matches(ev.old) if ev.old is not None else now
            return ("DELETED", ev.obj) if (now or before) else None
        before = self.selector.matches(ev.old)
        if now and before:
            return ("MODIFIED", ev.obj)
        if now:
            return ("ADDED", ev.obj)
        if before:
            return ("DELETED", ev.obj)
        return None

    def offer(self, ev: StoredEvent) -> None:
        out = self.translate(ev)
        if out is not None:
            self.queue.put_nowait(out)


class Store:
    def __init__(self, history_size: int = 20000) -> None:
        self.rv = 1
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self._history: deque[StoredEvent] = deque()
        self._history_size = history_size
        self._compacted_rv = 1
        self._watchers: set[Watcher] = set()
        self._listeners: list[Callable[[StoredEvent], None]] = []
        # (plural, namespace, label key, label value) -> names: selector lookups stay cheap
        # with thousands of pods.
        self._label_index: dict[tuple[str, str, str, str], set[str]] = {}

    # ---- reading -------------------------------------------------------------------------
    def _table(self, rtype: ResourceType) -> dict[tuple[str, str], Obj]:
        return self._objects.setdefault(table_key(rtype), {})

    def peek(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        """The stored object itself (read-only: never mutate it) or None."""
        return self._table(rtype).get((namespace or "", name))

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.peek(rtype, namespace, name)
        if obj is None:
            raise errors.not_found(rtype.plural, name, rtype.group)
        return copy.deepcopy(obj)

    def iter(
        self, rtype: ResourceType, namespace: str | None = None, selector: Selector | None = None
    ) -> Iterator[Obj]:
        """Stored objects (read-only), optionally in one namespace and matching a selector."""
        for (ns, _), obj in self._table(rtype).items():
            if namespace is not None and ns != namespace:
                continue
            if selector is not None and not selector.matches(obj):
                continue
            yield obj

    def select(
        self, rtype: ResourceType, namespace: str, match_labels: dict[str, str]
    ) -> builtins.list[Obj]:
        """Stored objects (read-only) in `namespace` whose labels include `match_labels`."""
        if not match_labels:
            return builtins.list(self.iter(rtype, namespace))
        sets = [
            self._label_index.get((table_key(rtype), namespace, k, v), set())
            for k, v in match_labels.items()
        ]
        names = set.intersection(*sets) if len(sets) > 1 else sets[0]
        table = self._table(rtype)
        return [table[(namespace, n)] for n in sorted(names) if (namespace, n) in table]

    def _index(self, plural: str, obj: Obj | None, add: bool) -> None:
        if obj is None:
            return
        md = obj["metadata"]
        ns, name = md.get("namespace", ""), md["name"]
        for k, v in (md.get("labels") or {}).items():
            key = (plural, ns, k, v)
            if add:
                self._label_index.setdefault(key, set()).add(name)
            else:
                names = self._label_index.get(key)
                if names is not None:
                    names.discard(name)
                    if not names:
                        del self._label_index[key]

    def list(
        self, rtype: ResourceType, namespace: str | None = None, selector: Selector | None = None
    ) -> tuple[list[Obj], int]:
        items = [copy.deepcopy(o) for o in self.iter(rtype, namespace, selector)]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items, self.rv

    # ---- writing -------------------------------------------------------------------------
    def _commit(self, rtype: ResourceType, type_: str, obj: Obj, old: Obj | None) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        self._index(table_key(rtype), old, add=False)
        if type_ == "DELETED":
            self._table(rtype).pop(key, None)
        else:
            self._table(rtype)[key] = obj
            self._index(table_key(rtype), obj, add=True)
        ev = StoredEvent(self.rv, rtype, type_, obj, old)
        self._history.append(ev)
        while len(self._history) > self._history_size:
            self._compacted_rv = self._history.popleft().rv
        for w in list(self._watchers):
            w.offer(ev)
        for listener in list(self._listeners):
            listener(ev)
        return copy.deepcopy(obj)

    def create(self, rtype: ResourceType, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        m = meta(obj)
        name = m.get("name", "")
        namespace = m.get("namespace") if rtype.namespaced else None
        if not rtype.namespaced:
            m.pop("namespace", None)
        elif namespace and self.peek(NAMESPACES, None, namespace) is None:
            raise errors.not_found("namespaces", namespace)
        if self.peek(rtype, namespace, name) is not None:
            raise errors.already_exists(rtype.plural, name, rtype.group)
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        m["uid"] = str(uuid.uuid4())
        m["creationTimestamp"] = now_rfc3339()
        m.pop("deletionTimestamp", None)
        if rtype.has_status and rtype.plural in ("deployments", "replicasets"):
            m["generation"] = 1
        return self._commit(rtype, "ADDED", obj, None)

    def update(self, rtype: ResourceType, obj: Obj, *, check_version: bool = True) -> Obj:
        """Replace an object; 409 Conflict when it names a resourceVersion that is stale."""
        obj = copy.deepcopy(obj)
        m = meta(obj)
        namespace = m.get("namespace") if rtype.namespaced else None
        name = m.get("name", "")
        old = self.peek(rtype, namespace, name)
        if old is None:
            raise errors.not_found(rtype.plural, name, rtype.group)
        want = m.get("resourceVersion")
        if check_version and want and want != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rtype.plural, name, rtype.group)
        # Server-owned metadata survives whatever the client sent.
        for key in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
            if key in old["metadata"]:
                m[key] = old["metadata"][key]
            else:
                m.pop(key, None)
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        if "generation" in old["metadata"] and obj.get("spec") != old.get("spec"):
            m["generation"] = old["metadata"]["generation"] + 1
        probe = {**obj, "metadata": {**m, "resourceVersion": old["metadata"]["resourceVersion"]}}
        if probe == old:
            return copy.deepcopy(old)  # nothing changed: no new version, no event
        return self._commit(rtype, "MODIFIED", obj, old)

    def mark_deleting(
        self, rtype: ResourceType, namespace: str | None, name: str, grace: int
    ) -> Obj:
        """Start a graceful deletion: set deletionTimestamp (the object stays until removed)."""
        old = self.peek(rtype, namespace, name)
        if old is None:
            raise errors.not_found(rtype.plural, name, rtype.group)
        if old["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(old)
        obj = copy.deepcopy(old)
        obj["metadata"]["deletionTimestamp"] = now_rfc3339()
        obj["metadata"]["deletionGracePeriodSeconds"] = grace
        return self._commit(rtype, "MODIFIED", obj, old)

    def delete(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        old = self.peek(rtype, namespace, name)
        if old is None:
            raise errors.not_found(rtype.plural, name, rtype.group)
        obj = copy.deepcopy(old)
        return self._commit(rtype, "DELETED", obj, old)

    # ---- watching ------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[StoredEvent], None]) -> None:
        """Call `listener` synchronously after every write (controllers use this)."""
        self._listeners.append(listener)

    def watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        selector: Selector,
        resource_version: str | None,
    ) -> tuple[builtins.list[tuple[str, Obj]], Watcher]:
        """Open a watch: the events to send first, and the watcher for live events.

        No resourceVersion (or "0"): ADDED for every matching object. A version older than
        the retained history: 410 Expired, so the client relists.
        """
        w = Watcher(rtype, namespace, selector)
        initial: builtins.list[tuple[str, Obj]] = []
        if not resource_version or resource_version == "0":
            objs = sorted(
                self.iter(rtype, namespace, selector),
                key=lambda o: int(o["metadata"]["resourceVersion"]),
            )
            initial = [("ADDED", o) for o in objs]
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise errors.bad_request(
                    f"invalid resource version: {resource_version!r}"
                ) from None
            if since < self._compacted_rv:
                raise errors.expired(f"too old resource version: {since} ({self._compacted_rv})")
            for ev in self._history:
                if ev.rv > since:
                    out = w.translate(ev)
                    if out is not None:
                        initial.append(out)
        self._watchers.add(w)
        return initial, w

    def unwatch(self, w: Watcher) -> None:
        self._watchers.discard(w)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    def compact(self) -> int:
        """Forget all history: any watch from an older resourceVersion now gets 410 Expired."""
        self._history.clear()
        self._compacted_rv = self.rv
        return self.rv
