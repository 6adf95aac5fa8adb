"""Who meshes a Service, recorded on the Service itself; joining and leaving safely.

The Service carries, while meshed:

    localmesh.dev/original-selector  JSON, written BEFORE the selector is changed
    localmesh.dev/sessions           the session Lease names, comma-separated
    localmesh.dev/mode               auto

Every write is a compare-and-swap (the resourceVersion read, retried on 409), never a lock:

    join   CAS-add own name (the first also records the selector), make sure the origin
           Service, RBAC and router exist (claiming them; replacing, by uid, any left by
           an earlier origin Service that only waits for the garbage collector), wait until
           the router pod of this origin is Ready, then CAS-swap the selector to the
           router's labels and this origin's uid
    leave  CAS-remove own name, pruning sessions whose Lease expired; the writer that
           removes the last live one restores the selector and drops the annotations in
           the same write, then deletes the router, origin Service and RBAC

Deletes are preconditioned on the resourceVersion seen BEFORE the restoring write; a joiner
claims each shared object (bumps an annotation) AFTER its own CAS-add, so a leaver can
never delete what a newer joiner relies on: its delete gets a 409 and leaves it alone.
Because the intent is on the objects first, a crash at any point is undone by
`cleanup.clean` (or by the next leaver).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from localmesh.clustermesh import manifests as m
from localmesh.errors import KubeError
from localmesh.kube.objects import Conflict, KubeObjects, NotFound
from localmesh.kube.targets import JSON

log = structlog.get_logger(__name__)

CAS_ATTEMPTS = 30
SHARED_KINDS = ("Deployment", "Service", "RoleBinding", "Role", "ServiceAccount")


class MeshError(KubeError):
    """The mesh cannot be set up or taken down; nothing was left changed."""


# -- the Service's annotations (pure) ---------------------------------------------------
@dataclass(frozen=True)
class MeshState:
    original_selector: dict[str, str] | None  # None: not meshed
    sessions: tuple[str, ...]
    mode: str | None


def mesh_state(service: JSON) -> MeshState:
    notes = service.get("metadata", {}).get("annotations") or {}
    names = tuple(n for n in (notes.get(m.SESSIONS_ANNOTATION) or "").split(",") if n)
    return MeshState(m.original_selector(service), names, notes.get(m.MODE_ANNOTATION))


def _annotations(service: JSON) -> dict[str, str]:
    meta = service.setdefault("metadata", {})
    notes: dict[str, str] = meta.get("annotations") or {}
    meta["annotations"] = notes
    return notes


def with_session(service: JSON, name: str, mode: str = "auto") -> JSON:
    """`service` listing session `name`; the first session records the selector."""
    changed = copy.deepcopy(service)
    notes = _annotations(changed)
    if m.ORIGINAL_SELECTOR_ANNOTATION not in notes:
        # No sort_keys: the selector is put back exactly as it was written.
        selector = changed.get("spec", {}).get("selector") or {}
        notes[m.ORIGINAL_SELECTOR_ANNOTATION] = json.dumps(selector, separators=(",", ":"))
    names = list(mesh_state(service).sessions)
    if name not in names:
        names.append(name)
    notes[m.SESSIONS_ANNOTATION] = ",".join(names)
    notes[m.MODE_ANNOTATION] = mode
    return changed


def without_sessions(service: JSON, gone: Iterable[str]) -> JSON:
    """`service` with the sessions in `gone` removed; restored when none is left."""
    drop = set(gone)
    names = [n for n in mesh_state(service).sessions if n not in drop]
    if not names:
        return restored(service)
    changed = copy.deepcopy(service)
    _annotations(changed)[m.SESSIONS_ANNOTATION] = ",".join(names)
    return changed


def routed(service: JSON, origin_uid: str | None = None) -> JSON:
    """`service` selecting the pod of the router owned by the origin Service `origin_uid`."""
    changed = copy.deepcopy(service)
    changed["spec"]["selector"] = m.routed_selector(changed["metadata"]["name"], origin_uid)
    return changed


def restored(service: JSON) -> JSON:
    """`service` as it was before the mesh: its selector back, localmesh's annotations gone."""
    changed = copy.deepcopy(service)
    original = m.original_selector(service)
    if original is not None:
        changed["spec"]["selector"] = original
    meta = changed["metadata"]
    notes = meta.get("annotations") or {}
    for key in m.SERVICE_ANNOTATIONS:
        notes.pop(key, None)
    if notes:
        meta["annotations"] = notes
    else:
        meta.pop("annotations", None)
    return changed


