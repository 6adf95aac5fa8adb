"""Cluster credentials, found exactly as kubectl finds them.

The official client's loader does the work (KUBECONFIG with several paths, `--kubeconfig`,
`--context`, tokens, client certificates, custom CAs, exec plugins). `ClusterAccess` hands the
result to code that must not import `kubernetes` (the port-forwarders): the server URL, an
`ssl.SSLContext` and the current authorization header, refreshed when an exec plugin's token
expires.

Credentials change under a running `up` (a cluster recreated with a new CA and token, a
rotated token): whoever gets a 401/403 or a failed TLS handshake calls `reload()`, which
re-reads the kubeconfig; every client made by `api_client()` and every later port-forward
then uses what it says. Connections already open are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from localmesh.errors import KubeError
from localmesh.kube.kubeconfig import KubeconfigError, check_kubeconfig, kubeconfig_paths

log = structlog.get_logger(__name__)

# How long a header from a refreshing credential (exec plugin) is reused before asking again;
# the client's own hook only runs the plugin when the token is near expiry.
_REFRESH_CHECK_SECONDS = 10.0
# Failures come in bursts (every watch and connection at once): read the kubeconfig at
# most this often.
RELOAD_MIN_INTERVAL = 1.0


@dataclass
class ClusterAccess:
    """Where the API server is and how to authenticate to it, for any HTTP client."""

    server: str
    context: str | None
    ssl_context: ssl.SSLContext | None  # None for plain http://
    server_hostname: str | None  # TLS SNI / verification name override (tls-server-name)
    # kubernetes.client.Configuration; None in-cluster (localmesh.kube.incluster's
    # InClusterAccess, which authenticates with the pod's ServiceAccount token)
    configuration: Any = field(repr=False)
    kubeconfig: str | None = None  # what load_access was given, to load again
    context_arg: str | None = None
    generation: int = 0  # bumped by every reload that changed something
    _cached: tuple[float, dict[str, str]] | None = field(default=None, repr=False)
    _fingerprint: tuple[object, ...] = field(default=(), repr=False)
    _clients: list[Any] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _last_reload: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if not self._fingerprint:
            self._fingerprint = _fingerprint(self.configuration)

    def api_client(self) -> Any:
        """A kubernetes ApiClient that follows reloads (its connection pool is replaced)."""
        from kubernetes import client as k8s_client

        api = k8s_client.ApiClient(self.configuration)
        with self._lock:
            self._clients.append(api)
        return api

    def reload(self, seen: int) -> bool:
        """Re-read the kubeconfig after a 401/403 or a TLS failure; True when the
        credentials (or server, or CA) changed since generation `seen`, so a retry may
        succeed. Thread-safe and rate-limited; blocks (may run an exec plugin)."""
        from kubernetes.client import rest as k8s_rest

        with self._lock:
            if self.generation != seen:
                return True  # another caller already picked up the new credentials
            now = time.monotonic()
            if now - self._last_reload < RELOAD_MIN_INTERVAL:
                return False
            self._last_reload = now
            try:
                fresh = load_access(self.kubeconfig, self.context_arg)
            except KubeError as exc:
                log.warning("cannot re-read the kubeconfig", error=str(exc))
                return False
            if fresh._fingerprint == self._fingerprint:
                return False
            self.server = fresh.server
            self.context = fresh.context
            self.ssl_context = fresh.ssl_context
            self.server_hostname = fresh.server_hostname
            self.configuration = fresh.configuration
            self._fingerprint = fresh._fingerprint
            self._cached = None
            self.generation += 1
            for api in self._clients:
                # New connections with the new CA and credentials; requests in flight
                # (open watches) keep the old pool until they end.
                api.configuration = fresh.configuration
                api.rest_client = k8s_rest.RESTClientObject(fresh.configuration)
        log.info("kubeconfig re-read: new credentials", server=self.server, context=self.context)
        return True

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
        """The authorization headers; refreshing credentials are checked off the loop, and
        a cached header never outlives its token (an exec plugin's expirationTimestamp)."""
        if self.configuration.refresh_api_key_hook is None:
            if self._cached is None:
                self._cached = (0.0, self.headers_now())
            return self._cached[1]
        now = time.monotonic()
        if self._cached is None or now >= self._cached[0]:
            headers = await asyncio.to_thread(self.headers_now)
            until = now + _REFRESH_CHECK_SECONDS
            left = token_seconds_left(self.configuration)
            if left is not None:
                until = min(until, now + max(0.0, left - refresh_margin(self.configuration)))
            self._cached = (until, headers)
        return self._cached[1]


# -- exec credential plugins ---------------------------------------------------------------
# The official client re-runs a plugin once its token is within five minutes of expiring:
# right for hour-long tokens, but a plugin whose tokens live less than that would run on
# every request. The hook is wrapped to re-run it a quarter of the token's lifetime (at
# most five minutes) before its expirationTimestamp instead.
_MAX_MARGIN_SECONDS = 300.0


def _loader(cfg: Any) -> Any:
    """The client's kubeconfig loader behind its refresh hook (it holds the expiry)."""
    hook = getattr(cfg, "refresh_api_key_hook", None)
    hook = getattr(hook, "wrapped", hook)
    for cell in getattr(hook, "__closure__", None) or ():
        with contextlib.suppress(ValueError):
            if hasattr(cell.cell_contents, "_load_authentication"):
                return cell.cell_contents
    return None


def _expiry(cfg: Any) -> float | None:
    expiry = getattr(_loader(cfg), "expiry", None)
    return expiry.timestamp() if isinstance(expiry, datetime.datetime) else None


def token_seconds_left(cfg: Any) -> float | None:
    """Seconds until the exec plugin's current token expires (None: no known expiry)."""
    expiry = _expiry(cfg)
    return None if expiry is None else expiry - time.time()


def refresh_margin(cfg: Any) -> float:
    hook = getattr(cfg, "refresh_api_key_hook", None)
    lifetime = getattr(hook, "lifetime", None)
    if not isinstance(lifetime, float):
        return _MAX_MARGIN_SECONDS
    return min(_MAX_MARGIN_SECONDS, max(1.0, lifetime / 4))


class _TimelyRefresh:
    """Replaces the client's refresh hook: re-run the plugin `margin` before expiry."""

    def __init__(self, wrapped: Callable[[Any], None], cfg: Any) -> None:
        self.wrapped = wrapped
        self.lifetime: float | None = None
        self._lock = threading.Lock()
        left = token_seconds_left(cfg)
        if left is not None:
            self.lifetime = float(left)

    def __call__(self, cfg: Any) -> None:
        with self._lock:
            left = token_seconds_left(cfg)
            if left is not None and left > refresh_margin(cfg):
                return
            self.wrapped(cfg)
            # The client installs a new hook of its own each time: keep this one in front.
            if cfg.refresh_api_key_hook is not self:
                self.wrapped = cfg.refresh_api_key_hook
                cfg.refresh_api_key_hook = self
            left = token_seconds_left(cfg)
            if left is not None:
                self.lifetime = float(left)


def load_access(kubeconfig: str | None = None, context: str | None = None) -> ClusterAccess:
    """Load credentials as kubectl does: `kubeconfig` (a path or os.pathsep-separated list),
    else $KUBECONFIG, else ~/.kube/config; `context`, else the current context."""
    # The official client (0.3 s, pydantic) only where a kubeconfig is read: the in-cluster
    # agents do without it.
    from kubernetes import client as k8s_client, config as k8s_config
    from kubernetes.config.config_exception import ConfigException

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
    if cfg.refresh_api_key_hook is not None:
        cfg.refresh_api_key_hook = _TimelyRefresh(cfg.refresh_api_key_hook, cfg)
    server = str(cfg.host).rstrip("/")
    return ClusterAccess(
        server=server,
        context=context_name,
        ssl_context=_ssl_context(cfg) if server.startswith("https") else None,
        server_hostname=getattr(cfg, "tls_server_name", None) or None,
        configuration=cfg,
        kubeconfig=kubeconfig,
        context_arg=context,
    )


def _fingerprint(cfg: Any) -> tuple[object, ...]:
    """What identifies the credentials: the loader writes inline CA and certificate data
    to fresh temporary files each time, so their contents count, not their names."""
    files = tuple(
        Path(name).read_bytes() if name and Path(name).is_file() else name
        for name in (cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file)
    )
    return (cfg.host, cfg.verify_ssl, dict(cfg.api_key), cfg.username, cfg.password, files)


def _ssl_context(cfg: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    return ctx
