"""The cluster behind the API server: store, controllers, kubelet, and the write paths
(create, replace, patch, delete) with the API server's defaults and validation."""

from __future__ import annotations

import contextlib
import copy
import secrets
from typing import Any

import structlog

from localmesh.sandbox import errors
from localmesh.sandbox.controllers import Controllers
from localmesh.sandbox.crds import CustomResources
from localmesh.sandbox.dns import ClusterDNS
from localmesh.sandbox.faults import Faults
from localmesh.sandbox.garbage import PROPAGATION_POLICIES, GarbageCollector
from localmesh.sandbox.ips import ServiceIPAllocator
from localmesh.sandbox.kubelet import NODE_NAME, Kubelet
from localmesh.sandbox.objects import prepare_create, validate_change, validate_update
from localmesh.sandbox.patch import apply_patch
from localmesh.sandbox.resources import (
    EVENTS,
    NAMESPACES,
    NODES,
    PODS,
    SERVICES,
    TYPES,
    ResourceType,
)
from localmesh.sandbox.serviceproxy import ServiceProxy
from localmesh.sandbox.store import Obj, Store, StoredEvent, now_rfc3339
from localmesh.sandbox.tasks import TaskSet

log = structlog.get_logger(__name__)


class Cluster:
    def __init__(self, history_size: int = 20000) -> None:
        self.store = Store(history_size=history_size)
        self.tasks = TaskSet("sandbox")
        self.service_ips = ServiceIPAllocator()
        self.faults = Faults(self)
        self.kubelet = Kubelet(self)
        self.controllers = Controllers(self)
        self.garbage = GarbageCollector(self)
        self.dns = ClusterDNS(self.store)
        self.service_proxy = ServiceProxy(
            self.store,
            self.tasks,
            self.service_ips,
            lambda svc, reason, message: self.record_event(
                svc, reason, message, type_="Warning", component="kube-proxy"
            ),
            lag=lambda: self.faults.proxy_lag,
        )
        self.store.subscribe(self._on_event)
        self.crds = CustomResources(self.store)

    def _on_event(self, ev: StoredEvent) -> None:
        self.kubelet.on_event(ev)
        self.controllers.on_event(ev)
        self.garbage.on_event(ev)
        self.service_proxy.on_event(ev)

    def bootstrap(self, kube_version: str = "1.32") -> None:
        """The objects every cluster has: default namespaces and one node."""
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            if self.store.peek(NAMESPACES, None, ns) is None:
                self.create(NAMESPACES, {"metadata": {"name": ns}})
        if self.store.peek(NODES, None, NODE_NAME) is None:
            self.store.create(
                NODES,
                {
                    "metadata": {
                        "name": NODE_NAME,
                        "labels": {
                            "kubernetes.io/hostname": NODE_NAME,
                            "kubernetes.io/os": "linux",
                        },
                    },
                    "spec": {},
                    "status": {
                        "conditions": [
                            {"type": "Ready", "status": "True", "reason": "KubeletReady"}
                        ],
                        "addresses": [
                            {"type": "InternalIP", "address": "127.0.0.1"},
                            {"type": "Hostname", "address": NODE_NAME},
                        ],
                        "nodeInfo": {
                            "kubeletVersion": f"v{kube_version}"
                            + (".0" if kube_version.count(".") == 1 else ""),
                            "operatingSystem": "linux",
                            "architecture": "amd64",
                            "containerRuntimeVersion": "localmesh-sandbox",
                        },
                    },
                },
            )

    def record_event(
        self,
        obj: Obj,
        reason: str,
        message: str,
        *,
        type_: str = "Normal",
        component: str = "kubelet",
    ) -> None:
        """Record a core/v1 Event about `obj`, as `kubectl describe` lists them."""
        md = obj["metadata"]
        ns = md.get("namespace", "default")
        if self.store.peek(NAMESPACES, None, ns) is None:
            return
        now = now_rfc3339()
        event = {
            "metadata": {"name": f"{md['name']}.{secrets.token_hex(8)}", "namespace": ns},
            "involvedObject": {
                "kind": obj.get("kind", ""),
                "apiVersion": obj.get("apiVersion", ""),
                "namespace": ns,
                "name": md["name"],
                "uid": md.get("uid", ""),
                "resourceVersion": md.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": component, "host": NODE_NAME},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": component,
            "reportingInstance": NODE_NAME,
        }
        with contextlib.suppress(errors.ApiError):
            self.store.create(EVENTS, event)

    async def shutdown(self) -> None:
        await self.service_proxy.close()
        await self.tasks.close()
        await self.kubelet.shutdown()

    # ---- write paths ---------------------------------------------------------------------
    def create(self, rtype: ResourceType, obj: Obj, namespace: str | None = None) -> Obj:
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        if rtype.namespaced:
            body_ns = md.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            md["namespace"] = namespace or body_ns or "default"
        obj = prepare_create(rtype, obj, self.service_ips.allocate)
        if rtype is SERVICES:
            self.service_ips.admit(obj, None)
        if rtype.namespaced:
            ns = self.store.peek(NAMESPACES, None, md["namespace"])
            if ns is not None and ns["metadata"].get("deletionTimestamp"):
                raise errors.ApiError(
                    403,
                    "Forbidden",
                    f'{rtype.plural} "{md["name"]}" is forbidden: unable to create new content '
                    f"in namespace {md['namespace']} because it is being terminated",
                )
        return self.store.create(rtype, obj)

    def replace(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        obj: Obj,
        subresource: str | None = None,
        *,
        check_version: bool = True,
    ) -> Obj:
        if not isinstance(obj, dict):
            raise errors.bad_request("the request body must be a JSON object")
        current = self.store.peek(rtype, namespace, name)
        if current is None:
            raise errors.not_found(rtype.plural, name, rtype.group)
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        if md.get("name", name) != name:
            raise errors.bad_request(
                f"the name of the object ({md.get('name')}) does not match the name on the "
                f"URL ({name})"
            )
        md["name"] = name
        if rtype.namespaced:
            md["namespace"] = namespace
        if subresource == "status":
            new = copy.deepcopy(current)
            new["status"] = obj.get("status", {})
            new["metadata"]["resourceVersion"] = md.get("resourceVersion", "")
            obj = new
        elif rtype.has_status:
            obj["status"] = copy.deepcopy(current.get("status", {}))
        validate_update(rtype, obj)
        validate_change(rtype, current, obj)
        if rtype is PODS:
            self._check_pod_update(current, obj)
        if rtype is SERVICES:
            self.service_ips.admit(obj, current)
        return self.store.update(rtype, obj, check_version=check_version)

    @staticmethod
    def _check_pod_update(current: Obj, new: Obj) -> None:
        # Pod specs are immutable apart from images and a few fields.
        def strip(spec: dict[str, Any]) -> dict[str, Any]:
            spec = copy.deepcopy(spec)
            for c in spec.get("containers", []):
                c.pop("image", None)
            spec.pop("activeDeadlineSeconds", None)
            spec.pop("tolerations", None)
            return spec

        if strip(current.get("spec", {})) != strip(new.get("spec", {})):
            raise errors.invalid(
                "Pod",
                current["metadata"]["name"],
                [
                    (
                        "spec",
                        "Forbidden: pod updates may not change fields other than "
                        "`spec.containers[*].image`, `spec.activeDeadlineSeconds` or "
                        "`spec.tolerations` (only additions to existing tolerations)",
                    )
                ],
            )

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> Obj:
        current = self.store.get(rtype, namespace, name)
        patched = apply_patch(content_type, current, body)
        if not isinstance(patched, dict):
            raise errors.bad_request("the patch did not produce an object")
        want_rv = patched.get("metadata", {}).get("resourceVersion")
        check = want_rv != current["metadata"]["resourceVersion"]
        return self.replace(rtype, namespace, name, patched, subresource, check_version=check)

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        grace: int | None = None,
        propagation: str | None = None,
    ) -> Obj:
        """Delete an object. Running pods terminate gracefully unless `grace` is 0. What it
        owns is garbage collected (`propagation` Orphan: released instead)."""
        obj = self.store.peek(rtype, namespace, name)
        if obj is None:
            raise errors.not_found(rtype.plural, name, rtype.group)
        if propagation is not None and propagation not in PROPAGATION_POLICIES:
            raise errors.bad_request(
                f"propagationPolicy {propagation!r}: use one of " + ", ".join(PROPAGATION_POLICIES)
            )
        if propagation == "Orphan":
            self.garbage.orphan(obj["metadata"]["uid"])
        elif propagation == "Foreground" and self.garbage.has_dependents(obj["metadata"]["uid"]):
            if obj["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(obj)  # already waiting for its dependents
            return self.garbage.delete_in_foreground(rtype, obj)
        if rtype is PODS:
            if grace is None:
                grace = int(obj["spec"].get("terminationGracePeriodSeconds", 30))
            running = obj["metadata"]["uid"] in self.kubelet.runtimes and obj.get("status", {}).get(
                "podIP"
            )
            if grace > 0 and running:
                return self.store.mark_deleting(rtype, namespace, name, grace)
            return self.store.delete(rtype, namespace, name)
        if rtype is NAMESPACES:
            return self._delete_namespace(name)
        deleted = self.store.delete(rtype, namespace, name)
        # The collector queued the owner as the store told of its delete: with no delay,
        # what it owned is gone before this call returns (a delete's own cascade).
        self.garbage.flush()
        return deleted

    def _delete_namespace(self, name: str) -> Obj:
        for rtype in (*TYPES, *self.crds.types()):
            if rtype.namespaced:
                for obj in list(self.store.iter(rtype, name)):
                    with contextlib.suppress(errors.ApiError):
                        self.store.delete(rtype, name, obj["metadata"]["name"])
        return self.store.delete(NAMESPACES, None, name)
