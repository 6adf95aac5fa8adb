"""The snapshot cache: what each connected Envoy holds, and what it should get next.

Transport-free (never imports grpc): the ADS server feeds each stream's requests in and
writes out whatever `Stream.responses()` returns. Snapshots are kept per node id (as
go-control-plane does); a node without a snapshot of its own gets the default one.

    cache = SnapshotCache()
    cache.set_snapshot(snapshot)                  # the default: every node without its own
    cache.set_snapshot(router, node_id="router")  # only streams whose Envoy says node "router"
    await cache.wait_for_ack(snapshot.version)    # every Envoy served the default holds it
    await cache.wait_for_ack(node_id="router")    # ... or every Envoy of one node
    cache.status() -> list[StreamStatus]          # per stream and type: ACKed version, NACKs
    await cache.wait_changed()                    # until status() may differ

The two ADS flavours are two stream classes over the same bookkeeping: `SotwStream`
(whole state per type, `version_info`) and `DeltaStream` (changes and removals only).

Per stream and type it tracks the subscription, the response in flight (one at a time:
the next waits for the ACK/NACK, unless Envoy asks for more names) and what Envoy ACKed.

Make before break, per stream:
- the route configuration of a snapshot is pushed only after Envoy ACKed every cluster it
  references (Envoy ACKs CDS once the clusters are warm, i.e. have their endpoints);
- a cluster that left the snapshot is still served, with its endpoints, while routes Envoy
  holds (or is being sent) still reference it; it goes once routes without it are ACKed.

On NACK Envoy keeps its last good config; the error is logged and kept for `status()`, and
the type is not pushed again until the snapshot changes (no resend loop).
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, overload

import structlog

from localmesh.errors import NackedError
from localmesh.xds import resources as rs
from localmesh.xds.snapshot import Resource, Snapshot, content_version

log = structlog.get_logger(__name__)

WILDCARD_TYPES = frozenset({rs.CLUSTER_TYPE, rs.LISTENER_TYPE})
DEFAULT_NODE = ""  # the snapshot key of every node without a snapshot of its own


@dataclass(frozen=True)
class SotwResponse:
    type_url: str
    version_info: str
    resources: tuple[Resource, ...]
    nonce: str


@dataclass(frozen=True)
class DeltaResponse:
    type_url: str
    system_version_info: str
    resources: tuple[Resource, ...]
    removed: tuple[str, ...]
    nonce: str


Response = SotwResponse | DeltaResponse


@dataclass(frozen=True)
class TypeStatus:
    """One resource type on one stream, for `localmesh status`."""

    type_url: str
    acked_version: str  # content version of what Envoy holds ("" before the first ACK)
    acked_resources: int
    in_sync: bool  # Envoy holds exactly the current snapshot's resources of this type
    pending_nonce: str | None  # a response Envoy has not answered yet
    nack_count: int
    last_error: str | None  # error_detail of the last NACK, None once a later push is ACKed


@dataclass(frozen=True)
class StreamStatus:
    stream_id: int
    node_id: str
    delta: bool
    connected_at: float  # time.time()
    in_sync: bool
    types: tuple[TypeStatus, ...]


def _state_version(state: Mapping[str, Resource]) -> str:
    return content_version("\n".join(f"{n}={r.version}" for n, r in sorted(state.items())).encode())


@dataclass
class _Pending:
    nonce: str
    state: dict[str, Resource]  # what Envoy holds once it ACKs
    snapshot: Snapshot


@dataclass
class _TypeState:
    type_url: str
    requested: bool = False
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    sent: dict[str, Resource] = field(default_factory=dict)  # last response, ACKed or not
    acked: dict[str, Resource] = field(default_factory=dict)
    acked_any: bool = False
    pending: _Pending | None = None
    grew: bool = False  # the subscription grew since the last response: answer now
    first: bool = False  # the first request of this type is unanswered
    fresh: set[str] = field(default_factory=set)  # names subscribed since the last response
    nacked_at: str | None = None  # snapshot version last NACKed: do not push it again
    nack_count: int = 0
    last_error: str | None = None
    last_nack_seq: int = -1

    def subscribed(self, name: str) -> bool:
        return self.wildcard or name in self.names


class Stream(abc.ABC):
    """One ADS stream (one Envoy connection). Owned by the cache; the flavour-specific parts
    (reading a request, shaping a response) live in `SotwStream` and `DeltaStream`."""

    delta: ClassVar[bool]

    def __init__(self, cache: SnapshotCache, stream_id: int) -> None:
        self._cache = cache
        self.id = stream_id
        self.node_id = ""
        self.connected_at = time.time()
        self._types = {t: _TypeState(t) for t in rs.TYPE_ORDER}
        self._nonces = itertools.count(1)
        self._wake = asyncio.Event()
        self._wake.set()
        self.closed = False
        # Snapshots whose routes Envoy holds (ACKed) and is being sent (in flight).
        self._routes_acked: Snapshot | None = None
        self._routes_sent: Snapshot | None = None

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot this stream's node should hold."""
        return self._cache.snapshot_for(self.node_id)

    # -- requests ---------------------------------------------------------------------

    def _set_node(self, node_id: str) -> None:
        if node_id and not self.node_id:
            self.node_id = node_id
            self._cache.changed()

    def _known(self, type_url: str) -> _TypeState | None:
        state = self._types.get(type_url)
        if state is None:
            log.warning("xds.unknown_type", stream=self.id, type_url=type_url)
        return state

    def _forget_if_unsubscribed(self, state: _TypeState) -> None:
        # With no names left Envoy has no watch for the type and answers no response of
        # it: an unanswered one must not block the stream (nor wait_for_ack).
        if not state.wildcard and not state.names and state.pending is not None:
            state.pending = None
            self._cache.changed()

    def _on_answer(self, state: _TypeState, nonce: str, error: str | None) -> None:
        pending = state.pending
        if not nonce or pending is None or nonce != pending.nonce:
            return  # first request, or a stale nonce: only the subscription counts
        state.pending = None
        cache = self._cache
        if error is None:
            state.acked = pending.state
            state.acked_any = True
            state.last_error = None
            if state.type_url == rs.ROUTE_TYPE:
                self._routes_acked = pending.snapshot
                self._routes_sent = None
            log.debug("xds.ack", stream=self.id, node=self.node_id, type_url=state.type_url)
        else:
            # Envoy keeps its last good config: so do we, and do not resend the same.
            state.nack_count += 1
            state.last_error = error
            state.nacked_at = pending.snapshot.version
            state.last_nack_seq = cache.seq_of(pending.snapshot.version, self.node_id)
            state.sent = dict(state.acked)
            if state.type_url == rs.ROUTE_TYPE:
                self._routes_sent = None
            log.warning(
                "xds.nack",
                stream=self.id,
                node=self.node_id,
                type_url=state.type_url,
                snapshot=pending.snapshot.version,
                error=error,
            )
        cache.changed()

    # -- responses --------------------------------------------------------------------

    async def wait(self) -> None:
        """Until there may be something to send (a request arrived or the snapshot moved)."""
        await self._wake.wait()
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def forget_rejections(self) -> int:
        """Let rejected types be offered again (see SnapshotCache.retry_rejected)."""
        rejected = [t for t in self._types.values() if t.nacked_at is not None]
        for state in rejected:
            state.nacked_at = None
        if rejected:
            self.wake()
        return len(rejected)

    def _routes_ready(self, snapshot: Snapshot) -> bool:
        """Envoy ACKed every cluster the snapshot's routes send traffic to."""
        return snapshot.route_clusters <= self._types[rs.CLUSTER_TYPE].acked.keys()

    def _desired(self, snapshot: Snapshot, type_url: str) -> dict[str, Resource]:
        """What this Envoy should hold of one type now (before subscription filtering)."""
        desired = dict(snapshot.resources(type_url))
        if type_url in (rs.CLUSTER_TYPE, rs.ENDPOINT_TYPE):
            for holder in (self._routes_acked, self._routes_sent):
                if holder is None:
                    continue
                for name in holder.route_clusters - desired.keys():
                    kept = holder.resources(type_url).get(name)
                    if kept is not None:
                        desired[name] = kept  # still routed to: remove after the routes
        return desired

    def responses(self) -> list[Response]:
        """The responses to send now, in ADS order; marks them in flight."""
        if self.closed:
            return []
        snapshot = self.snapshot
        out: list[Response] = []
        for type_url in rs.TYPE_ORDER:
            state = self._types[type_url]
            if not state.requested:
                continue
            if state.pending is not None and not state.grew:
                continue  # one response in flight at a time
            if state.nacked_at == snapshot.version and not state.grew:
                continue  # rejected: wait for a new snapshot
            if type_url == rs.ROUTE_TYPE and not self._routes_ready(snapshot):
                continue  # make before break: clusters first
            response = self._response(snapshot, state)
            if response is not None:
                out.append(response)
        return out

    def _response(self, snapshot: Snapshot, state: _TypeState) -> Response | None:
        type_url = state.type_url
        desired = {
            n: r for n, r in self._desired(snapshot, type_url).items() if state.subscribed(n)
        }
        changed = {
            n: r
            for n, r in desired.items()
            if (old := state.sent.get(n)) is None or old.version != r.version
        }
        removed = set(state.sent.keys() - desired.keys())
        response = self._compose(snapshot, state, desired, changed, removed)
        state.grew, state.first, state.fresh = False, False, set()
        if response is None:
            return None
        state.sent = desired
        state.pending = _Pending(response.nonce, desired, snapshot)
        if type_url == rs.ROUTE_TYPE:
            self._routes_sent = snapshot
        return response

    def _nonce(self) -> str:
        return str(next(self._nonces))

    @abc.abstractmethod
    def _compose(
        self,
        snapshot: Snapshot,
        state: _TypeState,
        desired: dict[str, Resource],
        changed: dict[str, Resource],
        removed: set[str],
    ) -> Response | None:
        """The response for one type, or None when there is nothing to say."""

    # -- status -----------------------------------------------------------------------

    def _type_in_sync(self, snapshot: Snapshot, type_url: str) -> bool:
        state = self._types[type_url]
        want = snapshot.resources(type_url)
        if state.pending is not None:
            return False
        held = {n: r.version for n, r in state.acked.items()}
        if type_url in WILDCARD_TYPES:
            return state.acked_any and held == {n: r.version for n, r in want.items()}
        if not want:
            return True
        if not state.acked_any or not want.keys() <= state.names:
            return False
        return all(held.get(n) == r.version for n, r in want.items())

    def in_sync(self, snapshot: Snapshot) -> bool:
        return all(self._type_in_sync(snapshot, t) for t in rs.TYPE_ORDER)

    def nacked_since(self, seq: int) -> str | None:
        for state in self._types.values():
            if state.last_error is not None and state.last_nack_seq >= seq:
                return f"{self.node_id or self.id}: {state.type_url}: {state.last_error}"
        return None

    def status(self) -> StreamStatus:
        snapshot = self.snapshot
        types = tuple(
            TypeStatus(
                type_url=s.type_url,
                acked_version=_state_version(s.acked) if s.acked_any else "",
                acked_resources=len(s.acked),
                in_sync=self._type_in_sync(snapshot, s.type_url),
                pending_nonce=s.pending.nonce if s.pending else None,
                nack_count=s.nack_count,
                last_error=s.last_error,
            )
            for s in self._types.values()
        )
        return StreamStatus(
            stream_id=self.id,
            node_id=self.node_id,
            delta=self.delta,
            connected_at=self.connected_at,
            in_sync=all(t.in_sync for t in types),
            types=types,
        )

    def close(self) -> None:
        self._cache._remove(self)