# -- liveness ----------------------------------------------------------------------------
def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


# Another machine's clock may run ahead of the one that renewed a Lease. Removing someone's
# session is destructive, so a Lease counts as dead for that only this much past expiry.
PRUNE_GRACE_SECONDS = 5.0


def lease_expires_in(lease: JSON, now: datetime | None = None) -> float | None:
    """Seconds from `now` until the Lease expires (renewTime, else acquireTime, plus its
    duration; below 0 once expired), by this machine's clock; None without either time."""
    spec = lease.get("spec") or {}
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    if renewed is None:
        return None
    duration = float(spec.get("leaseDurationSeconds") or m.LEASE_DURATION_SECONDS)
    return duration - ((now or datetime.now(UTC)) - renewed).total_seconds()


def lease_live(lease: JSON | None, now: datetime | None = None, grace: float = 0.0) -> bool:
    """Renewed within its duration (plus `grace` seconds), by this machine's clock."""
    if lease is None or lease.get("metadata", {}).get("deletionTimestamp"):
        return False
    left = lease_expires_in(lease, now)
    return left is not None and left + grace > 0


def lease_dead(lease: JSON | None, now: datetime | None = None) -> bool:
    """Dead beyond doubt: gone, or expired for longer than any plausible clock skew."""
    return not lease_live(lease, now, grace=PRUNE_GRACE_SECONDS)


async def session_leases(kube: KubeObjects, namespace: str, service: str) -> dict[str, JSON]:
    """The session Leases of one Service, by name."""
    selector = f"{m.managed_selector(service)},{m.COMPONENT_LABEL}=session"
    return {
        lease["metadata"]["name"]: lease for lease in await kube.list("Lease", namespace, selector)
    }


async def dead_sessions(kube: KubeObjects, namespace: str, service: JSON) -> set[str]:
    """The sessions listed on `service` whose Lease is gone or expired."""
    leases = await session_leases(kube, namespace, service["metadata"]["name"])
    return {n for n in mesh_state(service).sessions if lease_dead(leases.get(n))}


# -- compare-and-swap --------------------------------------------------------------------
async def cas_service(
    kube: KubeObjects, namespace: str, name: str, change: Callable[[JSON], JSON | None]
) -> tuple[JSON, JSON]:
    """Apply `change` to the current Service until the write is not overtaken (409).
    `change` returns the new object, or None when there is nothing to write; it may raise.
    Returns (the Service as read, the Service as it is now)."""
    for attempt in range(CAS_ATTEMPTS):
        current = await kube.get("Service", namespace, name)
        if current is None:
            raise MeshError(f"service {namespace}/{name} not found")
        wanted = change(current)
        if wanted is None or wanted == current:
            return current, current
        try:
            return current, await kube.replace("Service", namespace, name, wanted)
        except NotFound:
            raise MeshError(f"service {namespace}/{name} was deleted") from None
        except Conflict:
            # Someone else wrote in between: read again; jitter spreads simultaneous writers.
            await asyncio.sleep(random.uniform(0, 0.02 * (attempt + 1)))
    raise MeshError(f"service {namespace}/{name} kept changing; gave up after {CAS_ATTEMPTS} tries")


# -- shared objects ------------------------------------------------------------------------
def _is_ours(obj: JSON) -> bool:
    return (obj.get("metadata", {}).get("labels") or {}).get(m.MANAGED_BY_LABEL) == m.MANAGER


GONE_POLL_SECONDS = 0.1  # while an object on its way out is waited for


def _stale(current: JSON, wanted: JSON) -> bool:
    """`current` is not owned by the owner `wanted` names."""
    want = m.owner_uids(wanted)
    return bool(want) and not (m.owner_uids(current) & want)


async def _garbage(kube: KubeObjects, current: JSON) -> bool:
    """Every owner `current` (one of localmesh's) names is gone, being deleted, or another
    object of its name (as the garbage collector judges, which will delete it, however
    late); or it names none (released by an orphaning delete: nobody's, nobody removes it)."""
    meta = current["metadata"]
    refs = [r for r in meta.get("ownerReferences") or [] if isinstance(r, dict)]
    for ref in refs:
        if ref.get("kind") not in ("Service", "Lease"):
            return False  # not an owner localmesh makes: never judged on a guess
        owner = await kube.get(str(ref["kind"]), meta["namespace"], str(ref.get("name")))
        if (
            owner is not None
            and owner["metadata"].get("uid") == ref.get("uid")
            and not owner["metadata"].get("deletionTimestamp")
        ):
            return False
    return True


