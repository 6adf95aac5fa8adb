"""`localmesh mesh --mode manual`: a shadow of the Service for clusters that route with a
service mesh of their own (Istio, or a Gateway API mesh).

Manual mode changes no Service's routing. A session is a Lease (annotated `mode: manual`,
so `mesh list` shows it), its name on the Service's `sessions` and `mode: manual`
annotations (the same compare-and-swap auto mode joins with: of a manual and an auto
session starting at once, one wins, the other is refused; the selector is never touched
nor recorded), the tunnel Secret and a shadow pod tunnelled to this machine, as in auto
mode, but the shadow carries the Service's
selector labels plus the mark's label (`version: dev`), so the mesh sees it as one more pod
of the Service, told apart by that label. With `--no-selector-labels` it carries only the
mark's label (and localmesh's own): no plain-Service traffic reaches it, and a shadow
Service selecting only it (also made by `--shadow-service`) is what rules route to.

The rules to apply come from `manual_rules`; the user applies them (or they are only
printed): changing the cluster's routing stays the user's decision.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from dataclasses import dataclass

from localmesh.clustermesh import manifests as m, manual_rules as rules
from localmesh.clustermesh.marks import VersionMark
from localmesh.clustermesh.membership import (
    LeaveResult,
    MeshError,
    cas_service,
    dead_sessions,
    delete_session_objects,
    mesh_state,
)
from localmesh.clustermesh.session import (
    Joined,
    MeshOptions,
    MeshSession,
    Permission,
    session_permissions,
)
from localmesh.clustermesh.tunnel_wire import new_secret
from localmesh.errors import KubeError
from localmesh.kube.objects import KINDS, Conflict, KubeObjects, NotFound
from localmesh.kube.targets import JSON

MODE = "manual"
ISTIO_KINDS = ("DestinationRule", "VirtualService")
# On a manual session's Lease, before they are created: the rules `--apply` applies, as
# JSON [[kind, name], ...], so Ctrl-C and `mesh clean` remove them.
APPLIED_ANNOTATION = "localmesh.dev/applied-rules"
LEASE_ATTEMPTS = 5
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
# Labels localmesh uses to find its own objects: a shadow cannot take the Service's value.
OWN_LABELS = (m.MANAGED_BY_LABEL, m.COMPONENT_LABEL, m.SERVICE_LABEL, m.SESSION_LABEL)

CAVEAT = (
    "note: the shadow carries the Service's selector labels, so until rules like these "
    "are applied the plain Service also sends it a share of ordinary requests (served on "
    "this machine); --no-selector-labels gives a shadow that receives only what rules send it"
)


def mark_label(mark: VersionMark) -> dict[str, str]:
    """The mark as a pod label: the value itself when it is a valid label value (`0.0.1`
    is), else its DNS-label form."""
    if not _LABEL_NAME.fullmatch(mark.key):
        raise MeshError(
            f"the mark's key {mark.key!r} cannot be a pod label; choose one of letters, "
            "digits, '-', '_' and '.' with --version-mark KEY:VALUE"
        )
    value = mark.value if _LABEL_NAME.fullmatch(mark.value) else mark.slug
    return {mark.key: value}


def shadow_labels(
    service: str, session: str, selector: dict[str, str] | None, mark: dict[str, str]
) -> dict[str, str]:
    """The shadow's labels: the selector's (unless None), the mark's, localmesh's own."""
    own = {**m.service_labels(service, "shadow"), m.SESSION_LABEL: session}
    taken = [k for k in (selector or {}) if k in own or k in mark]
    if taken:
        what = "the mark's key" if any(k in mark for k in taken) else "a label localmesh uses"
        raise MeshError(
            f"the Service's selector uses {', '.join(taken)} ({what}), which the shadow "
            "cannot also carry; use --no-selector-labels"
            + (" or another key with --version-mark KEY:VALUE" if "mark" in what else "")
        )
    return {**(selector or {}), **mark, **own}


def manual_shadow_pod(
    spec: m.SessionSpec, labels: dict[str, str], port_names: dict[int, str]
) -> JSON:
    """Auto mode's shadow pod with manual mode's labels, and the Service's named
    targetPorts named on it (endpoints of a named targetPort need the name)."""
    pod = m.shadow_pod(spec)
    pod["metadata"]["labels"] = dict(labels)
    for port in pod["spec"]["containers"][0]["ports"]:
        name = port_names.get(port["containerPort"])
        if name and "name" not in port:
            port["name"] = name
    return pod


def shadow_service(spec: m.SessionSpec) -> JSON:
    """A Service selecting only this session's shadow, on the exposed Service ports."""
    labels = {**m.service_labels(spec.service, "shadow"), m.SESSION_LABEL: spec.name}
    ports = sorted({(p.remote, p.target) for p in spec.ports})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "selector": {m.SESSION_LABEL: spec.name},
            "ports": [
                {"name": f"http-{remote}", "port": remote, "targetPort": target, "protocol": "TCP"}
                for remote, target in ports
            ],
        },
    }


