"""`localmesh mesh clean` / `recover`: undo what crashed or vanished sessions left.

Everything needed is on the cluster's objects (the Service's annotations, the labels of what
localmesh created, the Leases), so this works from any machine, after a crash, a lost laptop
or a deleted namespace:

- a meshed Service whose sessions are all dead (Lease gone or expired) is restored in one
  write (selector back, annotations gone), then its router, origin Service and RBAC go;
- dead sessions of a Service still meshed by others are removed from it;
- Leases, shadow pods and Secrets of dead sessions are deleted; live ones are never touched.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.manual import (
    MODE as MANUAL,
    delete_applied_rules,
    delete_shadow_service,
    release_manual_sessions,
)
from localmesh.clustermesh.membership import (
    delete_session_objects,
    lease_dead,
    mesh_state,
    remove_sessions,
    session_leases,
)
from localmesh.kube.objects import KubeObjects
from localmesh.kube.targets import JSON

CREATED_KINDS = (
    "Lease",
    "Pod",
    "Secret",
    "Deployment",
    "Service",
    "ServiceAccount",
    "Role",
    "RoleBinding",
)


@dataclass
class CleanReport:
    actions: list[str] = field(default_factory=list)  # what was (or would be) done
    kept: list[str] = field(default_factory=list)  # services still meshed by live sessions


def _selector_text(selector: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in (selector or {}).items()) or "none"


async def meshed_services(
    kube: KubeObjects, namespace: str | None, service: str | None
) -> dict[tuple[str, str], JSON | None]:
    """(namespace, service) -> the Service (None when gone) for every Service localmesh
    meshes or left objects for."""
    found: dict[tuple[str, str], JSON | None] = {}
    for svc in await kube.list("Service", namespace):
        meta = svc["metadata"]
        if m.SESSIONS_ANNOTATION in (meta.get("annotations") or {}):  # either mode
            found[(meta["namespace"], meta["name"])] = svc
    for kind in CREATED_KINDS:
        for obj in await kube.list(kind, namespace, m.managed_selector()):
            meta = obj["metadata"]
            owner = (meta.get("labels") or {}).get(m.SERVICE_LABEL)
            if owner and (meta["namespace"], owner) not in found:
                found[(meta["namespace"], owner)] = await kube.get(
                    "Service", meta["namespace"], owner
                )
    return {key: svc for key, svc in found.items() if service is None or key[1] == service}


async def clean(
    kube: KubeObjects,
    namespace: str | None = None,
    service: str | None = None,
    *,
    dry_run: bool = False,
) -> CleanReport:
    report = CleanReport()
    verb = "would restore" if dry_run else "restored"
    for (ns, name), svc in sorted((await meshed_services(kube, namespace, service)).items()):
        original = m.original_selector(svc) if svc is not None else None
        prefix = "would delete" if dry_run else "deleted"
        released: list[str] = []
        if svc is not None and mesh_state(svc).mode == MANUAL:
            # Only annotations to take off (the selector was never touched); the dead
            # sessions' objects, applied rules first, go below as unlisted sessions'.
            released = await release_manual_sessions(kube, ns, name, set(), dry_run)
            report.actions += [
                f"{'would remove' if dry_run else 'removed'} session {r} from Service {ns}/{name}"
                for r in released
            ]
        else:
            result = await remove_sessions(kube, ns, name, (), dry_run=dry_run)
            if result.restored:
                report.actions.append(
                    f"{verb} Service {ns}/{name} (selector {_selector_text(original)})"
                )
            report.actions += [f"{prefix} {what}" for what in result.deleted]
        # Sessions no Service lists (crashed before joining or after leaving): their
        # objects go once the Lease is gone or expired.
        leases = await session_leases(kube, ns, name)
        current = await kube.get("Service", ns, name)
        listed = set(mesh_state(current).sessions) if current is not None else set()
        listed -= set(released)  # (still listed after a dry run)
        orphans: dict[str, list[str]] = defaultdict(list)
        for kind in ("Pod", "Secret", "Service"):
            selector = f"{m.managed_selector(name)},{m.COMPONENT_LABEL}=shadow"
            for obj in await kube.list(kind, ns, selector):
                if obj["metadata"].get("deletionTimestamp"):
                    continue  # already on its way out (a pod in its grace period)
                orphans[obj["metadata"]["name"]].append(kind)
        for lease_name in leases:
            orphans.setdefault(lease_name, [])
        for session in sorted(orphans):
            if session in listed or not lease_dead(leases.get(session)):
                continue
            # A manual session's applied rules go first: its Lease records them.
            done = await delete_applied_rules(kube, ns, leases.get(session), dry_run)
            done += await delete_session_objects(kube, ns, session, dry_run, if_dead=True)
            if done or session not in leases:  # its Lease gone: so is manual mode's Service
                done += await delete_shadow_service(kube, ns, session, dry_run)
            report.actions += [f"{prefix} {what}" for what in done]
        live = sorted(n for n in listed if not lease_dead(leases.get(n)))
        if live:
            holders = [
                f"{n} ({(leases[n].get('spec') or {}).get('holderIdentity', '?')})" for n in live
            ]
            report.kept.append(f"Service {ns}/{name}: meshed by {', '.join(holders)}")
    return report
