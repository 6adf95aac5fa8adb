"""The snapshot cache: what each connected Envoy holds, and what it should get next.

Transport-free (never imports grpc): the ADS server feeds each stream's requests in and
writes out whatever `Stream.responses()` returns. All Envoys (nodes) get the same snapshot.

    cache = SnapshotCache()
    cache.set_snapshot(snapshot)                  # consistency-checked, wakes every stream
    await cache.wait_for_ack(snapshot.version)    # every connected Envoy holds it
    cache.status() -> list[StreamStatus]          # per stream and type: ACKed version, NACKs
    await cache.wait_changed()                    # until status() may differ

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

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from localmesh.xds import resources as rs
from localmesh.xds.snapshot import Resource, Snapshot, content_version

log = structlog.get_logger(__name__)

WILDCARD_TYPES = frozenset({rs.CLUSTER_TYPE, rs.LISTENER_TYPE})


class NackedError(Exception):
    """An Envoy rejected (NACKed) the snapshot a caller waits for."""


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


class Stream:
    """One ADS stream (one Envoy connection), SotW or Delta. Owned by the cache."""

    def __init__(self, cache: SnapshotCache, stream_id: int, *, delta: bool) -> None:
        self._cache = cache
        self.id = stream_id
        self.delta = delta
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

    # -- requests ---------------------------------------------------------------------

    def _set_node(self, node_id: str) -> None:
        if node_id and not self.node_id:
            self.node_id = node_id

    def _known(self, type_url: str) -> _TypeState | None:
        state = self._types.get(type_url)
        if state is None:
            log.warning("xds.unknown_type", stream=self.id, type_url=type_url)
        return state

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

    def _forget_if_unsubscribed(self, state: _TypeState) -> None:
        # With no names left Envoy has no watch for the type and answers no response of
        # it: an unanswered one must not block the stream (nor wait_for_ack).
        if not state.wildcard and not state.names and state.pending is not None:
            state.pending = None
            self._cache.changed()

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
        current = self._cache.snapshot.resources(type_url)
        held = {}
        for name, version in versions.items():
            resource = current.get(name)
            if resource is None or resource.version != version:
                resource = Resource(type_url, name, b"", version, b"")
            held[name] = resource
        return held

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
            state.last_nack_seq = cache.seq_of(pending.snapshot.version)
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
        snapshot = self._cache.snapshot
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
        removed = state.sent.keys() - desired.keys()
        first, fresh = state.first, state.fresh
        grew = state.grew
        state.grew, state.first, state.fresh = False, False, set()
        if self.delta:
            # Newly asked-for names that do not exist are answered as removed.
            removed |= fresh - desired.keys()
            if not (changed or removed or (first and state.wildcard and not state.acked_any)):
                return None
        else:
            if not (changed or removed or grew):
                return None
            if not desired and not state.sent and not state.wildcard:
                return None  # nothing to say about names that do not exist (yet)
        nonce = str(next(self._nonces))
        response: Response
        if self.delta:
            response = DeltaResponse(
                type_url,
                snapshot.version,
                tuple(changed[n] for n in sorted(changed)),
                tuple(sorted(removed)),
                nonce,
            )
        else:
            ordered = tuple(desired[n] for n in sorted(desired))
            response = SotwResponse(type_url, _state_version(desired), ordered, nonce)
        state.sent = desired
        state.pending = _Pending(nonce, desired, snapshot)
        if type_url == rs.ROUTE_TYPE:
            self._routes_sent = snapshot
        return response

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
        snapshot = self._cache.snapshot
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


class SnapshotCache:
    """The current snapshot and every connected stream. Use from one event loop."""

    _HISTORY = 256  # snapshot versions remembered for wait_for_ack ordering

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self._snapshot = snapshot.check() if snapshot is not None else Snapshot({})
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count(1)
        self._seq = 0
        self._seqs: OrderedDict[str, int] = OrderedDict({self._snapshot.version: 0})
        self._changed = asyncio.Event()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Serve `snapshot` from now on (raises InconsistentSnapshotError if it dangles)."""
        snapshot.check()
        if snapshot.version == self._snapshot.version:
            return
        self._snapshot = snapshot
        self._seq += 1
        self._seqs[snapshot.version] = self._seq
        self._seqs.move_to_end(snapshot.version)
        while len(self._seqs) > self._HISTORY:
            self._seqs.popitem(last=False)
        log.debug("xds.snapshot", version=snapshot.version, streams=len(self._streams))
        for stream in self._streams.values():
            stream.wake()
        self.changed()

    def seq_of(self, version: str) -> int:
        return self._seqs.get(version, -1)

    def open_stream(self, *, delta: bool) -> Stream:
        stream = Stream(self, next(self._ids), delta=delta)
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

    def streams(self) -> list[Stream]:
        return list(self._streams.values())

    async def wait_for_ack(self, version: str | None = None, *, streams: int = 1) -> None:
        """Until at least `streams` Envoys are connected and each holds the current snapshot,
        which is `version` or one set after it. Raises NackedError if an Envoy rejects it.
        Bound it with asyncio.timeout()."""
        target = self._snapshot.version if version is None else version
        if target not in self._seqs:
            raise ValueError(f"unknown snapshot version {target!r}")
        seq = self._seqs[target]
        while True:
            changed = self._changed
            live = list(self._streams.values())
            for stream in live:
                error = stream.nacked_since(seq)
                if error is not None:
                    raise NackedError(error)
            if (
                self._seq >= seq
                and len(live) >= streams
                and all(s.in_sync(self._snapshot) for s in live)
            ):
                return
            await changed.wait()


__all__ = [
    "DeltaResponse",
    "NackedError",
    "Response",
    "SnapshotCache",
    "SotwResponse",
    "Stream",
    "StreamStatus",
    "TypeStatus",
]