class SotwStream(Stream):
    """State of the world: every response carries all resources of its type."""

    delta = False

    def on_sotw_request(
        self,
        *,
        type_url: str,
        resource_names: Iterable[str],
        response_nonce: str,
        error_detail: str | None,
        node_id: str = "",
    ) -> None:
        """A DiscoveryRequest: first request, ACK, NACK, or a new subscription."""
        self._set_node(node_id)
        state = self._known(type_url)
        if state is None:
            return
        names = set(resource_names)
        if not state.requested:
            state.requested = True
            state.wildcard = type_url in WILDCARD_TYPES and (not names or "*" in names)
            state.grew = state.first = True
        if not state.wildcard:
            if names - state.names:
                state.grew = True
                state.fresh |= names - state.names
            for name in state.names - names:
                # Envoy forgets what it no longer asks for.
                state.sent.pop(name, None)
                state.acked.pop(name, None)
            state.names = names
        self._on_answer(state, response_nonce, error_detail)
        self._forget_if_unsubscribed(state)
        self._wake.set()

    def _compose(
        self,
        snapshot: Snapshot,
        state: _TypeState,
        desired: dict[str, Resource],
        changed: dict[str, Resource],
        removed: set[str],
    ) -> Response | None:
        if not (changed or removed or state.grew):
            return None
        if not desired and not state.sent and not state.wildcard:
            return None  # nothing to say about names that do not exist (yet)
        ordered = tuple(desired[n] for n in sorted(desired))
        return SotwResponse(state.type_url, _state_version(desired), ordered, self._nonce())


