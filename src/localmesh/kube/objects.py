"""Plain reads and writes of Kubernetes objects as JSON dicts, for `localmesh mesh`.

    kube = KubeObjects.connect(kubeconfig=None, context=None)
    service = await kube.get("Service", "billing", "billing-api")        # None if absent
    await kube.replace("Service", "billing", "billing-api", changed)     # Conflict on 409
    await kube.delete("Deployment", ns, name, resource_version="42")     # precondition
    allowed = await kube.can_i("update", "services", "billing", name="billing-api")

Objects stay raw JSON, never model classes: a round trip through the client's models drops
fields its version does not know, and a Service localmesh writes back must keep every byte
it had. Each call runs a blocking request in a thread: the official client's (kubeconfig
credentials, `up` and `mesh`), or plain requests with the pod's ServiceAccount (the
in-cluster agents, localmesh.kube.incluster, which never load the client).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any, Protocol

from localmesh.errors import KubeError
from localmesh.kube.access import ClusterAccess, load_access
from localmesh.kube.failures import StatusError, credentials_refused, describe, status_message
from localmesh.kube.targets import JSON

REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)


class Requests(Protocol):
    """How KubeObjects sends one request: (status, reason, body) back, or an exception
    (connection, TLS) for `describe` to explain."""

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        body: Any,
        timeout: tuple[float, float],
    ) -> tuple[int, str, bytes]: ...

    def close(self) -> None: ...


class ClientRequests:
    """Requests through the official client's ApiClient (it follows credential reloads)."""

    def __init__(self, access: ClusterAccess) -> None:
        self._api: Any = access.api_client()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        body: Any,
        timeout: tuple[float, float],
    ) -> tuple[int, str, bytes]:
        serialized = self._api.param_serialize(
            method,
            path,
            query_params=query,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(
            serialized[0], serialized[1], serialized[2], serialized[3], _request_timeout=timeout
        )
        return response.status, str(response.reason or ""), response.read() or b""

    def close(self) -> None:
        self._api.close()


class Conflict(KubeError):
    """409: the object changed since it was read, already exists, or a precondition failed."""


class NotFound(KubeError):
    """404 on a write: the object (or its namespace) is gone."""


@dataclass(frozen=True)
class Kind:
    prefix: str  # /api/v1 or /apis/<group>/<version>
    plural: str
    group: str  # "" for the core group (as RBAC names it)

    @property
    def api_version(self) -> str:
        return self.prefix.removeprefix("/api/").removeprefix("/apis/")

    def path(self, namespace: str | None, name: str | None = None) -> str:
        where = f"/namespaces/{namespace}" if namespace else ""
        return f"{self.prefix}{where}/{self.plural}" + (f"/{name}" if name else "")


KINDS: dict[str, Kind] = {
    "Namespace": Kind("/api/v1", "namespaces", ""),  # cluster-scoped: namespace None
    "Service": Kind("/api/v1", "services", ""),
    "Pod": Kind("/api/v1", "pods", ""),
    "Secret": Kind("/api/v1", "secrets", ""),
    "ServiceAccount": Kind("/api/v1", "serviceaccounts", ""),
    "Event": Kind("/api/v1", "events", ""),
    "Deployment": Kind("/apis/apps/v1", "deployments", "apps"),
    "Role": Kind("/apis/rbac.authorization.k8s.io/v1", "roles", "rbac.authorization.k8s.io"),
    "RoleBinding": Kind(
        "/apis/rbac.authorization.k8s.io/v1", "rolebindings", "rbac.authorization.k8s.io"
    ),
    "Lease": Kind("/apis/coordination.k8s.io/v1", "leases", "coordination.k8s.io"),
    "EndpointSlice": Kind("/apis/discovery.k8s.io/v1", "endpointslices", "discovery.k8s.io"),
    # Istio's routing rules, applied by `mesh --mode manual --apply`
    "DestinationRule": Kind(
        "/apis/networking.istio.io/v1", "destinationrules", "networking.istio.io"
    ),
    "VirtualService": Kind(
        "/apis/networking.istio.io/v1", "virtualservices", "networking.istio.io"
    ),
    # Gateway API's, applied with a shadow Service where Istio's are not served
    "HTTPRoute": Kind(
        "/apis/gateway.networking.k8s.io/v1", "httproutes", "gateway.networking.k8s.io"
    ),
}


def context_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig context, which kubectl uses without -n."""
    from kubernetes import config as k8s_config

    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        contexts, active = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=path.split(os.pathsep)[0]
        )
    except Exception:
        return "default"
    if context:
        active = next((c for c in contexts or [] if c.get("name") == context), active)
    return str((active or {}).get("context", {}).get("namespace") or "default")


class KubeObjects:
    """Get, list, create, replace and delete objects of the KINDS, and ask what is allowed."""

    def __init__(self, access: ClusterAccess, requests: Requests | None = None) -> None:
        self.access = access
        self._api: Requests = requests if requests is not None else ClientRequests(access)

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeObjects:
        return cls(load_access(kubeconfig, context))

    def _request(
        self, method: str, path: str, query: list[tuple[str, str]] | None = None, body: Any = None
    ) -> JSON:
        """One request; when the credentials are refused (401/403, a TLS failure) and the
        kubeconfig says something new, once more with what it says now."""
        seen = self.access.generation
        try:
            return self._request_once(method, path, query, body)
        except (_Status, _Refused) as exc:
            if isinstance(exc, _Status) and exc.status not in (401, 403):
                raise
            if not self.access.reload(seen):
                raise
        return self._request_once(method, path, query, body)

    def _request_once(
        self, method: str, path: str, query: list[tuple[str, str]] | None, body: Any
    ) -> JSON:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            status, reason, data = self._api.request(
                method, path, query=query or [], headers=headers, body=body, timeout=REQUEST_TIMEOUT
            )
        except Exception as exc:
            kind = _Refused if credentials_refused(exc) else KubeError
            raise kind(describe(exc, self.access.server, self.access.context)) from None
        if status >= 300:
            error = StatusError(status, reason, data.decode(errors="replace"))
            if status == 409:
                raise Conflict(status_message(error))
            if status == 404 and method != "GET":
                raise NotFound(status_message(error))
            raise _Status(status, describe(error, self.access.server, self.access.context))
        result: JSON = json.loads(data) if data else {}
        return result

    async def _call(
        self, method: str, path: str, query: list[tuple[str, str]] | None = None, body: Any = None
    ) -> JSON:
        return await asyncio.to_thread(self._request, method, path, query, body)

    async def get(self, kind: str, namespace: str | None, name: str) -> JSON | None:
        try:
            return await self._call("GET", KINDS[kind].path(namespace, name))
        except _Status as exc:
            if exc.status == 404:
                return None
            raise

    async def serves(self, kind: str) -> bool:
        """Whether the server serves `kind` (its group-version lists it: a CRD's kinds are
        there only once the CRD is installed)."""
        k = KINDS[kind]
        try:
            body = await self._call("GET", k.prefix)
        except _Status as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == k.plural for r in body.get("resources") or [])

    async def list(self, kind: str, namespace: str | None, label_selector: str = "") -> list[JSON]:
        """Objects of `kind` in `namespace` (None: every namespace)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        body = await self._call("GET", KINDS[kind].path(namespace), query)
        items: list[JSON] = body.get("items") or []
        for item in items:  # list items carry neither; callers may create or replace them
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", KINDS[kind].api_version)
        return items

    async def create(self, kind: str, namespace: str, body: JSON) -> JSON:
        return await self._call("POST", KINDS[kind].path(namespace), body=body)

    async def replace(self, kind: str, namespace: str, name: str, body: JSON) -> JSON:
        """PUT: fails with Conflict unless body's resourceVersion is the current one."""
        return await self._call("PUT", KINDS[kind].path(namespace, name), body=body)

    async def delete(
        self,
        kind: str,
        namespace: str,
        name: str,
        resource_version: str | None = None,
        *,
        uid: str | None = None,
    ) -> bool:
        """Delete (in the background); False when it was already gone. With
        `resource_version`, only that version is deleted; with `uid`, only that object (not
        one created again under its name); Conflict otherwise."""
        options: JSON = {"apiVersion": "v1", "kind": "DeleteOptions"}
        options["propagationPolicy"] = "Background"
        preconditions = {"resourceVersion": resource_version, "uid": uid}
        if any(preconditions.values()):
            options["preconditions"] = {k: v for k, v in preconditions.items() if v}
        try:
            await self._call("DELETE", KINDS[kind].path(namespace, name), body=options)
        except NotFound:
            return False
        return True

    async def can_i(
        self,
        verb: str,
        resource: str,
        namespace: str,
        *,
        group: str = "",
        name: str | None = None,
        subresource: str | None = None,
    ) -> bool:
        """A SelfSubjectAccessReview: may the current user do this?"""
        attributes: JSON = {
            "verb": verb,
            "resource": resource,
            "group": group,
            "namespace": namespace,
        }
        if name:
            attributes["name"] = name
        if subresource:
            attributes["subresource"] = subresource
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        answer = await self._call(
            "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review
        )
        return bool(answer.get("status", {}).get("allowed"))

    async def close(self) -> None:
        await asyncio.to_thread(self._api.close)


class _Refused(KubeError):
    """The server refused the credentials or its certificate did not verify."""


class _Status(KubeError):
    """An error status other than 409 (404 is turned into None/False by the callers)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
