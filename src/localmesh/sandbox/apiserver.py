"""The HTTPS front of the sandbox: Kubernetes REST paths, auth, watches, port-forward."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from localmesh.sandbox import errors, openapi, protobodies, protowire, rbac, resources, tables
from localmesh.sandbox.cluster import Cluster
from localmesh.sandbox.execauth import ExecCredentials
from localmesh.sandbox.rbac import Attributes, Identities, User
from localmesh.sandbox.resources import BY_PATH, PODS, ResourceType
from localmesh.sandbox.selectors import FieldSelector, LabelSelector, Selector
from localmesh.sandbox.store import Watcher

log = structlog.get_logger(__name__)

# Paths anyone may read, as with the system:public-info-viewer role of a real cluster.
PUBLIC_PATHS = frozenset({"/version", "/healthz", "/readyz", "/livez"})
ANONYMOUS = User("system:anonymous", ("system:unauthenticated",))
_STOP: tuple[str, dict[str, Any]] = ("_STOP", {})  # queued to end a watch on shutdown


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def status_response(err: errors.ApiError) -> web.Response:
    return _json(err.status(), err.code)


def _success(rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": obj["metadata"]["name"],
            "kind": rtype.plural,
            "uid": obj["metadata"].get("uid", ""),
            **({"group": rtype.group} if rtype.group else {}),
        },
    }


@dataclass(frozen=True)
class Route:
    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


class ApiServer:
    def __init__(
        self,
        cluster: Cluster,
        *,
        tokens: dict[str, str],
        readonly_tokens: dict[str, str] | None = None,
        identities: Identities | None = None,
        kube_version: str = "1.32",
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.cluster = cluster
        self.identities = identities or Identities(cluster.store)
        for token, name in tokens.items():
            self.identities.add_static(token, User(name, (rbac.MASTERS, rbac.AUTHENTICATED)))
        for token, name in (readonly_tokens or {}).items():
            self.identities.add_static(token, User(name, (rbac.AUTHENTICATED,), read_only=True))
        self.kube_version = kube_version
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._watchers: set[Watcher] = set()
        self.exec_credentials: ExecCredentials | None = None  # short-lived plugin tokens
        self.requests: list[tuple[str, str]] = []  # (method, path) of recent requests
        self.unknown_paths: list[str] = []

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(
            runner, self.host, self.port, ssl_context=self.ssl_context, reuse_address=True
        )
        await site.start()
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        self._runner = runner
        log.debug("sandbox API server listening", url=self.url)

    async def stop(self) -> None:
        self._stopping.set()  # ends every watch stream
        for w in list(self._watchers):
            w.queue.put_nowait(_STOP)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            server = runner.server
            transports = [
                h.transport for h in (server.connections if server else []) if h.transport
            ]
            await runner.cleanup()
            # A TLS close waits for the peer's close_notify; idle pooled clients never send
            # it, so drop whatever is still open.
            for transport in transports:
                transport.abort()

    async def restart(self, downtime: float = 0.0) -> None:
        await self.stop()
        if downtime > 0:
            await asyncio.sleep(downtime)  # the outage a test asked for
        await self.start()

    # ---- dispatch ------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        self.requests.append((request.method, request.path_qs))
        del self.requests[:-500]
        try:
            user = self._authenticate(request, path)
            return await self._serve(request, path, user)
        except errors.ApiError as err:
            return status_response(err)

    def _authenticate(self, request: web.Request, path: str) -> User:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        user = self.identities.authenticate(token)
        if user is None and self.exec_credentials is not None and token:
            user = self.exec_credentials.authenticate(token)
        if user is None:
            if path in PUBLIC_PATHS:
                return ANONYMOUS
            raise errors.unauthorized()
        as_user = request.headers.get("Impersonate-User")
        if as_user:
            user = rbac.impersonate(user, as_user, request.headers.getall("Impersonate-Group", []))
        return user

    @staticmethod
    def _attributes(request: web.Request, route: Route) -> Attributes:
        """The RBAC verb and resource of a request, as the API server's request info has it."""
        method, name = request.method, route.name
        if method == "GET":
            if name is None:
                watch = request.query.get("watch") in ("1", "true", "True")
                verb = "watch" if watch else "list"
                # A list or watch of one object by name is authorized for that name, so
                # resourceNames rules allow `kubectl get lease mine -w`.
                selector = request.query.get("fieldSelector", "")
                for op in ("metadata.name==", "metadata.name="):
                    if selector.startswith(op) and "," not in selector:
                        name = selector[len(op) :]
                        break
            else:
                verb = "get"
        elif method == "DELETE":
            verb = "delete" if name is not None else "deletecollection"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
        return Attributes(
            verb,
            route.rtype.group,
            route.rtype.plural,
            route.namespace,
            name,
            route.subresource,
        )

    async def _serve(self, request: web.Request, path: str, user: User) -> web.StreamResponse:
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(self._version())
        if path == "/api":
            return _json(resources.api_versions(f"{self.host}:{self.port}"))
        crds = self.cluster.crds
        if path == "/apis":
            return _json(crds.api_group_list(resources.api_group_list()))
        if path == "/openapi/v2":
            # An empty protobuf Document: kubectl before 1.28 fetches it for `apply` and
            # then uses the schemas compiled into it.
            return web.Response(body=b"", content_type=openapi.V2_PROTOBUF)
        if path == "/openapi/v3":
            return _json(openapi.root(crds.types()))
        if path.startswith("/openapi/v3/"):
            doc = openapi.lookup(path[len("/openapi/v3/") :], crds.types())
            if doc is not None:
                return _json(doc)
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 2:
            found = resources.resource_list("", parts[1])
            if found is not None:
                return _json(found)
        if parts[0] == "apis" and len(parts) == 2:
            group = resources.api_group(parts[1]) or crds.api_group(parts[1])
            if group is not None:
                return _json(group)
        if parts[0] == "apis" and len(parts) == 3:
            found = resources.resource_list(parts[1], parts[2])
            found = found or crds.resource_list(parts[1], parts[2])
            if found is not None:
                return _json(found)
        review = resources.SELF_REVIEWS.get(path)
        if review is not None:
            return await self._self_review(request, user, review)
        route = self._route(path)
        if route is None:
            self.unknown_paths.append(f"{request.method} {request.path_qs}")
            raise errors.ApiError(
                404, "NotFound", "the server could not find the requested resource"
            )
        attrs = self._attributes(request, route)
        allowed, _ = rbac.authorize(self.cluster.store, user, attrs)
        if not allowed:
            raise rbac.forbidden(user, attrs)
        return await self._resource(request, route)

    def _version(self) -> dict[str, Any]:
        minor = self.kube_version.split(".")[1]
        return {
            "major": "1",
            "minor": minor,
            "gitVersion": f"v{self.kube_version}.0"
            if self.kube_version.count(".") == 1
            else f"v{self.kube_version}",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.23.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def _route(self, path: str) -> Route | None:
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        rtype = BY_PATH.get((group, version, rest[0])) or self.cluster.crds.lookup(
            group, version, rest[0]
        )
        if rtype is None:
            return None
        if namespace is not None and not rtype.namespaced:
            return None
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) >= 3 else None
        if len(rest) > 3 or (sub is not None and sub not in rtype.subresources):
            return None
        if namespace is not None and rtype.plural == "namespaces":
            return None
        return Route(rtype, namespace, name, sub)

    async def _self_review(self, request: web.Request, user: User, kind: str) -> web.Response:
        """SelfSubjectAccessReview (`kubectl auth can-i`), SelfSubjectRulesReview
        (`can-i --list`) and SelfSubjectReview (`kubectl auth whoami`)."""
        if request.method != "POST":
            raise errors.method_not_allowed()
        review = await self._review_body(request, kind)
        spec = review.get("spec") or {}
        if kind == "SelfSubjectReview":
            review["status"] = {"userInfo": {"username": user.name, "groups": list(user.groups)}}
            if user.uid:
                review["status"]["userInfo"]["uid"] = user.uid
        elif kind == "SelfSubjectRulesReview":
            rules = rbac.rules_for(self.cluster.store, user, spec.get("namespace") or "default")
            review["status"] = {
                "resourceRules": rules,
                "nonResourceRules": [
                    {"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*"]}
                ],
                "incomplete": False,
            }
        else:
            attrs = spec.get("resourceAttributes")
            if attrs:
                allowed, reason = rbac.authorize(
                    self.cluster.store,
                    user,
                    Attributes(
                        attrs.get("verb", ""),
                        attrs.get("group", ""),
                        attrs.get("resource", ""),
                        attrs.get("namespace") or None,
                        attrs.get("name") or None,
                        attrs.get("subresource") or None,
                    ),
                )
            else:
                non_resource = spec.get("nonResourceAttributes") or {}
                allowed = user.is_admin or non_resource.get("verb") == "get"
                reason = ""
            review["status"] = {"allowed": allowed, **({"reason": reason} if reason else {})}
        return _json(review, 201)

    async def _review_body(self, request: web.Request, kind: str) -> dict[str, Any]:
        group = (
            resources.AUTHENTICATION_GROUP
            if kind == "SelfSubjectReview"
            else (resources.AUTHORIZATION_GROUP)
        )
        base: dict[str, Any] = {"kind": kind, "apiVersion": f"{group}/v1", "metadata": {}}
        if "protobuf" not in request.headers.get("Content-Type", ""):
            body = await self._body(request, optional=True)
            if body is not None and not isinstance(body, dict):
                raise errors.bad_request("the request body must be a JSON object")
            return {**base, **(body or {})}
        raw = await request.read()
        try:
            if kind == "SelfSubjectAccessReview":
                return protowire.access_review(raw)
            if kind == "SelfSubjectRulesReview":
                return {**base, "spec": {"namespace": _rules_review_namespace(raw)}}
        except ValueError as exc:
            raise errors.bad_request(f"cannot decode the review: {exc}") from None
        return base

    # ---- resources -----------------------------------------------------------------------
    async def _resource(self, request: web.Request, route: Route) -> web.StreamResponse:
        method = request.method
        rtype, ns, name, sub = route.rtype, route.namespace, route.name, route.subresource
        cluster = self.cluster
        if sub == "portforward":
            return await self._portforward(request, ns or "", name or "")
        if name is None:
            if method == "GET":
                if request.query.get("watch") in ("1", "true", "True"):
                    return await self._watch(request, rtype, ns)
                return self._list(request, rtype, ns)
            if method == "POST":
                body = await self._body(request)
                return _json(cluster.create(rtype, body, ns), 201)
            if method == "DELETE":
                selector = self._selector(request)
                deleted = []
                for obj in list(cluster.store.iter(rtype, ns, selector)):
                    with contextlib.suppress(errors.ApiError):
                        deleted.append(
                            cluster.delete(
                                rtype,
                                obj["metadata"].get("namespace"),
                                obj["metadata"]["name"],
                                self._grace(request, None),
                                self._propagation(request, None),
                            )
                        )
                return _json(
                    {
                        "kind": rtype.list_kind,
                        "apiVersion": rtype.api_version,
                        "metadata": {"resourceVersion": str(cluster.store.rv)},
                        "items": deleted,
                    }
                )
            raise errors.method_not_allowed()
        if sub == "log":
            if request.query.get("follow") in ("1", "true", "True"):
                return await self._follow_logs(request, ns or "", name)
            return self._logs(request, ns or "", name)
        if sub == "scale":
            return await self._scale(request, rtype, ns or "", name)
        if sub == "token":
            return await self._token_request(request, ns or "", name)
        if method == "GET":
            obj = cluster.store.get(rtype, ns, name)
            return self._object_response(request, rtype, obj)
        if method == "PUT":
            body = await self._body(request)
            return _json(cluster.replace(rtype, ns, name, body, sub))
        if method == "PATCH":
            body = await self._body(request)
            return _json(
                cluster.patch(
                    rtype, ns, name, request.headers.get("Content-Type", ""), body, subresource=sub
                )
            )
        if method == "DELETE":
            body = await self._body(request, optional=True)
            grace = self._grace(request, body)
            pre = (body or {}).get("preconditions") or {}
            current = cluster.store.get(rtype, ns, name)
            if pre.get("uid") and pre["uid"] != current["metadata"]["uid"]:
                raise errors.conflict(rtype.plural, name, rtype.group)
            if (
                pre.get("resourceVersion")
                and pre["resourceVersion"] != current["metadata"]["resourceVersion"]
            ):
                raise errors.conflict(rtype.plural, name, rtype.group)
            obj = cluster.delete(rtype, ns, name, grace, self._propagation(request, body))
            if rtype is PODS:
                return _json(obj)
            return _json(_success(rtype, obj))
        raise errors.method_not_allowed()

    def _logs(self, request: web.Request, ns: str, name: str) -> web.Response:
        """`kubectl logs` (container, previous, timestamps, tailLines)."""
        q = request.query
        lines = self.cluster.kubelet.logs(
            ns, name, q.get("container"), q.get("previous") in ("1", "true", "True")
        )
        tail = q.get("tailLines")
        if tail is not None and tail.isdigit():
            lines = lines[-int(tail) :] if int(tail) else []
        stamps = q.get("timestamps") in ("1", "true", "True")
        text = "".join(f"{ts} {line}\n" if stamps else f"{line}\n" for ts, line in lines)
        return web.Response(text=text)

    async def _follow_logs(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        """`kubectl logs -f`: stream the log until the container's run ends."""
        stamps = request.query.get("timestamps") in ("1", "true", "True")
        lines = self.cluster.kubelet.follow(ns, name, request.query.get("container"))
        first = await anext(lines, None)  # errors (no such container) before the 200
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        line = first
        try:
            while not self._stopping.is_set():
                if line is not None:
                    ts, text = line
                    await resp.write(f"{ts} {text}\n".encode() if stamps else f"{text}\n".encode())
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                try:
                    line = await anext(lines)
                except StopAsyncIteration:
                    break
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            await lines.aclose()
        return resp

    @staticmethod
    def _propagation(request: web.Request, body: dict[str, Any] | None) -> str | None:
        """DeleteOptions.propagationPolicy (query or body); orphanDependents=true is Orphan."""
        policy = request.query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
        orphan = request.query.get("orphanDependents") or (body or {}).get("orphanDependents")
        if policy is None and orphan in (True, "true", "1"):
            return "Orphan"
        return str(policy) if policy else None

    @staticmethod
    def _grace(request: web.Request, body: dict[str, Any] | None) -> int | None:
        raw = request.query.get("gracePeriodSeconds")
        if raw is None and body:
            raw = body.get("gracePeriodSeconds")
        return None if raw is None else int(raw)

    @staticmethod
    async def _body(request: web.Request, optional: bool = False) -> Any:
        if "protobuf" in request.headers.get("Content-Type", ""):
            # The objects kubectl's create commands send in protobuf; others get 415.
            try:
                return protobodies.decode_object(await request.read())
            except ValueError:
                raise errors.unsupported_media_type(request.headers["Content-Type"]) from None
        raw = await request.read()
        if not raw.strip():
            if optional:
                return None
            raise errors.bad_request("the request body is empty")
        try:
            return json.loads(raw)
        except ValueError:
            import yaml

            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError:
                raise errors.bad_request("the request body is not valid JSON") from None

    @staticmethod
    def _selector(request: web.Request) -> Selector:
        return Selector(
            LabelSelector.parse(request.query.get("labelSelector")),
            FieldSelector.parse(request.query.get("fieldSelector")),
        )

    @staticmethod
    def _wants_table(request: web.Request) -> bool:
        return "as=Table" in request.headers.get("Accept", "")

    def _object_response(
        self, request: web.Request, rtype: ResourceType, obj: dict[str, Any]
    ) -> web.Response:
        if self._wants_table(request):
            return _json(tables.table(rtype, [obj], str(self.cluster.store.rv), request.query))
        return _json(obj)

    def _list(self, request: web.Request, rtype: ResourceType, ns: str | None) -> web.Response:
        items, rv = self.cluster.store.list(rtype, ns, self._selector(request))
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        # Chunked lists (limit/continue), as kubectl asks for 500 at a time.
        token = request.query.get("continue")
        if token:
            after, rv = _decode_continue(token)
            meta["resourceVersion"] = str(rv)
            items = [i for i in items if _list_key(i) > after]
        limit = request.query.get("limit")
        if limit and limit.isdigit() and 0 < int(limit) < len(items):
            rest = len(items) - int(limit)
            items = items[: int(limit)]
            meta["continue"] = _encode_continue(_list_key(items[-1]), rv)
            meta["remainingItemCount"] = rest
        if self._wants_table(request):
            table = tables.table(rtype, items, str(rv), request.query)
            table["metadata"] = meta
            return _json(table)
        return _json(
            {
                "kind": rtype.list_kind,
                "apiVersion": rtype.api_version,
                "metadata": meta,
                "items": items,
            }
        )

    async def _scale(
        self, request: web.Request, rtype: ResourceType, ns: str, name: str
    ) -> web.Response:
        cluster = self.cluster
        if request.method in ("PUT", "PATCH"):
            body = await self._body(request)
            current = self._scale_of(cluster.store.get(rtype, ns, name))
            if request.method == "PATCH":
                from localmesh.sandbox.patch import apply_patch

                body = apply_patch(request.headers.get("Content-Type", ""), current, body)
            replicas = (body.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise errors.invalid(
                    "Scale", name, [("spec.replicas", "Invalid value")], "autoscaling"
                )
            cluster.patch(
                rtype, ns, name, "application/merge-patch+json", {"spec": {"replicas": replicas}}
            )
        return _json(self._scale_of(cluster.store.get(rtype, ns, name)))

    async def _token_request(self, request: web.Request, ns: str, name: str) -> web.Response:
        """TokenRequest (`kubectl create token`): a token for the service account."""
        if request.method != "POST":
            raise errors.method_not_allowed()
        if "protobuf" in request.headers.get("Content-Type", ""):
            try:
                spec: dict[str, Any] = _token_request_spec(await request.read())
            except ValueError as exc:
                raise errors.bad_request(f"cannot decode the token request: {exc}") from None
        else:
            body = await self._body(request, optional=True) or {}
            spec = dict(body.get("spec") or {})
        seconds = spec.get("expirationSeconds") or rbac.DEFAULT_TOKEN_SECONDS
        if not isinstance(seconds, int) or seconds < 600:
            raise errors.invalid(
                "TokenRequest",
                name,
                [
                    (
                        "spec.expirationSeconds",
                        "Invalid value: may not specify a duration less than 10 minutes",
                    )
                ],
                resources.AUTHENTICATION_GROUP,
            )
        token, expires = self.identities.issue(ns, name, seconds, spec.get("audiences"))
        spec["expirationSeconds"] = seconds
        spec.setdefault("audiences", [rbac.ISSUER])
        spec.setdefault("boundObjectRef", None)
        return _json(
            {
                "kind": "TokenRequest",
                "apiVersion": f"{resources.AUTHENTICATION_GROUP}/v1",
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": None},
                "spec": spec,
                "status": {
                    "token": token,
                    "expirationTimestamp": time.strftime(
                        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)
                    ),
                },
            },
            201,
        )

    @staticmethod
    def _scale_of(deploy: dict[str, Any]) -> dict[str, Any]:
        md = deploy["metadata"]
        match = (deploy["spec"].get("selector") or {}).get("matchLabels") or {}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: md[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in md
            },
            "spec": {"replicas": deploy["spec"].get("replicas", 1)},
            "status": {
                "replicas": deploy.get("status", {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(match.items())),
            },
        }

    # ---- watch ---------------------------------------------------------------------------
    async def _watch(
        self, request: web.Request, rtype: ResourceType, ns: str | None
    ) -> web.StreamResponse:
        q = request.query
        timeout = float(q.get("timeoutSeconds") or 1800)
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true", "True")
        send_initial = q.get("sendInitialEvents") in ("1", "true", "True")
        resource_version = q.get("resourceVersion")
        if send_initial:
            resource_version = None
        store = self.cluster.store
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            initial, watcher = store.watch(rtype, ns, self._selector(request), resource_version)
        except errors.ApiError as err:
            if err.code != 410:
                raise
            await resp.prepare(request)
            await resp.write(self._event("ERROR", err.status()))
            await resp.write_eof()
            return resp
        stopping = self._stopping
        self._watchers.add(watcher)
        try:
            await resp.prepare(request)
            as_table = self._wants_table(request)
            columns_sent = False

            def encode(type_: str, obj: dict[str, Any]) -> bytes:
                # `kubectl get -w` asks for Tables: one row per event, columns once.
                nonlocal columns_sent
                if not as_table:
                    return self._event(type_, obj)
                table = tables.table(rtype, [obj], obj["metadata"]["resourceVersion"], q)
                if columns_sent:
                    table["columnDefinitions"] = []
                columns_sent = True
                return self._event(type_, table)

            for type_, obj in initial:
                await resp.write(encode(type_, obj))
            if send_initial:
                await resp.write(self._bookmark(rtype, initial_end=True))
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.cluster.faults.bookmark_interval
            while not stopping.is_set():
                now = time.monotonic()
                if now >= deadline:
                    break
                if bookmarks and now >= next_bookmark:
                    await resp.write(self._bookmark(rtype))
                    next_bookmark = now + self.cluster.faults.bookmark_interval
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                wait = min(
                    deadline - now, 1.0, max(next_bookmark - now, 0.01) if bookmarks else 1.0
                )
                try:
                    type_, obj = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    continue
                if type_ == _STOP[0]:
                    break
                chunk = [encode(type_, obj)]
                while not watcher.queue.empty():
                    t, o = watcher.queue.get_nowait()
                    if t == _STOP[0]:
                        break
                    chunk.append(encode(t, o))
                await resp.write(b"".join(chunk))
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            store.unwatch(watcher)
            self._watchers.discard(watcher)
        return resp

    @staticmethod
    def _event(type_: str, obj: dict[str, Any]) -> bytes:
        return json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"

    def _bookmark(self, rtype: ResourceType, initial_end: bool = False) -> bytes:
        md: dict[str, Any] = {"resourceVersion": str(self.cluster.store.rv)}
        if initial_end:
            md["annotations"] = {"k8s.io/initial-events-end": "true"}
        return self._event(
            "BOOKMARK", {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": md}
        )

    # ---- port-forward --------------------------------------------------------------------
    async def _portforward(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        if request.method not in ("GET", "POST"):
            raise errors.method_not_allowed()
        pod = self.cluster.store.get(PODS, ns, name)
        status = pod.get("status", {})
        if status.get("phase") != "Running" or not status.get("podIP"):
            raise errors.bad_request(
                f"unable to upgrade connection: pod {name} is not running "
                f"(phase {status.get('phase', 'Unknown')})"
            )
        handler = _portforward_handler()
        if handler is None:
            raise errors.ApiError(501, "NotImplemented", "port-forward is not available")
        response: web.StreamResponse = await handler(
            request, status["podIP"], idle_timeout=self.cluster.faults.portforward_idle_timeout
        )
        return response


def _rules_review_namespace(body: bytes) -> str:
    """spec.namespace of a SelfSubjectRulesReview in protobuf (Unknown.raw -> review -> spec)."""
    if not body.startswith(protowire.MAGIC):
        raise ValueError("not a Kubernetes protobuf body")
    unknown = protowire.fields(body[len(protowire.MAGIC) :])
    review = protowire.fields(unknown.get(2, [b""])[0])
    spec = protowire.fields(review.get(2, [b""])[0])
    return spec.get(1, [b""])[0].decode()


def _token_request_spec(body: bytes) -> dict[str, Any]:
    """audiences and expirationSeconds of a TokenRequest in protobuf (kubectl >= 1.32
    `create token`)."""
    if not body.startswith(protowire.MAGIC):
        raise ValueError("not a Kubernetes protobuf body")
    unknown = protowire.fields(body[len(protowire.MAGIC) :])
    request = protowire.fields(unknown.get(2, [b""])[0])
    raw = request.get(2, [b""])[0]
    out: dict[str, Any] = {}
    audiences = [a.decode() for a in protowire.fields(raw).get(1, [])]
    if audiences:
        out["audiences"] = audiences
    seconds = protowire.varints(raw).get(4)
    if seconds:
        out["expirationSeconds"] = seconds
    return out


def _list_key(obj: dict[str, Any]) -> tuple[str, str]:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _encode_continue(after: tuple[str, str], rv: int) -> str:
    raw = json.dumps({"after": list(after), "rv": rv}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str) -> tuple[tuple[str, str], int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return (str(data["after"][0]), str(data["after"][1])), int(data["rv"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise errors.bad_request("invalid continue token") from None


def _portforward_handler() -> Callable[..., Any] | None:
    # Imported lazily: the port-forward protocols live in their own module.
    try:
        from localmesh.sandbox import portforward
    except ImportError:
        return None
    handler: Callable[..., Any] | None = getattr(portforward, "handle_portforward", None)
    return handler
