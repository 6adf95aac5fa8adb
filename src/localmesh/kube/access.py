"""Cluster credentials, found exactly as kubectl finds them.

The official client's loader does the work (KUBECONFIG with several paths, `--kubeconfig`,
`--context`, tokens, client certificates, custom CAs, exec plugins). `ClusterAccess` hands the
result to code that must not import `kubernetes` (the port-forwarders): the server URL, an
`ssl.SSLContext` and the current authorization header, refreshed when an exec plugin's token
expires.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s_client, config as k8s_config
from kubernetes.config.config_exception import ConfigException

from localmesh.errors import KubeError
from localmesh.kube.kubeconfig import KubeconfigError, check_kubeconfig, kubeconfig_paths

# How long a header from a refreshing credential (exec plugin) is reused before asking again;
# the client's own hook only runs the plugin when the token is near expiry.
_REFRESH_CHECK_SECONDS = 10.0


@dataclass
class ClusterAccess:
    """Where the API server is and how to authenticate to it, for any HTTP client."""

    server: str
    context: str | None
    ssl_context: ssl.SSLContext | None  # None for plain http://
    server_hostname: str | None  # TLS SNI / verification name override (tls-server-name)
    configuration: Any = field(repr=False)  # kubernetes.client.Configuration
    _cached: tuple[float, dict[str, str]] | None = field(default=None, repr=False)

    def headers_now(self) -> dict[str, str]:
        """The authorization headers, running the credential refresh hook (may block)."""
        cfg = self.configuration
        headers: dict[str, str] = {}
        # The client's own auth settings: bearer token (static or exec plugin), basic auth.
        for setting in cfg.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[str(setting["key"])] = str(setting["value"])
        if "authorization" in headers:
            headers["Authorization"] = headers.pop("authorization")
        if "Authorization" not in headers and cfg.username and cfg.password:
            headers["Authorization"] = cfg.get_basic_auth_token()
        return headers

    async def headers(self) -> dict[str, str]:
        """The authorization headers; refreshing credentials are checked off the loop."""
        if self.configuration.refresh_api_key_hook is None:
            if self._cached is None:
                self._cached = (0.0, self.headers_now())
            return self._cached[1]
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > _REFRESH_CHECK_SECONDS:
            self._cached = (now, await asyncio.to_thread(self.headers_now))
        return self._cached[1]


def load_access(kubeconfig: str | None = None, context: str | None = None) -> ClusterAccess:
    """Load credentials as kubectl does: `kubeconfig` (a path or os.pathsep-separated list),
    else $KUBECONFIG, else ~/.kube/config; `context`, else the current context."""
    paths = kubeconfig_paths(kubeconfig)
    context_name = check_kubeconfig(paths, context)
    path = os.pathsep.join(paths)
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context, client_configuration=cfg, persist_config=False
        )
    except ConfigException as exc:
        raise KubeconfigError(f"cannot load kubeconfig {path}: {exc}") from None
    except OSError as exc:
        raise KubeError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # the loader's own errors on shapes the check lets through
        raise KubeconfigError(f"cannot load kubeconfig {path}: {exc!r}") from None
    # Fail fast on an unreachable server instead of retrying each request three times.
    cfg.retries = False
    server = str(cfg.host).rstrip("/")
    return ClusterAccess(
        server=server,
        context=context_name,
        ssl_context=_ssl_context(cfg) if server.startswith("https") else None,
        server_hostname=getattr(cfg, "tls_server_name", None) or None,
        configuration=cfg,
    )


def _ssl_context(cfg: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    return ctx
