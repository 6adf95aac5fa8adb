"""Credentials of a pod's own ServiceAccount, for localmesh's in-cluster agents.

The API server is $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; the token and CA are
in /var/run/secrets/kubernetes.io/serviceaccount, or in $LOCALMESH_SERVICEACCOUNT_DIR when
set (a stand-in cluster that runs pods as plain processes puts them there). The official
token file is read again whenever it changes (projected tokens rotate).

    access = load_incluster_access()
    kube = KubeObjects(access)
    api = core_api(access)    # for Reflector list functions
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader

from localmesh.errors import KubeError
from localmesh.kube.access import ClusterAccess, _ssl_context

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICEACCOUNT_DIR_ENV = "LOCALMESH_SERVICEACCOUNT_DIR"


def serviceaccount_dir() -> Path:
    return Path(os.environ.get(SERVICEACCOUNT_DIR_ENV) or SERVICEACCOUNT_DIR)


def load_incluster_access() -> ClusterAccess:
    folder = serviceaccount_dir()
    cfg = k8s_client.Configuration()
    loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
        token_filename=str(folder / "token"),
        cert_filename=str(folder / "ca.crt"),
        try_refresh_token=False,
    )
    try:
        loader.load_and_set(cfg)  # type: ignore[no-untyped-call]
    except ConfigException as exc:
        raise KubeError(f"no in-cluster credentials: {exc}") from None
    cfg.refresh_api_key_hook = _token_reader(folder / "token")  # type: ignore[assignment]
    cfg.retries = False
    server = str(cfg.host).rstrip("/")
    try:
        context = _ssl_context(cfg)
    except (ssl.SSLError, OSError) as exc:
        raise KubeError(f"{folder / 'ca.crt'}: not a usable CA certificate ({exc})") from None
    return ClusterAccess(
        server=server,
        context=None,
        ssl_context=context,
        server_hostname=None,
        configuration=cfg,
    )


def _token_reader(path: Path) -> Callable[[Any], None]:
    """A refresh hook the client runs before each request: the token file is read again
    whenever it changed (projected tokens are rotated by the kubelet), not on a timer."""
    seen: list[tuple[int, int]] = []

    def refresh(cfg: Any) -> None:
        try:
            info = path.stat()
        except OSError:
            return  # keep the last token; the server says if it is no longer good
        stamp = (info.st_mtime_ns, info.st_size)
        if seen and seen[0] == stamp:
            return
        token = path.read_text().strip()
        if token:
            cfg.api_key["BearerToken"] = f"Bearer {token}"
            seen[:] = [stamp]

    return refresh


def api_client(access: ClusterAccess) -> Any:
    return k8s_client.ApiClient(access.configuration)


def list_functions(access: ClusterAccess) -> dict[str, Any]:
    """The namespaced list calls a Reflector follows, by kind."""
    api = api_client(access)
    core = k8s_client.CoreV1Api(api)
    return {
        "Pod": core.list_namespaced_pod,
        "Lease": k8s_client.CoordinationV1Api(api).list_namespaced_lease,
        "EndpointSlice": k8s_client.DiscoveryV1Api(api).list_namespaced_endpoint_slice,
    }
