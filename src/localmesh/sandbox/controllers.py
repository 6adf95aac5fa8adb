"""The controllers the sandbox runs: deployments (through replica sets), service
endpoints and every namespace's default service account.

Both are level-triggered: store events mark objects dirty and one flush per event-loop
turn recomputes them, writing only what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
from typing import TYPE_CHECKING, Any

from localmesh.sandbox import errors
from localmesh.sandbox.objects import random_suffix
from localmesh.sandbox.resources import (
    DEPLOYMENTS,
    ENDPOINTS,
    ENDPOINTSLICES,
    NAMESPACES,
    PODS,
    REPLICASETS,
    SERVICEACCOUNTS,
    SERVICES,
)
from localmesh.sandbox.selectors import LabelSelector, Requirement
from localmesh.sandbox.store import Obj, StoredEvent, now_rfc3339

if TYPE_CHECKING:
    from localmesh.sandbox.cluster import Cluster

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"
MIRROR_CONTROLLER = "endpointslicemirroring-controller.k8s.io"
TEMPLATE_HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"


def _controller_ref(kind: str, api_version: str, owner: Obj) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def deployment_selector(deploy: Obj) -> LabelSelector:
    sel = deploy.get("spec", {}).get("selector") or {}
    reqs = [Requirement(k, "=", (v,)) for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
        reqs.append(Requirement(expr["key"], op[expr["operator"]], tuple(expr.get("values", []))))
    return LabelSelector(tuple(reqs))


def _pruned(value: Any) -> Any:
    """A template without empty values and the hash label: equal templates as the API
    server would default them (`kubectl rollout undo` sends `creationTimestamp: null`)."""
    if isinstance(value, dict):
        out = {k: _pruned(v) for k, v in value.items() if k != TEMPLATE_HASH_LABEL}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def template_hash(deploy: Obj) -> str:
    text = json.dumps(_pruned(deploy.get("spec", {}).get("template", {})), sort_keys=True)
    return (
        hashlib.sha256(text.encode())
        .hexdigest()[:10]
        .translate(str.maketrans("0123456789abcdef", "bcdfghjklmnpqrst"))
    )


def _owned_by(obj: Obj, uid: str) -> bool:
    return any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences", []))


def _pod_ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


class Controllers:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._dirty_deployments: set[tuple[str, str]] = set()
        self._dirty_replicasets: set[tuple[str, str]] = set()
        self._new_namespaces: set[str] = set()
        self._dirty_services: set[tuple[str, str]] = set()
        self._selector_index: dict[tuple[str, str, str], set[str]] = {}
        self._scheduled = False

    @property
    def store(self) -> Any:
        return self.cluster.store

    # ---- event intake --------------------------------------------------------------------
    def on_event(self, ev: StoredEvent) -> None:
        ns = ev.obj["metadata"].get("namespace", "")
        name = ev.obj["metadata"]["name"]
        if ev.rtype is DEPLOYMENTS or ev.rtype is REPLICASETS:
            if ev.type != "DELETED":  # what a deleted one owned is the collector's
                dirty = self._dirty_deployments if ev.rtype is DEPLOYMENTS else None
                (dirty if dirty is not None else self._dirty_replicasets).add((ns, name))
            if ev.rtype is REPLICASETS:
                self._dirty_deployments.update(self._owners(ev.obj, DEPLOYMENTS.kind))
        elif ev.rtype is NAMESPACES:
            if ev.type == "ADDED":
                self._new_namespaces.add(name)
        elif ev.rtype is SERVICEACCOUNTS:
            if ev.type == "DELETED" and name == "default":
                self._new_namespaces.add(ns)  # the controller puts it back
        elif ev.rtype is SERVICES:
            self._index_selector(ev.old, add=False)
            if ev.type != "DELETED":
                self._index_selector(ev.obj, add=True)
            self._dirty_services.add((ns, name))
        elif ev.rtype is ENDPOINTS:
            svc = self.store.peek(SERVICES, ns, name)
            if svc is not None and not svc["spec"].get("selector"):
                self._dirty_services.add((ns, name))  # mirror manual endpoints to slices
        elif ev.rtype is PODS:
            self._dirty_replicasets.update(self._owners(ev.obj, REPLICASETS.kind))
            labels = [ev.obj["metadata"].get("labels") or {}]
            if ev.old is not None and ev.old["metadata"].get("labels") != labels[0]:
                labels.append(ev.old["metadata"].get("labels") or {})
            for lab in labels:
                for svc_name in self._services_selecting(ns, lab):
                    self._dirty_services.add((ns, svc_name))
        else:
            return
        if not self._scheduled and (
            self._dirty_deployments
            or self._dirty_replicasets
            or self._dirty_services
            or self._new_namespaces
        ):
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        namespaces, self._new_namespaces = self._new_namespaces, set()
        for ns in sorted(namespaces):
            self._default_service_account(ns)
        deployments, self._dirty_deployments = self._dirty_deployments, set()
        for ns, name in sorted(deployments):
            self._reconcile_deployment(ns, name)
        replicasets, self._dirty_replicasets = self._dirty_replicasets, set()
        for ns, name in sorted(replicasets):
            self._reconcile_replicaset(ns, name)
        services, self._dirty_services = self._dirty_services, set()
        for ns, name in sorted(services):
            self._reconcile_service(ns, name)

    @staticmethod
    def _owners(obj: Obj, kind: str) -> list[tuple[str, str]]:
        ns = obj["metadata"].get("namespace", "")
        return [
            (ns, ref["name"])
            for ref in obj["metadata"].get("ownerReferences", [])
            if ref.get("kind") == kind
        ]

    def _default_service_account(self, ns: str) -> None:
        """Every namespace has a `default` ServiceAccount (the service account controller)."""
        namespace = self.store.peek(NAMESPACES, None, ns)
        if namespace is None or namespace["metadata"].get("deletionTimestamp"):
            return
        if self.store.peek(SERVICEACCOUNTS, ns, "default") is None:
            with contextlib.suppress(errors.ApiError):
                self.store.create(
                    SERVICEACCOUNTS, {"metadata": {"name": "default", "namespace": ns}}
                )

    def _index_selector(self, svc: Obj | None, add: bool) -> None:
        if svc is None:
            return
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        for k, v in (svc.get("spec", {}).get("selector") or {}).items():
            names = self._selector_index.setdefault((ns, k, v), set())
            if add:
                names.add(name)
            else:
                names.discard(name)

    def _services_selecting(self, ns: str, labels: dict[str, str]) -> set[str]:
        """Names of the services in `ns` whose selector matches `labels`."""
        candidates: set[str] = set()
        for k, v in labels.items():
            candidates |= self._selector_index.get((ns, k, v), set())
        out = set()
        for name in candidates:
            svc = self.store.peek(SERVICES, ns, name)
            selector = (svc or {}).get("spec", {}).get("selector")
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                out.add(name)
        return out

    # ---- deployments and replica sets ---------------------------------------------------
    def _reconcile_deployment(self, ns: str, name: str) -> None:
        """One ReplicaSet per pod template: the current one runs `replicas` pods, older
        ones are scaled to 0 (kept, as `kubectl rollout history` reads them)."""
        deploy = self.store.peek(DEPLOYMENTS, ns, name)
        if deploy is None or deploy["metadata"].get("deletionTimestamp"):
            return  # being deleted (in the foreground): its ReplicaSets go, none is made
        uid = deploy["metadata"]["uid"]
        want_hash = template_hash(deploy)
        replicas = int(deploy["spec"].get("replicas", 1))
        owned = [rs for rs in self.store.iter(REPLICASETS, ns) if _owned_by(rs, uid)]
        current = next(
            (
                rs
                for rs in owned
                if _pruned(rs["spec"].get("template")) == _pruned(deploy["spec"].get("template"))
            ),
            None,
        )
        revision = 1 + max(
            (
                int(rs["metadata"].get("annotations", {}).get(REVISION_ANNOTATION, "0"))
                for rs in owned
            ),
            default=0,
        )
        if current is None:
            current = self._create_replicaset(deploy, want_hash, replicas, revision)
        else:
            # An older template back in use (`kubectl rollout undo`) becomes the newest
            # revision, as the deployment controller numbers them.
            own = int(current["metadata"].get("annotations", {}).get(REVISION_ANNOTATION, "0"))
            newest = own if own == revision - 1 else revision
            if current["spec"].get("replicas") != replicas or own != newest:
                self._set_replicas(current, replicas, newest)
        self._annotate_revision(deploy, current)
        for rs in owned:
            if rs["metadata"]["uid"] != current["metadata"]["uid"] and rs["spec"].get("replicas"):
                self._set_replicas(rs, 0)
        pods = [
            p
            for rs in owned + ([current] if current not in owned else [])
            for p in self._pods_of(rs)
            if not p["metadata"].get("deletionTimestamp")
        ]
        updated = [p for p in pods if _owned_by(p, current["metadata"]["uid"])]
        self._update_deployment_status(deploy, pods, len(updated))

    def _create_replicaset(self, deploy: Obj, pod_hash: str, replicas: int, revision: int) -> Obj:
        template = copy.deepcopy(deploy["spec"].get("template", {}))
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), TEMPLATE_HASH_LABEL: pod_hash}
        selector = copy.deepcopy(deploy["spec"].get("selector") or {})
        selector["matchLabels"] = {
            **(selector.get("matchLabels") or {}),
            TEMPLATE_HASH_LABEL: pod_hash,
        }
        dname = deploy["metadata"]["name"]
        body = {
            "metadata": {
                "name": f"{dname}-{pod_hash}",
                "namespace": deploy["metadata"]["namespace"],
                "labels": dict(tmeta["labels"]),
                "annotations": {
                    REVISION_ANNOTATION: str(revision),
                    "deployment.kubernetes.io/desired-replicas": str(replicas),
                },
                "ownerReferences": [_controller_ref(DEPLOYMENTS.kind, "apps/v1", deploy)],
            },
            "spec": {"replicas": replicas, "selector": selector, "template": template},
        }
        try:
            return self.cluster.create(REPLICASETS, body)
        except errors.ApiError:
            # A leftover of the same name (say, owned by a deleted deployment): adopt it.
            old = self.store.get(
                REPLICASETS, body["metadata"]["namespace"], body["metadata"]["name"]
            )
            old["metadata"]["ownerReferences"] = body["metadata"]["ownerReferences"]
            old["spec"]["replicas"] = replicas
            adopted: Obj = self.store.update(REPLICASETS, old, check_version=False)
            return adopted

    def _annotate_revision(self, deploy: Obj, current: Obj) -> None:
        """The deployment carries its current revision (`kubectl rollout undo` patches it)."""
        ns, name = deploy["metadata"]["namespace"], deploy["metadata"]["name"]
        fresh = self.store.peek(DEPLOYMENTS, ns, name)
        rs = self.store.peek(REPLICASETS, ns, current["metadata"]["name"]) or current
        revision = rs["metadata"].get("annotations", {}).get(REVISION_ANNOTATION)
        if fresh is None or revision is None:
            return
        if fresh["metadata"].get("annotations", {}).get(REVISION_ANNOTATION) == revision:
            return
        new = copy.deepcopy(fresh)
        new["metadata"].setdefault("annotations", {})[REVISION_ANNOTATION] = revision
        with contextlib.suppress(errors.ApiError):
            self.store.update(DEPLOYMENTS, new, check_version=False)

    def _set_replicas(self, rs: Obj, replicas: int, revision: int | None = None) -> None:
        new = copy.deepcopy(rs)
        new["spec"]["replicas"] = replicas
        annotations = new["metadata"].setdefault("annotations", {})
        annotations["deployment.kubernetes.io/desired-replicas"] = str(replicas)
        if revision is not None:
            annotations[REVISION_ANNOTATION] = str(revision)
        with contextlib.suppress(errors.ApiError):
            self.cluster.replace(
                REPLICASETS,
                rs["metadata"]["namespace"],
                rs["metadata"]["name"],
                new,
                check_version=False,
            )

    def _pods_of(self, rs: Obj) -> list[Obj]:
        match = (rs["spec"].get("selector") or {}).get("matchLabels") or {}
        ns = rs["metadata"]["namespace"]
        return [
            p for p in self.store.select(PODS, ns, match) if _owned_by(p, rs["metadata"]["uid"])
        ]

    def _reconcile_replicaset(self, ns: str, name: str) -> None:
        rs = self.store.peek(REPLICASETS, ns, name)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        active = [p for p in self._pods_of(rs) if not p["metadata"].get("deletionTimestamp")]
        replicas = int(rs["spec"].get("replicas", 1))
        if len(active) < replicas:
            for _ in range(replicas - len(active)):
                active.append(self._create_pod(rs))
        elif len(active) > replicas:
            # Scale down the unready and youngest pods first, as the ReplicaSet controller does.
            youngest_first = sorted(
                active, key=lambda p: p["metadata"]["creationTimestamp"], reverse=True
            )
            order = sorted(youngest_first, key=_pod_ready)  # stable: unready ones first
            for pod in order[: len(active) - replicas]:
                self.cluster.delete(PODS, ns, pod["metadata"]["name"])
                active.remove(pod)
        ready = sum(1 for p in active if _pod_ready(p))
        status: dict[str, Any] = {
            "replicas": len(active),
            "fullyLabeledReplicas": len(active),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        if not ready:
            del status["readyReplicas"], status["availableReplicas"]
        if rs.get("status") != status:
            new = copy.deepcopy(rs)
            new["status"] = status
            with contextlib.suppress(errors.ApiError):
                self.store.update(REPLICASETS, new, check_version=False)

    def _create_pod(self, rs: Obj) -> Obj:
        template = copy.deepcopy(rs["spec"].get("template", {}))
        md = template.get("metadata") or {}
        ns = rs["metadata"]["namespace"]
        rs_name = rs["metadata"]["name"]
        pod_meta: dict[str, Any] = {
            "namespace": ns,
            "labels": dict(md.get("labels") or {}),
            "ownerReferences": [_controller_ref(REPLICASETS.kind, "apps/v1", rs)],
        }
        if md.get("annotations"):
            pod_meta["annotations"] = dict(md["annotations"])
        while True:
            pod_meta["name"] = f"{rs_name}-{random_suffix()}"
            if self.store.peek(PODS, ns, pod_meta["name"]) is None:
                break
        obj = {"metadata": pod_meta, "spec": template.get("spec") or {}}
        return self.cluster.create(PODS, obj)

    def _update_deployment_status(self, deploy: Obj, pods: list[Obj], updated: int) -> None:
        ready = sum(1 for p in pods if _pod_ready(p))
        replicas = int(deploy["spec"].get("replicas", 1))
        status: dict[str, Any] = {
            "observedGeneration": deploy["metadata"].get("generation", 1),
            "replicas": len(pods),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        if len(pods) - ready:
            status["unavailableReplicas"] = len(pods) - ready
        old = deploy.get("status", {})
        ts = now_rfc3339()

        def cond(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
            value = "True" if ok else "False"
            prev = next((c for c in old.get("conditions", []) if c["type"] == type_), None)
            since = prev["lastTransitionTime"] if prev and prev["status"] == value else ts
            return {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastUpdateTime": since,
                "lastTransitionTime": since,
            }

        available = ready >= replicas
        status["conditions"] = [
            cond(
                "Available",
                available,
                "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "Deployment has minimum availability."
                if available
                else "Deployment does not have minimum availability.",
            ),
            cond(
                "Progressing",
                True,
                "NewReplicaSetAvailable",
                f'Deployment "{deploy["metadata"]["name"]}" has successfully progressed.',
            ),
        ]
        if {k: v for k, v in old.items()} == status:
            return
        new = copy.deepcopy(deploy)
        new["status"] = status
        with contextlib.suppress(errors.ApiError):
            self.store.update(DEPLOYMENTS, new, check_version=False)

    # ---- endpoints -----------------------------------------------------------------------
    def _reconcile_service(self, ns: str, name: str) -> None:
        svc = self.store.peek(SERVICES, ns, name)
        slices_now = [
            s
            for s in self.store.iter(ENDPOINTSLICES, ns)
            if s["metadata"].get("labels", {}).get(SERVICE_NAME_LABEL) == name
        ]
        if svc is None:
            for s in slices_now:
                self._delete(ENDPOINTSLICES, ns, s["metadata"]["name"])
            ep = self.store.peek(ENDPOINTS, ns, name)
            if ep is not None:
                self._delete(ENDPOINTS, ns, name)
            return
        selector = svc["spec"].get("selector")
        if selector:
            groups = self._pod_groups(svc)
            self._write_endpoints(svc, groups)
            manager = SLICE_CONTROLLER
        else:
            groups = self._manual_groups(ns, name)
            manager = MIRROR_CONTROLLER
        self._write_slices(svc, groups, slices_now, manager)

    def _pod_groups(self, svc: Obj) -> dict[tuple[tuple[str, int, str], ...], list[dict[str, Any]]]:
        """Pods of a service grouped by their resolved ports (named targetPorts may differ)."""
        ns = svc["metadata"]["namespace"]
        selector = svc["spec"]["selector"]
        groups: dict[tuple[tuple[str, int, str], ...], list[dict[str, Any]]] = {}
        for pod in self.store.select(PODS, ns, selector):
            ip = pod.get("status", {}).get("podIP")
            if not ip:
                continue
            ports = []
            for sp in svc["spec"].get("ports") or []:
                target = sp.get("targetPort", sp.get("port"))
                if isinstance(target, str):
                    resolved = next(
                        (
                            p["containerPort"]
                            for c in pod["spec"].get("containers", [])
                            for p in c.get("ports") or []
                            if p.get("name") == target
                        ),
                        None,
                    )
                    if resolved is None:
                        continue
                    target = resolved
                ports.append((sp.get("name", ""), int(target), sp.get("protocol", "TCP")))
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            ready = _pod_ready(pod)
            groups.setdefault(tuple(ports), []).append(
                {
                    "ip": ip,
                    "ready": ready and not terminating,
                    "serving": ready,
                    "terminating": terminating,
                    "pod": pod,
                }
            )
        return groups

    def _manual_groups(
        self, ns: str, name: str
    ) -> dict[tuple[tuple[str, int, str], ...], list[dict[str, Any]]]:
        ep = self.store.peek(ENDPOINTS, ns, name)
        groups: dict[tuple[tuple[str, int, str], ...], list[dict[str, Any]]] = {}
        for subset in (ep or {}).get("subsets") or []:
            ports = tuple(
                (p.get("name", ""), int(p["port"]), p.get("protocol", "TCP"))
                for p in subset.get("ports") or []
            )
            bucket = groups.setdefault(ports, [])
            for addr, ready in [(a, True) for a in subset.get("addresses") or []] + [
                (a, False) for a in subset.get("notReadyAddresses") or []
            ]:
                bucket.append(
                    {
                        "ip": addr["ip"],
                        "ready": ready,
                        "serving": ready,
                        "terminating": False,
                        "pod": None,
                    }
                )
        return groups

    @staticmethod
    def _target_ref(pod: Obj) -> dict[str, Any]:
        return {
            "kind": "Pod",
            "namespace": pod["metadata"]["namespace"],
            "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
        }

    def _write_endpoints(
        self, svc: Obj, groups: dict[tuple[tuple[str, int, str], ...], list[dict[str, Any]]]
    ) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        subsets = []
        for ports, members in sorted(groups.items()):
            live = [m for m in members if not m["terminating"]]
            if not live:
                continue

            def addr(m: dict[str, Any]) -> dict[str, Any]:
                return {
                    "ip": m["ip"],
                    "nodeName": m["pod"]["spec"].get("nodeName", ""),
                    "targetRef": self._target_ref(m["pod"]),
                }

            subset: dict[str, Any] = {}
            ready = sorted((addr(m) for m in live if m["ready"]), key=lambda a: a["ip"])
            not_ready = sorted((addr(m) for m in live if not m["ready"]), key=lambda a: a["ip"])
            if ready:
                subset["addresses"] = ready
            if not_ready:
                subset["notReadyAddresses"] = not_ready
            subset["ports"] = [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]
            subsets.append(subset)
        labels = dict(svc["metadata"].get("labels") or {})
        if svc["spec"].get("clusterIP") == "None":
            labels["service.kubernetes.io/headless"] = ""
        body: Obj = {"metadata": {"name": name, "namespace": ns, "labels": labels}}
        if subsets:
            body["subsets"] = subsets
        self._put(ENDPOINTS, body, ("subsets",))

    def _write_slices(
        self,
        svc: Obj,
        groups: dict[tuple[tuple[str, int, str], ...], list[dict[str, Any]]],
        existing: list[Obj],
        manager: str,
    ) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        if not groups:
            groups = {(): []}
        wanted: set[str] = set()
        for ports, members in sorted(groups.items()):
            digest = hashlib.sha256(json.dumps(ports).encode()).hexdigest()[:5]
            slice_name = f"{name}-{digest}"
            wanted.add(slice_name)
            endpoints = []
            for m in sorted(members, key=lambda m: m["ip"]):
                ep: dict[str, Any] = {
                    "addresses": [m["ip"]],
                    "conditions": {
                        "ready": m["ready"],
                        "serving": m["serving"],
                        "terminating": m["terminating"],
                    },
                }
                if m["pod"] is not None:
                    ep["nodeName"] = m["pod"]["spec"].get("nodeName", "")
                    ep["targetRef"] = self._target_ref(m["pod"])
                endpoints.append(ep)
            labels = {
                **(svc["metadata"].get("labels") or {}),
                SERVICE_NAME_LABEL: name,
                MANAGED_BY_LABEL: manager,
            }
            if svc["spec"].get("clusterIP") == "None":
                labels["service.kubernetes.io/headless"] = ""
            body: Obj = {
                "metadata": {
                    "name": slice_name,
                    "namespace": ns,
                    "labels": labels,
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Service",
                            "name": name,
                            "uid": svc["metadata"]["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]
                if ports
                else None,
            }
            self._put(ENDPOINTSLICES, body, ("endpoints", "ports", "addressType"))
        for s in existing:
            if s["metadata"]["name"] not in wanted:
                self._delete(ENDPOINTSLICES, ns, s["metadata"]["name"])

    def _put(self, rtype: Any, body: Obj, fields: tuple[str, ...]) -> None:
        """Create or update a derived object; no write when nothing changed."""
        md = body["metadata"]
        old = self.store.peek(rtype, md["namespace"], md["name"])
        if old is None:
            self.store.create(rtype, {k: v for k, v in body.items() if v is not None})
            return
        same = all(old.get(f) == body.get(f) for f in fields) and old["metadata"].get(
            "labels"
        ) == md.get("labels")
        if same:
            return
        new = copy.deepcopy(old)
        for f in fields:
            if body.get(f) is None:
                new.pop(f, None)
            else:
                new[f] = body[f]
        new["metadata"]["labels"] = md.get("labels")
        if "ownerReferences" in md:
            new["metadata"]["ownerReferences"] = md["ownerReferences"]
        self.store.update(rtype, new, check_version=False)

    def _delete(self, rtype: Any, ns: str, name: str) -> None:
        with contextlib.suppress(errors.ApiError):
            self.store.delete(rtype, ns, name)