async def _replace_garbage(kube: KubeObjects, current: JSON, wanted: JSON) -> None:
    """Delete `current`, which is in the way of `wanted`, if it is garbage (in that
    incarnation only: its uid); MeshError when its owner lives."""
    meta = current["metadata"]
    kind, name = current.get("kind") or wanted["kind"], meta["name"]
    if not await _garbage(kube, current):
        raise MeshError(
            f"{kind} {meta['namespace']}/{name} belongs to another owner than this session's; "
            "run mesh again"
        )
    log.info("replacing what a deleted owner left", kind=kind, name=name, uid=meta["uid"])
    with contextlib.suppress(Conflict, NotFound):  # gone or replaced meanwhile: look again
        await kube.delete(kind, meta["namespace"], name, uid=str(meta["uid"]))


async def ensure(
    kube: KubeObjects, obj: JSON, claim: str, deadline: float = 30.0
) -> tuple[JSON, bool]:
    """Create `obj`, or claim the existing one (bump its claim annotation, so a leaver's
    preconditioned delete misses it; for the router's Role add its session Leases). An
    object of that name that localmesh did not create is an error. One that is not owned
    by `obj`'s owner (it belongs to a deleted origin Service and only waits for the garbage
    collector, which may take seconds) is never relied on: it is deleted, only in that
    incarnation (its uid), and made again. One being deleted is waited for, then made
    again. Returns the object and whether this call created it."""
    kind, meta = obj["kind"], obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    wanted = copy.deepcopy(obj)
    wanted["metadata"].setdefault("annotations", {})[m.CLAIM_ANNOTATION] = claim
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    while loop.time() < until:
        current = await kube.get(kind, namespace, name)
        try:
            if current is None:
                return await kube.create(kind, namespace, wanted), True
            if not _is_ours(current):
                raise MeshError(
                    f"{kind} {namespace}/{name} exists and was not created by localmesh; "
                    "rename or remove it to mesh this service"
                )
            if current["metadata"].get("deletionTimestamp"):
                await asyncio.sleep(GONE_POLL_SECONDS)  # on its way out: made again after
                continue
            if _stale(current, wanted):
                await _replace_garbage(kube, current, wanted)
                continue
            claimed = copy.deepcopy(current)
            claimed["metadata"].setdefault("annotations", {})[m.CLAIM_ANNOTATION] = claim
            if kind == "Role":  # the router may delete this joiner's Lease once dead
                # Listed after the Role was read: a name the Role holds whose Lease is gone
                # now is a session that ended, never a joiner's (its Lease comes first).
                service = (meta.get("labels") or {}).get(m.SERVICE_LABEL, "")
                leases = set(await session_leases(kube, namespace, service))
                claimed = m.with_session_leases(claimed, wanted, leases)
            return await kube.replace(kind, namespace, name, claimed), False
        except (Conflict, NotFound):
            continue  # created, claimed or deleted in between: look again
    raise MeshError(f"{kind} {namespace}/{name} could not be created or claimed in {deadline:g}s")


async def create_owned(kube: KubeObjects, obj: JSON, deadline: float = 30.0) -> JSON:
    """Create `obj` (one of a session's own objects, owned by its Lease). One of its name
    left by an earlier Lease of the same name, waiting for the garbage collector, is
    deleted (only that incarnation) and waited for first; anything else of that name is
    an error."""
    kind, meta = obj["kind"], obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    while loop.time() < until:
        try:
            return await kube.create(kind, namespace, obj)
        except Conflict:
            pass
        current = await kube.get(kind, namespace, name)
        if current is None:
            continue
        if _is_ours(current) and m.owner_uids(current) & m.owner_uids(obj):
            return current  # this session's own (a create answered late, retried)
        if not _is_ours(current) or not _stale(current, obj):
            raise MeshError(f"{kind} {namespace}/{name} exists already; run mesh again")
        if not current["metadata"].get("deletionTimestamp"):
            await _replace_garbage(kube, current, obj)
        await asyncio.sleep(GONE_POLL_SECONDS)  # a pod takes its grace period to go
    raise MeshError(f"{kind} {namespace}/{name} could not be created in {deadline:g}s")