@dataclass(frozen=True)
class ManualJoined:
    joined: Joined
    labels: dict[str, str]  # the shadow's
    rules: rules.RulesInput
    istio: list[JSON]
    http_routes: list[JSON]
    notes: list[str]


def applied_rules(lease: JSON | None) -> list[tuple[str, str]]:
    """The rules a session's Lease says it applied."""
    raw = ((lease or {}).get("metadata", {}).get("annotations") or {}).get(APPLIED_ANNOTATION)
    if not raw:
        return []
    return [(str(kind), str(name)) for kind, name in json.loads(raw)]


async def delete_applied_rules(
    kube: KubeObjects, namespace: str, lease: JSON | None, dry_run: bool = False
) -> list[str]:
    """Delete the rules recorded on `lease` (those still labelled as localmesh's)."""
    done = []
    for kind, name in applied_rules(lease):
        try:
            obj = await kube.get(kind, namespace, name)
        except KubeError:
            continue  # the kind is gone with its CRD: so are its objects
        labels = (obj or {}).get("metadata", {}).get("labels") or {}
        if obj is None or labels.get(m.MANAGED_BY_LABEL) != m.MANAGER:
            continue
        if dry_run or await kube.delete(kind, namespace, name):
            done.append(f"{kind} {namespace}/{name}")
    return done


async def delete_shadow_service(
    kube: KubeObjects, namespace: str, name: str, dry_run: bool = False
) -> list[str]:
    """A session's shadow Service (named as the session), when localmesh made it."""
    obj = await kube.get("Service", namespace, name)
    labels = (obj or {}).get("metadata", {}).get("labels") or {}
    if obj is None or labels.get(m.SESSION_LABEL) != name:
        return []
    if dry_run or await kube.delete("Service", namespace, name):
        return [f"Service {namespace}/{name}"]
    return []


def with_manual_session(service: JSON, name: str, dead: set[str]) -> JSON:
    """`service` listing manual session `name` (sessions in `dead` dropped); a MeshError
    while auto mode meshes it. Only annotations change: the selector stays the user's."""
    state = mesh_state(service)
    where = f"{service['metadata'].get('namespace')}/{service['metadata']['name']}"
    if (state.mode or MODE) != MODE or state.original_selector is not None:
        raise MeshError(
            f"service {where} is meshed in {state.mode or 'auto'} mode; manual mode cannot "
            "join it (`localmesh mesh clean` removes sessions that are gone)"
        )
    names = [n for n in state.sessions if n not in dead and n != name]
    changed = copy.deepcopy(service)
    notes = changed["metadata"].setdefault("annotations", {})
    notes[m.SESSIONS_ANNOTATION] = ",".join([*names, name])
    notes[m.MODE_ANNOTATION] = MODE
    return changed


