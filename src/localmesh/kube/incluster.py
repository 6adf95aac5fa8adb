"""Credentials of a pod's own ServiceAccount, for localmesh's in-cluster agents.

The API server is $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; the token and CA are
in /var/run/secrets/kubernetes.io/serviceaccount, or in $LOCALMESH_SERVICEACCOUNT_DIR when
set (a stand-in cluster that runs pods as plain processes puts them there). The token file
is read again whenever it changes (projected tokens rotate).

The requests are plain HTTPS (urllib3, one pool) with the token as a bearer header: a pod
needs nothing of the official client (kubeconfig loaders, exec plugins, models) and its
import (0.3 s, pydantic) is on the router pod's start-up, which a developer's first `mesh`
waits for.

    access = load_incluster_access()
    kube = incluster_objects(access)     # KubeObjects over plain requests (one pool)
    lists = list_functions(kube)         # for Reflectors: kind -> list(namespace, ...)
    await kube.close()                   # closes that pool, for both
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3

from localmesh.errors import KubeError
from localmesh.kube.access import ClusterAccess
from localmesh.kube.failures import StatusError
from localmesh.kube.objects import KINDS, KubeObjects

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICEACCOUNT_DIR_ENV = "LOCALMESH_SERVICEACCOUNT_DIR"


def serviceaccount_dir() -> Path:
    return Path(os.environ.get(SERVICEACCOUNT_DIR_ENV) or SERVICEACCOUNT_DIR)


def _server() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeError(
            "no in-cluster credentials: Service host/port is not set "
            "($KUBERNETES_SERVICE_HOST, $KUBERNETES_SERVICE_PORT)"
        )
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"https://{host}:{port}"


def load_incluster_access() -> ClusterAccess:
    folder = serviceaccount_dir()
    server = _server()
    for name, what in (("token", "token file"), ("ca.crt", "CA certificate file")):
        if not (folder / name).is_file():
            raise KubeError(f"no in-cluster credentials: the {what} does not exist ({folder})")
    try:
        context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
    except (ssl.SSLError, OSError) as exc:
        raise KubeError(f"{folder / 'ca.crt'}: not a usable CA certificate ({exc})") from None
    access = InClusterAccess(
        server=server,
        context=None,
        ssl_context=context,
        server_hostname=None,
        configuration=None,
        _fingerprint=("in-cluster", server, str(folder)),
    )
    access.token = _Token(folder / "token")
    return access


class InClusterAccess(ClusterAccess):
    """The pod's own access: the ServiceAccount token, read again whenever the file
    changed, instead of a kubeconfig (nothing to reload, no official client)."""

    token: _Token | None = None

    def reload(self, seen: int) -> bool:
        return False  # the token is read again per request

    def headers_now(self) -> dict[str, str]:
        return {"Authorization": self.token.header()} if self.token is not None else {}

    async def headers(self) -> dict[str, str]:
        return self.headers_now()  # a stat of the token file


class _Token:
    """The bearer header, read again whenever the token file changed (the kubelet rotates
    projected tokens), not on a timer."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._header = ""
        self._lock = threading.Lock()

    def header(self) -> str:
        with self._lock:
            try:
                info = self._path.stat()
            except OSError:
                return self._header  # keep the last token; the server says if it is bad
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp != self._stamp:
                token = self._path.read_text().strip()
                if token:
                    self._header = f"Bearer {token}"
                    self._stamp = stamp
            return self._header


class PlainRequests:
    """Requests to the API server with the pod's ServiceAccount (localmesh.kube.objects'
    Requests, and the streaming list/watch calls of the Reflectors)."""

    def __init__(self, access: ClusterAccess) -> None:
        self.access = access
        self._pool = urllib3.PoolManager(maxsize=8, ssl_context=access.ssl_context)

    def open(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        body: Any,
        timeout: tuple[float, float],
        preload: bool = True,
    ) -> Any:
        """The urllib3 response (streaming unless `preload`); connection and TLS
        failures raise urllib3's exceptions, which `describe` explains."""
        url = self.access.server + path + (f"?{urlencode(query)}" if query else "")
        sent = {**headers, **self.access.headers_now()}
        data = None if body is None else json.dumps(body).encode()
        return self._pool.request(
            method,
            url,
            body=data,
            headers=sent,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            retries=False,
            redirect=False,
            preload_content=preload,
        )

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
        response = self.open(method, path, query=query, headers=headers, body=body, timeout=timeout)
        return response.status, str(response.reason or ""), bytes(response.data or b"")

    def close(self) -> None:
        self._pool.clear()


class InClusterObjects(KubeObjects):
    """KubeObjects over plain requests; `plain` is its pool, which `close` closes."""

    def __init__(self, access: ClusterAccess) -> None:
        self.plain = PlainRequests(access)
        super().__init__(access, self.plain)


def incluster_objects(access: ClusterAccess | None = None) -> InClusterObjects:
    """KubeObjects with the pod's ServiceAccount, over plain requests."""
    return InClusterObjects(access or load_incluster_access())


def _query_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _lister(requests: PlainRequests, kind: str) -> Callable[..., Any]:
    """A namespaced list call as a Reflector makes it (the official client's keywords):
    the streaming response, or StatusError for an error status."""
    names = {
        "label_selector": "labelSelector",
        "watch": "watch",
        "resource_version": "resourceVersion",
        "allow_watch_bookmarks": "allowWatchBookmarks",
        "timeout_seconds": "timeoutSeconds",
    }

    def list_namespaced(
        namespace: str,
        *,
        _preload_content: bool = True,
        _request_timeout: tuple[float, float] = (5.0, 30.0),
        **options: Any,
    ) -> Any:
        query = [(names[k], _query_value(v)) for k, v in options.items() if v is not None]
        response = requests.open(
            "GET",
            KINDS[kind].path(namespace),
            query=query,
            headers={"Accept": "application/json"},
            body=None,
            timeout=_request_timeout,
            preload=_preload_content,
        )
        if response.status >= 300:
            body = bytes(response.data or b"").decode(errors="replace")
            response.release_conn()
            raise StatusError(response.status, response.reason, body)
        return response

    return list_namespaced


def list_functions(kube: KubeObjects) -> dict[str, Any]:
    """The namespaced list calls a Reflector follows, by kind, over `kube`'s own pool when
    it has one (incluster_objects: closed by its `close`); a KubeObjects of another kind
    lends its access to a pool of their own."""
    requests = kube.plain if isinstance(kube, InClusterObjects) else PlainRequests(kube.access)
    return {kind: _lister(requests, kind) for kind in ("Pod", "Lease", "EndpointSlice")}