async def snapshot_shared(kube: KubeObjects, namespace: str, service: str) -> dict[str, str]:
    """'Kind/name' -> resourceVersion of the shared objects localmesh made for `service`."""
    names = {
        "Deployment": m.router_name(service),
        "Service": m.origin_name(service),
        "RoleBinding": m.router_name(service),
        "Role": m.router_name(service),
        "ServiceAccount": m.router_name(service),
    }
    found = await asyncio.gather(*(kube.get(kind, namespace, names[kind]) for kind in SHARED_KINDS))
    return {
        f"{kind}/{names[kind]}": str(obj["metadata"].get("resourceVersion", ""))
        for kind, obj in zip(SHARED_KINDS, found, strict=True)
        if obj is not None and _is_ours(obj)
    }


async def delete_shared(
    kube: KubeObjects, namespace: str, versions: dict[str, str], dry_run: bool = False
) -> list[str]:
    """Delete what `snapshot_shared` saw, only in the version it saw (router first: the
    Service no longer selects it). Returns what was deleted."""
    done = []
    for key, version in versions.items():
        kind, name = key.split("/", 1)
        if dry_run:
            done.append(f"{kind} {namespace}/{name}")
            continue
        try:
            if await kube.delete(kind, namespace, name, resource_version=version):
                done.append(f"{kind} {namespace}/{name}")
        except Conflict:
            log.info("kept: claimed by a joining session", kind=kind, name=name)
    return done


async def delete_session_objects(
    kube: KubeObjects, namespace: str, name: str, dry_run: bool = False, *, if_dead: bool = False
) -> list[str]:
    """A session's Lease (first: the router drops its route), shadow pod and Secret. With
    `if_dead` (someone else's session), only while its Lease stays dead: one renewed since
    it was judged dead keeps everything."""
    done: list[str] = []
    kinds = ("Lease", "Pod", "Secret")
    # Read first: the Pod and Secret are the Lease's, and may be garbage collected by the
    # time they are deleted here; gone either way, they are reported.
    found = await asyncio.gather(*(kube.get(kind, namespace, name) for kind in kinds))
    for kind, obj in zip(kinds, found, strict=True):
        if obj is None or not _is_ours(obj):
            continue
        version = None
        if kind == "Lease" and if_dead:
            if not lease_dead(obj):
                return done
            version = str(obj["metadata"].get("resourceVersion") or "") or None
        if dry_run:
            done.append(f"{kind} {namespace}/{name}")
            continue
        try:
            if await kube.delete(kind, namespace, name, resource_version=version) or (
                kind != "Lease"
            ):
                done.append(f"{kind} {namespace}/{name}")
        except Conflict:
            return done  # renewed after all: the session lives
    return done


# -- leaving -----------------------------------------------------------------------------
@dataclass
class LeaveResult:
    restored: bool
    deleted: list[str]


async def remove_sessions(
    kube: KubeObjects, namespace: str, service: str, gone: Iterable[str], dry_run: bool = False
) -> LeaveResult:
    """CAS-remove `gone` and every session whose Lease is dead; the writer that removes the
    last live one restores the Service, then deletes the shared objects."""
    gone = set(gone)
    versions: dict[str, str] = {}
    pruned: set[str] = set()

    async def prepare() -> JSON | None:
        nonlocal versions, pruned
        # Versions BEFORE the write that may restore: a joiner's claim comes after it.
        versions = await snapshot_shared(kube, namespace, service)
        current = await kube.get("Service", namespace, service)
        if current is None:
            return None
        pruned = await dead_sessions(kube, namespace, current)
        return current

    restored_now = False
    unmeshed = False  # shared objects seen before the Service read belong to nobody
    for attempt in range(CAS_ATTEMPTS):
        current = await prepare()
        if current is None or mesh_state(current).original_selector is None:
            unmeshed = True
            break
        wanted = without_sessions(current, gone | pruned)
        if wanted == current:
            break
        restoring = m.original_selector(wanted) is None
        if dry_run:
            restored_now = restoring
            break
        try:
            await kube.replace("Service", namespace, service, wanted)
            restored_now = restoring
            break
        except NotFound:
            unmeshed = True  # the Service was deleted meanwhile
            break
        except Conflict:
            await asyncio.sleep(random.uniform(0, 0.02 * (attempt + 1)))
    else:
        raise MeshError(f"service {namespace}/{service} kept changing; gave up")
    deleted = []
    for name in sorted(pruned - gone):
        deleted += await delete_session_objects(kube, namespace, name, dry_run, if_dead=True)
    if restored_now or unmeshed:
        deleted += await delete_shared(kube, namespace, versions, dry_run)
    return LeaveResult(restored_now, deleted)