def without_manual_sessions(service: JSON, gone: set[str]) -> JSON | None:
    """`service` without the manual sessions in `gone`; the annotations go with the last."""
    state = mesh_state(service)
    if state.mode != MODE or state.original_selector is not None:
        return None  # not meshed in manual mode: nothing of ours
    names = [n for n in state.sessions if n not in gone]
    changed = copy.deepcopy(service)
    notes = changed["metadata"]["annotations"]
    if names:
        notes[m.SESSIONS_ANNOTATION] = ",".join(names)
    else:
        notes.pop(m.SESSIONS_ANNOTATION, None)
        notes.pop(m.MODE_ANNOTATION, None)
        if not notes:
            del changed["metadata"]["annotations"]
    return changed


async def release_manual_sessions(
    kube: KubeObjects, namespace: str, service: str, gone: set[str], dry_run: bool = False
) -> list[str]:
    """CAS-remove `gone` and the dead manual sessions from `service`'s annotations; the
    names removed (or, with `dry_run`, that would be)."""
    current = await kube.get("Service", namespace, service)
    if current is None or mesh_state(current).mode != MODE:
        return []
    drop = gone | await dead_sessions(kube, namespace, current)
    if dry_run:
        before, after = current, without_manual_sessions(current, drop) or current
    else:
        before, after = await cas_service(
            kube, namespace, service, lambda svc: without_manual_sessions(svc, drop)
        )
    return sorted(set(mesh_state(before).sessions) - set(mesh_state(after).sessions))


def _not_served(with_shadow_service: bool) -> str:
    also = (
        ", nor Gateway API's HTTPRoute (gateway.networking.k8s.io/v1)"
        if with_shadow_service
        else ""
    )
    return (
        "the cluster does not serve networking.istio.io/v1 DestinationRule and "
        f"VirtualService: Istio's CRDs are not installed{also}; nothing was changed: drop "
        "--apply to print the rules only"
    )


