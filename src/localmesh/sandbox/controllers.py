"""The controllers the sandbox runs: deployment replicas and service endpoints.

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
    PODS,
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


def deployment_selector(deploy: Obj) -> LabelSelector:
    sel = deploy.get("spec", {}).get("selector") or {}
    reqs = [Requirement(k, "=", (v,)) for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
        reqs.append(Requirement(expr["key"], op[expr["operator"]], tuple(expr.get("values", []))))
    return LabelSelector(tuple(reqs))


def template_hash(deploy: Obj) -> str:
    text = json.dumps(deploy.get("spec", {}).get("template", {}), sort_keys=True)
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
        self._dirty_services: set[tuple[str, str]] = set()
        self._orphaned: set[str] = set()  # uids of deleted owners
        self._selector_index: dict[tuple[str, str, str], set[str]] = {}
        self._scheduled = False

    @property
    def store(self) -> Any:
        return self.cluster.store

    # ---- event intake --------------------------------------------------------------------
    def on_event(self, ev: StoredEvent) -> None:
        ns = ev.obj["metadata"].get("namespace", "")
        name = ev.obj["metadata"]["name"]
        if ev.rtype is DEPLOYMENTS:
            if ev.type == "DELETED":
                self._orphaned.add(ev.obj["metadata"]["uid"])
            else:
                self._dirty_deployments.add((ns, name))
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
            for ref in ev.obj["metadata"].get("ownerReferences", []):
                if ref.get("kind") == "Deployment":
                    self._dirty_deployments.add((ns, ref["name"]))
            labels = [ev.obj["metadata"].get("labels") or {}]
            if ev.old is not None and ev.old["metadata"].get("labels") != labels[0]:
                labels.append(ev.old["metadata"].get("labels") or {})
            for lab in labels:
                for svc_name in self._services_selecting(ns, lab):
                    self._dirty_services.add((ns, svc_name))
        else:
            return
        if not self._scheduled and (
            self._dirty_deployments or self._dirty_services or self._orphaned
        ):
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        orphaned, self._orphaned = self._orphaned, set()
        for uid in orphaned:
            self.cluster.collect_garbage(uid)
        deployments, self._dirty_deployments = self._dirty_deployments, set()
        for ns, name in sorted(deployments):
            self._reconcile_deployment(ns, name)
        services, self._dirty_services = self._dirty_services, set()
        for ns, name in sorted(services):
            self._reconcile_service(ns, name)

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

    # ---- deployments ---------------------------------------------------------------------
    def _reconcile_deployment(self, ns: str, name: str) -> None:
        deploy = self.store.peek(DEPLOYMENTS, ns, name)
        if deploy is None:
            return
        uid = deploy["metadata"]["uid"]
        want_hash = template_hash(deploy)
        match = (deploy["spec"].get("selector") or {}).get("matchLabels") or {}
        owned = [p for p in self.store.select(PODS, ns, match) if _owned_by(p, uid)]
        active = [p for p in owned if not p["metadata"].get("deletionTimestamp")]
        current = [
            p
            for p in active
            if p["metadata"].get("labels", {}).get(TEMPLATE_HASH_LABEL) == want_hash
        ]
        stale = [p for p in active if p not in current]
        for pod in stale:
            self.cluster.delete(PODS, ns, pod["metadata"]["name"])
        replicas = int(deploy["spec"].get("replicas", 1))
        if len(current) < replicas:
            for _ in range(replicas - len(current)):
                current.append(self._create_pod(deploy, want_hash))
        elif len(current) > replicas:
            # Scale down the unready and youngest pods first, as the ReplicaSet controller does.
            youngest_first = sorted(
                current, key=lambda p: p["metadata"]["creationTimestamp"], reverse=True
            )
            order = sorted(youngest_first, key=_pod_ready)  # stable: unready ones first
            for pod in order[: len(current) - replicas]:
                self.cluster.delete(PODS, ns, pod["metadata"]["name"])
                current.remove(pod)
        self._update_deployment_status(deploy, current)

    def _create_pod(self, deploy: Obj, pod_hash: str) -> Obj:
        template = copy.deepcopy(deploy["spec"].get("template", {}))
        md = template.get("metadata") or {}
        ns = deploy["metadata"]["namespace"]
        dname = deploy["metadata"]["name"]
        labels = {**(md.get("labels") or {}), TEMPLATE_HASH_LABEL: pod_hash}
        pod_meta: dict[str, Any] = {
            "namespace": ns,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": DEPLOYMENTS.api_version,
                    "kind": "Deployment",
                    "name": dname,
                    "uid": deploy["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if md.get("annotations"):
            pod_meta["annotations"] = dict(md["annotations"])
        while True:
            pod_meta["name"] = f"{dname}-{pod_hash}-{random_suffix()}"
            if self.store.peek(PODS, ns, pod_meta["name"]) is None:
                break
        obj = {"metadata": pod_meta, "spec": template.get("spec") or {}}
        return self.cluster.create(PODS, obj)

    def _update_deployment_status(self, deploy: Obj, pods: list[Obj]) -> None:
        ready = sum(1 for p in pods if _pod_ready(p))
        replicas = int(deploy["spec"].get("replicas", 1))
        status: dict[str, Any] = {
            "observedGeneration": deploy["metadata"].get("generation", 1),
            "replicas": len(pods),
            "updatedReplicas": len(pods),
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