class DeltaStream(Stream):
    """Incremental: responses carry what changed and the names removed."""

    delta = True

    def on_delta_request(
        self,
        *,
        type_url: str,
        subscribe: Iterable[str],
        unsubscribe: Iterable[str],
        initial_versions: Mapping[str, str],
        response_nonce: str,
        error_detail: str | None,
        node_id: str = "",
    ) -> None:
        """A DeltaDiscoveryRequest: (re)subscription, ACK or NACK."""
        self._set_node(node_id)
        state = self._known(type_url)
        if state is None:
            return
        sub, unsub = set(subscribe), set(unsubscribe)
        if not state.requested:
            state.requested = True
            state.wildcard = type_url in WILDCARD_TYPES and (not sub or "*" in sub)
            state.grew = state.first = True
            # After a reconnect Envoy says what it holds: send only what differs.
            held = self._held(type_url, initial_versions)
            state.sent, state.acked, state.acked_any = dict(held), dict(held), bool(held)
        if "*" in sub:
            state.wildcard = True
        if "*" in unsub:
            state.wildcard = False
        sub.discard("*")
        unsub.discard("*")
        if sub - state.names:
            state.grew = True
            state.fresh |= sub - state.names
        state.names = (state.names | sub) - unsub
        for name in unsub:
            # Envoy forgets unsubscribed resources by itself.
            state.sent.pop(name, None)
            state.acked.pop(name, None)
        self._on_answer(state, response_nonce, error_detail)
        self._forget_if_unsubscribed(state)
        self._wake.set()

    def _held(self, type_url: str, versions: Mapping[str, str]) -> dict[str, Resource]:
        """Resources Envoy reports holding; unknown ones get a placeholder (so they differ)."""
        current = self.snapshot.resources(type_url)
        held = {}
        for name, version in versions.items():
            resource = current.get(name)
            if resource is None or resource.version != version:
                resource = Resource(type_url, name, b"", version, b"")
            held[name] = resource
        return held

    def _compose(
        self,
        snapshot: Snapshot,
        state: _TypeState,
        desired: dict[str, Resource],
        changed: dict[str, Resource],
        removed: set[str],
    ) -> Response | None:
        # Newly asked-for names that do not exist are answered as removed.
        removed |= state.fresh - desired.keys()
        if not (changed or removed or (state.first and state.wildcard and not state.acked_any)):
            return None
        return DeltaResponse(
            state.type_url,
            snapshot.version,
            tuple(changed[n] for n in sorted(changed)),
            tuple(sorted(removed)),
            self._nonce(),
        )