class ManualSession(MeshSession):
    """One developer's manual-mode session: Lease, Secret, shadow pod (and shadow Service);
    never the Service itself."""

    def __init__(
        self,
        kube: KubeObjects,
        options: MeshOptions,
        *,
        selector_labels: bool = True,
        with_shadow_service: bool = False,
        apply: bool = False,
    ) -> None:
        super().__init__(kube, options)
        self.selector_labels = selector_labels
        self.apply = apply
        self.applied: list[tuple[str, str]] = []
        # Without the selector labels the shadow is no endpoint of the Service: rules can
        # reach it only through a Service of its own.
        self.with_shadow_service = with_shadow_service or not selector_labels
        self.manual: ManualJoined | None = None  # set by join()
        self.claimed = False  # this session is listed on the Service
        # The kinds `--apply` creates, chosen by what the cluster serves (rule_kinds()).
        self.apply_kinds: tuple[str, ...] | None = None

    def permissions(self) -> list[Permission]:
        o = self.options
        wanted = [
            Permission("get", "services", name=o.service),
            # the claim: the sessions and mode annotations
            Permission("update", "services", name=o.service),
            *session_permissions(),
        ]
        if self.with_shadow_service:
            wanted += [Permission(v, "services") for v in ("get", "create", "delete")]
        if self.apply:
            wanted += [
                Permission(verb, KINDS[kind].plural, KINDS[kind].group)
                for kind in self.apply_kinds or ISTIO_KINDS
                for verb in ("get", "create", "delete")
            ]
        return wanted

    async def rule_kinds(self) -> tuple[str, ...]:
        """The kinds `--apply` creates: Istio's where its CRDs are installed, else (with a
        shadow Service) Gateway API's HTTPRoute; a MeshError, before anything is changed,
        when the cluster serves neither."""
        if self.apply_kinds is None:
            served = dict(
                zip(
                    (*ISTIO_KINDS, "HTTPRoute"),
                    await asyncio.gather(
                        *(self.kube.serves(k) for k in (*ISTIO_KINDS, "HTTPRoute"))
                    ),
                    strict=True,
                )
            )
            if all(served[k] for k in ISTIO_KINDS):
                self.apply_kinds = ISTIO_KINDS
            elif self.with_shadow_service and served["HTTPRoute"]:
                self.apply_kinds = ("HTTPRoute",)
            else:
                raise MeshError(_not_served(self.with_shadow_service))
        return self.apply_kinds

    async def missing_permissions(self) -> list[str]:
        o = self.options
        if self.apply:
            await self.rule_kinds()

        async def allowed(p: Permission) -> bool:
            resource, _, sub = p.resource.partition("/")
            return await self.kube.can_i(
                p.verb, resource, o.namespace, group=p.group, name=p.name, subresource=sub or None
            )

        wanted = self.permissions()
        answers = await asyncio.gather(*(allowed(p) for p in wanted))
        return [p.can_i(o.namespace) for p, ok in zip(wanted, answers, strict=True) if not ok]

    async def join_manual(self) -> ManualJoined:
        o = self.options
        if o.mode != MODE:
            raise MeshError(f"a manual session needs --mode manual, not {o.mode}")
        mark = mark_label(o.mark)
        checked = await self.check()
        selector: dict[str, str] = dict(checked.service["spec"]["selector"])
        spec = m.SessionSpec(
            namespace=o.namespace,
            service=o.service,
            session_id=o.session_id,
            header=o.mark.key,
            value=o.mark.value,
            slug=o.mark.slug,
            holder=o.holder,
            ports=tuple(checked.ports),
            image=o.image,
            mode=MODE,
        )
        labels = shadow_labels(
            o.service, spec.name, selector if self.selector_labels else None, mark
        )
        pods = await self.kube.list("Pod", o.namespace, m.label_selector(selector))
        notes: list[str] = []
        cluster: rules.ClusterSubset | None = None
        if self.selector_labels:
            try:
                cluster = rules.cluster_subset(selector, pods, labels)
            except rules.RulesError as exc:
                raise MeshError(f"service {self.where}: {exc}") from None
            if cluster.note:
                notes.append(f"note: {cluster.note}")
        shadow_svc = spec.name if self.with_shadow_service else None
        http_ports = rules.http_ports(checked.service)
        skipped = [p.remote for p in spec.ports if p.remote not in http_ports]
        if skipped:
            notes.append(
                "note: port(s) "
                + ", ".join(map(str, skipped))
                + " are not HTTP/gRPC (by name or appProtocol): no header rule for them"
            )
        rules_input = rules.RulesInput(
            namespace=o.namespace,
            service=o.service,
            header=o.mark.key,
            value=o.mark.value,
            slug=o.mark.slug,
            mark_labels=mark,
            ports=tuple(dict.fromkeys(p.remote for p in spec.ports)),
            http_ports=tuple(http_ports),
            cluster=cluster,
            shadow_service=shadow_svc,
        )
        port_names = {p.number: p.name for p in checked.router_ports if p.name}
        self.spec = spec
        secret = new_secret()
        created: list[str] = []
        try:
            # The Lease first, as in auto mode: `clean` removes a session's objects only
            # once its Lease is gone or expired.
            lease = m.session_lease(spec, duration=o.lease_seconds)
            self._lease = await self.kube.create("Lease", o.namespace, lease)
            created.append(f"Lease {o.namespace}/{spec.name}")
            self._renewer = asyncio.create_task(self._renew(), name=f"renew {spec.name}")
            # The claim: one compare-and-swap with auto mode's joins (see membership).
            dead = await dead_sessions(self.kube, o.namespace, checked.service)
            await cas_service(
                self.kube,
                o.namespace,
                o.service,
                lambda svc: with_manual_session(svc, spec.name, dead),
            )
            self.claimed = True
            await self.kube.create("Secret", o.namespace, m.tunnel_secret(spec, secret))
            created.append(f"Secret {o.namespace}/{spec.name}")
            if shadow_svc is not None:
                await self.kube.create("Service", o.namespace, shadow_service(spec))
                created.append(f"Service {o.namespace}/{spec.name} (selects only the shadow)")
            pod = manual_shadow_pod(spec, labels, port_names)
            await self.kube.create("Pod", o.namespace, pod)
            created.append(f"Pod {o.namespace}/{spec.name} (shadow)")
            # Running, not Ready: this machine's tunnel connects only after the join.
            await self._wait_shadow(spec)
            istio = rules.istio_rules(rules_input)
            http_routes = rules.http_routes(rules_input)
            if self.apply:
                kinds = await self.rule_kinds()
                created += await self._apply(istio if kinds == ISTIO_KINDS else http_routes)
        except BaseException:
            await asyncio.shield(self._rollback())
            raise
        joined = Joined(spec, secret, created, [], first=True)
        return ManualJoined(joined, labels, rules_input, istio, http_routes, notes)

    async def _record(self, applied: list[tuple[str, str]]) -> None:
        """Write `applied` on the Lease (racing only the renewer: retry on conflict)."""
        assert self.spec is not None
        o, name = self.options, self.spec.name
        for _ in range(LEASE_ATTEMPTS):
            lease = await self.kube.get("Lease", o.namespace, name)
            if lease is None:
                raise MeshError(f"the session's Lease {o.namespace}/{name} was deleted")
            notes = lease["metadata"].setdefault("annotations", {})
            notes[APPLIED_ANNOTATION] = json.dumps([list(a) for a in applied])
            try:
                self._lease = await self.kube.replace("Lease", o.namespace, name, lease)
                return
            except Conflict:
                continue
        raise MeshError(f"could not record the applied rules on Lease {o.namespace}/{name}")

    async def _apply(self, objects: list[JSON]) -> list[str]:
        """Create the rules, each recorded on the Lease before it is created."""
        o, done = self.options, []
        for obj in objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            await self._record([*self.applied, (kind, name)])
            self.applied.append((kind, name))
            try:
                await self.kube.create(kind, o.namespace, obj)
            except Conflict:
                self.applied.pop()  # someone else's: never removed by this session
                raise MeshError(
                    f"{kind} {o.namespace}/{name} already exists (another session with the "
                    "same mark?); apply the printed rules by hand, or choose another mark"
                ) from None
            except NotFound:  # the CRD went away since rule_kinds() saw it
                self.applied.pop()
                raise MeshError(
                    f"the cluster no longer serves {obj['apiVersion']} {kind}; nothing was "
                    "applied: drop --apply to print the rules only"
                ) from None
            done.append(f"{kind} {o.namespace}/{name} (applied)")
        return done

    async def join(self) -> Joined:
        self.manual = await self.join_manual()
        return self.manual.joined

    async def leave(self) -> LeaveResult:
        """Remove this session's objects; the Service was never changed."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        if self.spec is None:
            return LeaveResult(False, [])
        o = self.options
        # The applied rules first: marked requests go back to the cluster's pods before the
        # shadow goes away; then the Lease that recorded them.
        recorded = {"metadata": {"annotations": {APPLIED_ANNOTATION: json.dumps(self.applied)}}}
        deleted = await delete_applied_rules(self.kube, o.namespace, recorded)
        deleted += await delete_session_objects(self.kube, o.namespace, self.spec.name)
        if self.with_shadow_service:
            deleted += await delete_shadow_service(self.kube, o.namespace, self.spec.name)
        if self.claimed:  # last: the Service stays claimed until the shadow is gone
            await release_manual_sessions(self.kube, o.namespace, o.service, {self.spec.name})
            self.claimed = False
        return LeaveResult(False, deleted)