class SnapshotCache:
    """The snapshots by node and every connected stream. Use from one event loop."""

    _HISTORY = 256  # snapshot versions remembered per node for wait_for_ack ordering

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        default = snapshot.check() if snapshot is not None else Snapshot({})
        self._snapshots: dict[str, Snapshot] = {DEFAULT_NODE: default}
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count(1)
        self._seq = 0
        self._seqs: dict[str, OrderedDict[str, int]] = {
            DEFAULT_NODE: OrderedDict({default.version: 0})
        }
        self._changed = asyncio.Event()

    @property
    def snapshot(self) -> Snapshot:
        """The default snapshot (nodes without one of their own)."""
        return self._snapshots[DEFAULT_NODE]

    def _key(self, node_id: str) -> str:
        return node_id if node_id in self._snapshots else DEFAULT_NODE

    def snapshot_for(self, node_id: str) -> Snapshot:
        """What an Envoy announcing `node_id` should hold."""
        return self._snapshots[self._key(node_id)]

    def nodes(self) -> list[str]:
        """Node ids with a snapshot of their own."""
        return [n for n in self._snapshots if n != DEFAULT_NODE]

    def set_snapshot(self, snapshot: Snapshot, node_id: str = DEFAULT_NODE) -> None:
        """Serve `snapshot` to `node_id` (default: every node without its own snapshot) from
        now on; raises InconsistentSnapshotError if it dangles."""
        snapshot.check()
        current = self._snapshots.get(node_id)
        if current is not None and snapshot.version == current.version:
            return
        self._snapshots[node_id] = snapshot
        self._seq += 1
        seqs = self._seqs.setdefault(node_id, OrderedDict())
        seqs[snapshot.version] = self._seq
        seqs.move_to_end(snapshot.version)
        while len(seqs) > self._HISTORY:
            seqs.popitem(last=False)
        log.debug("xds.snapshot", node=node_id, version=snapshot.version)
        for stream in self._streams.values():
            if self._key(stream.node_id) == node_id:
                stream.wake()
        self.changed()

    def clear_snapshot(self, node_id: str) -> None:
        """`node_id` gets the default snapshot again."""
        if node_id == DEFAULT_NODE or self._snapshots.pop(node_id, None) is None:
            return
        self._seqs.pop(node_id, None)
        for stream in self._streams.values():
            if stream.node_id == node_id:
                stream.wake()
        self.changed()

    def seq_of(self, version: str, node_id: str = DEFAULT_NODE) -> int:
        seqs = self._seqs.get(self._key(node_id))
        return -1 if seqs is None else seqs.get(version, -1)

    @overload
    def open_stream(self, *, delta: Literal[True]) -> DeltaStream: ...
    @overload
    def open_stream(self, *, delta: Literal[False]) -> SotwStream: ...
    @overload
    def open_stream(self, *, delta: bool) -> Stream: ...
    def open_stream(self, *, delta: bool) -> Stream:
        kind: type[Stream] = DeltaStream if delta else SotwStream
        stream = kind(self, next(self._ids))
        self._streams[stream.id] = stream
        self.changed()
        return stream

    def _remove(self, stream: Stream) -> None:
        stream.closed = True
        if self._streams.pop(stream.id, None) is not None:
            self.changed()

    def changed(self) -> None:
        """Wake the waiters (ACK, NACK, stream opened or closed, new snapshot)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def status(self) -> list[StreamStatus]:
        return [s.status() for s in self._streams.values()]

    def retry_rejected(self) -> int:
        """Offer every rejected (NACKed) type again, though the snapshot did not change.

        A NACK can depend on the world rather than on the config: a listener port that was
        taken may be free now. Callers use this on an explicit "try again" (services.yaml
        saved again); returns how many stream types were re-offered.
        """
        count = 0
        for stream in self._streams.values():
            count += stream.forget_rejections()
        return count

    async def wait_changed(self) -> None:
        """Until the next change of status (for watchers of `status()`)."""
        await self._changed.wait()

    def streams(self, node_id: str | None = None) -> list[Stream]:
        """Every stream, or those served the snapshot of `node_id` (DEFAULT_NODE: those
        without a snapshot of their own)."""
        if node_id is None:
            return list(self._streams.values())
        return [s for s in self._streams.values() if self._key(s.node_id) == node_id]

    async def wait_for_ack(
        self, version: str | None = None, *, node_id: str = DEFAULT_NODE, streams: int = 1
    ) -> None:
        """Until at least `streams` Envoys of `node_id` (default: the nodes without their
        own snapshot) are connected and each holds its current snapshot, which is `version`
        or one set after it. Raises NackedError if one rejects it. Bound it with
        asyncio.timeout()."""
        seqs = self._seqs.get(node_id)
        current = self._snapshots.get(node_id)
        if seqs is None or current is None:
            raise ValueError(f"no snapshot for node {node_id!r}")
        target = current.version if version is None else version
        if target not in seqs:
            raise ValueError(f"unknown snapshot version {target!r}")
        seq = seqs[target]
        while True:
            changed = self._changed
            live = self.streams(node_id)
            for stream in live:
                error = stream.nacked_since(seq)
                if error is not None:
                    raise NackedError(error)
            snapshot = self._snapshots[node_id]
            if len(live) >= streams and all(s.in_sync(snapshot) for s in live):
                return
            await changed.wait()


__all__ = [
    "DEFAULT_NODE",
    "DeltaResponse",
    "DeltaStream",
    "Response",
    "SnapshotCache",
    "SotwResponse",
    "SotwStream",
    "Stream",
    "StreamStatus",
    "TypeStatus",
]
