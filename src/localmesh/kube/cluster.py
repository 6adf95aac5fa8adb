"""One Kubernetes cluster: resolve services.yaml entries and watch their ready pods.

    cluster = Cluster.connect(kubeconfig=None, context=None)   # kubectl's rules
    port = cluster.resolve(entry)              # PortResolver: the service port number
    watch = await cluster.watch(entry)         # TargetError when the entry cannot resolve
    watch.subscribe(callback)                  # callback(TargetUpdate) on every change
    async for update in watch.updates(): ...   # or as a stream (latest value wins)
    await cluster.close()

Ready pods come from watches (EndpointSlices, or v1 Endpoints where the cluster has no
EndpointSlice API) plus, only once some entry needs it, a pod watch (selectorless endpoints
without a pod reference, named target ports the endpoints leave unresolved). One watch per
(namespace, kind), each in one thread, shared by every entry of that namespace; nothing polls.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from localmesh.config import ServiceEntry
from localmesh.errors import KubeError, TargetError
from localmesh.kube.access import ClusterAccess, load_access
from localmesh.kube.failures import credentials_refused, describe
from localmesh.kube.reflector import Reflector
from localmesh.kube.targets import (
    JSON,
    SERVICE_NAME_LABEL,
    PortNotFound,
    ServiceInfo,
    Target,
    TargetSet,
    service_info,
    targets_from_endpoints,
    targets_from_slices,
)

log = structlog.get_logger(__name__)

REQUEST_TIMEOUT = (5.0, 15.0)  # connect, read (seconds) for one-off REST calls
# Liveness of the API server: a cheap GET /version this often, answered within the timeout.
# Watch streams alone cannot tell a frozen server from a quiet namespace.
PROBE_INTERVAL = 2.0
PROBE_TIMEOUT = (2.0, 3.0)
SILENT_AFTER = 6.0  # seconds without an answer before status says so


@dataclass(frozen=True)
class ServiceKey:
    """A Kubernetes service port as services.yaml names it; forwarders are shared per key."""

    namespace: str
    service: str
    port: int  # the service port number (an entry's port_name resolved)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service}:{self.port}"


@dataclass(frozen=True)
class TargetUpdate:
    """The ready targets of one service port changed (or it became unresolvable)."""

    key: ServiceKey
    targets: frozenset[Target]
    info: ServiceInfo | None
    error: str | None = None  # why the targets may be stale or empty


def entry_label(entry: ServiceEntry) -> str:
    where = f"{entry.location}: " if entry.location is not None else ""
    return f"{where}{entry.describe()}"


class TargetWatch:
    """The live ready targets of one service port; notifies subscribers on every change."""

    def __init__(self, key: ServiceKey, port_ref: str | int, info: ServiceInfo) -> None:
        self.key = key
        self.port_ref = port_ref
        self.info: ServiceInfo | None = info
        self.targets: frozenset[Target] = frozenset()
        self.error: str | None = None
        self.uses_pods = False
        self._subscribers: list[Callable[[TargetUpdate], None]] = []
        self._changed = asyncio.Event()
        self._serial = 0
        self.closed = False

    @property
    def update(self) -> TargetUpdate:
        return TargetUpdate(self.key, self.targets, self.info, self.error)

    def subscribe(self, callback: Callable[[TargetUpdate], None]) -> Callable[[], None]:
        """Call `callback` with the current state now and on every change; returns unsubscribe."""
        self._subscribers.append(callback)
        callback(self.update)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    async def updates(self) -> AsyncIterator[TargetUpdate]:
        """The current state, then each new one; a slow consumer skips to the latest."""
        seen = -1
        while not self.closed:
            if seen != self._serial:
                seen = self._serial
                yield self.update
                continue
            self._changed.clear()
            await self._changed.wait()

    async def wait_for(self, predicate: Callable[[TargetUpdate], bool]) -> TargetUpdate:
        """Wait until the state satisfies `predicate` (callers add their own deadline)."""
        async for update in self.updates():
            if predicate(update):
                return update
        raise TargetError(f"{self.key}: watch closed")

    def _set(self, targets: frozenset[Target], info: ServiceInfo | None, error: str | None) -> None:
        if (targets, info, error) == (self.targets, self.info, self.error):
            return
        if targets != self.targets:
            log.info(
                "ready targets changed",
                service=str(self.key),
                pods=sorted(t.pod for t in targets),
            )
        self.targets, self.info, self.error = targets, info, error
        self._serial += 1
        self._changed.set()
        for callback in list(self._subscribers):
            try:
                callback(self.update)
            except Exception:
                log.exception("target subscriber failed", service=str(self.key))

    def _close(self) -> None:
        self.closed = True
        self._changed.set()


@dataclass
class _Namespace:
    """Mirrors of one namespace's services, endpoints and pods, and the watches on them."""

    name: str
    use_slices: bool
    services: dict[str, JSON] = field(default_factory=dict)
    slices: dict[str, dict[str, JSON]] = field(default_factory=dict)  # service -> slice name
    endpoints: dict[str, JSON] = field(default_factory=dict)
    pods: dict[str, JSON] = field(default_factory=dict)
    pods_by_ip: dict[str, str] = field(default_factory=dict)
    synced: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)  # kind -> why its watch is failing
    causes: dict[str, str] = field(default_factory=dict)  # kind -> the API server's failure
    watches: dict[str, list[TargetWatch]] = field(default_factory=dict)  # service -> watches
    reflectors: list[Reflector] = field(default_factory=list)
    followed: set[str] = field(default_factory=set)  # kinds with a running watch


def _slim(obj: JSON) -> None:
    """Drop what the mirrors never read and real clusters fill generously (server-side
    apply's field ownership, kubectl's last-applied copy of the whole object): with a
    mirrored object per service, endpoint slice and maybe pod, it adds up."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        meta.pop("annotations", None)


def _name(obj: JSON) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


class Cluster:
    """Port resolution and ready-target watches for one cluster (one kubeconfig context)."""

    def __init__(self, access: ClusterAccess) -> None:
        self.access = access
        self._api = access.api_client()
        self._core = k8s_client.CoreV1Api(self._api)
        self._discovery = k8s_client.DiscoveryV1Api(self._api)
        self._namespaces: dict[str, _Namespace] = {}
        self._use_slices: bool | None = None
        self._lock = asyncio.Lock()
        self._probe_stop = threading.Event()
        self._probe: threading.Thread | None = None
        self._answered_at = time.monotonic()
        self._probe_error = ""

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> Cluster:
        return cls(load_access(kubeconfig, context))

    def check_credentials(self) -> None:
        """Raise KubeError when the API server refuses the credentials (401) or fails
        the TLS handshake: nothing can work then. An unreachable server is no error
        here: entries are retried until it answers."""
        try:
            self._read_fresh(k8s_client.CoreApi(self._api).get_api_versions)
        except ApiException as exc:
            if exc.status == 401 or (not exc.status and str(exc.reason).startswith("SSLError")):
                raise KubeError(describe(exc, self.access.server, self.access.context)) from None
        except Exception as exc:
            log.warning(
                "API server not reachable yet",
                reason=describe(exc, self.access.server, self.access.context),
            )

    def start_probe(self) -> None:
        """Ask the API server whether it answers, every PROBE_INTERVAL, in a thread."""
        if self._probe is None:
            self._probe = threading.Thread(target=self._run_probe, name="probe", daemon=True)
            self._probe.start()

    def _run_probe(self) -> None:
        version: Any = k8s_client.VersionApi(self._api)
        while not self._probe_stop.is_set():
            try:
                # The answer itself is not needed, but it must be read: a connection goes
                # back to the shared pool only once its response is consumed.
                version.get_code(_request_timeout=PROBE_TIMEOUT)
                self._answered_at, self._probe_error = time.monotonic(), ""
            except Exception as exc:
                if not self._probe_stop.is_set():
                    self._probe_error = describe(exc, self.access.server, self.access.context)
            self._probe_stop.wait(PROBE_INTERVAL)

    def problems(self) -> list[str]:
        """Why the cluster is not being followed right now, one sentence per cause (the
        same outage seen by every watch is one problem); empty while all is well."""
        found = []
        silent = time.monotonic() - self._answered_at
        if self._probe is not None and silent > SILENT_AFTER:
            why = f": {self._probe_error}" if self._probe_error else " (no reply yet)"
            found.append(
                f"the Kubernetes API server at {self.access.server} has not answered "
                f"for {silent:.0f}s{why}"
            )
        causes: dict[str, int] = {}
        for namespace in self._namespaces.values():
            for cause in namespace.causes.values():
                causes[cause] = causes.get(cause, 0) + 1
        found.extend(
            f"watches failing ({count}): {cause}" if count > 1 else f"watch failing: {cause}"
            for cause, count in causes.items()
        )
        return found

    # -- one-off resolution (blocking; PortResolver) --------------------------------------
    def _fail(self, entry: ServiceEntry, exc: BaseException) -> TargetError:
        return TargetError(
            f"{entry_label(entry)}: {describe(exc, self.access.server, self.access.context)}"
        )

    def _read(self, call: Callable[..., Any], *args: Any, **params: Any) -> JSON:
        response = call(*args, **params, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        try:
            body: JSON = json.loads(response.data)
        finally:
            response.release_conn()
        return body

    def _read_fresh(self, call: Callable[..., Any], *args: Any) -> JSON:
        """`_read`, once more with the kubeconfig re-read when the credentials were
        refused (the cluster was recreated, a token rotated)."""
        seen = self.access.generation
        try:
            return self._read(call, *args)
        except Exception as exc:
            if not credentials_refused(exc) or not self.access.reload(seen):
                raise
        return self._read(call, *args)

    def service_info(self, entry: ServiceEntry) -> ServiceInfo:
        """Check the entry against the cluster: namespace, service and port exist."""
        label = entry_label(entry)
        try:
            service = self._read_fresh(
                self._core.read_namespaced_service, entry.service, entry.namespace
            )
        except ApiException as exc:
            if exc.status != 404:
                raise self._fail(entry, exc) from None
            raise TargetError(self._missing(entry)) from None
        except Exception as exc:
            raise self._fail(entry, exc) from None
        try:
            return service_info(service, entry.port_ref)
        except PortNotFound as exc:
            where = f"{entry.namespace}/{entry.service}"
            raise TargetError(f"{label}: {exc.explain(where)}") from None

    def _missing(self, entry: ServiceEntry) -> str:
        label = entry_label(entry)
        try:
            self._read(self._core.read_namespace, entry.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return (
                    f"{label}: namespace {entry.namespace!r} does not exist{self._elsewhere(entry)}"
                )
        except Exception:
            pass
        return (
            f"{label}: service {entry.service!r} not found in namespace {entry.namespace!r}"
            f"{self._elsewhere(entry)}"
        )

    def _elsewhere(self, entry: ServiceEntry) -> str:
        """`; a service 'x' exists in namespace 'y'` when one does (a likely typo), else ""."""
        try:
            found = self._read(
                self._core.list_service_for_all_namespaces,
                field_selector=f"metadata.name={entry.service}",
            )
        except Exception:
            return ""  # listing across namespaces may be forbidden: the plain message stands
        spaces = sorted(
            str(item.get("metadata", {}).get("namespace", ""))
            for item in found.get("items") or []
            if item.get("metadata", {}).get("name") == entry.service
        )
        if not spaces:
            return ""
        where = ", ".join(repr(n) for n in spaces)
        return f"; a service {entry.service!r} exists in namespace {where}"

    def resolve(self, entry: ServiceEntry) -> int:
        """The service port number the entry names (raises TargetError)."""
        return self.service_info(entry).port.port

    async def resolve_async(self, entry: ServiceEntry) -> ServiceInfo:
        return await asyncio.to_thread(self.service_info, entry)

    # -- watches ---------------------------------------------------------------------------
    async def watch(self, entry: ServiceEntry) -> TargetWatch:
        """Resolve `entry` (TargetError if it cannot be) and follow its ready targets."""
        info = self._cached_info(entry)
        if info is None:
            info = await self.resolve_async(entry)
        async with self._lock:
            namespace = await self._namespace(entry.namespace)
        key = ServiceKey(entry.namespace, entry.service, info.port.port)
        watch = TargetWatch(key, entry.port_ref, info)
        namespace.watches.setdefault(entry.service, []).append(watch)
        self._recompute(namespace, watch)
        return watch

    def _cached_info(self, entry: ServiceEntry) -> ServiceInfo | None:
        """The entry's service from the namespace's synced mirror, which the new watch
        follows from then on anyway (saves a GET per entry: ~10 ms of an edit, 1,000 at
        start-up). None when it is not there or lacks the port: the GET then has the
        last word (the service may be newer than the mirror) and the precise error."""
        namespace = self._namespaces.get(entry.namespace)
        if namespace is None or "services" not in namespace.synced or namespace.errors:
            return None
        service = namespace.services.get(entry.service)
        if service is None:
            return None
        try:
            return service_info(service, entry.port_ref)
        except PortNotFound:
            return None

    def unwatch(self, watch: TargetWatch) -> None:
        namespace = self._namespaces.get(watch.key.namespace)
        if namespace is not None:
            watches = namespace.watches.get(watch.key.service, [])
            if watch in watches:
                watches.remove(watch)
        watch._close()

    async def close(self) -> None:
        self._probe_stop.set()
        namespaces, self._namespaces = list(self._namespaces.values()), {}
        for namespace in namespaces:
            for reflector in namespace.reflectors:
                reflector.stop()
            for watches in namespace.watches.values():
                for watch in watches:
                    watch._close()
        for namespace in namespaces:
            for reflector in namespace.reflectors:
                await reflector.join()
        await asyncio.to_thread(self._api.close)

    def _slices_available(self) -> bool:
        try:
            self._read(self._discovery.get_api_resources)
        except ApiException as exc:
            if exc.status == 404:
                return False
        except Exception:
            pass
        return True

    async def _namespace(self, name: str) -> _Namespace:
        namespace = self._namespaces.get(name)
        if namespace is not None:
            return namespace
        if self._use_slices is None:
            self._use_slices = await asyncio.to_thread(self._slices_available)
        namespace = _Namespace(name=name, use_slices=self._use_slices)
        self._namespaces[name] = namespace
        self._follow(namespace, "services")
        self._follow(namespace, "endpointslices" if namespace.use_slices else "endpoints")
        return namespace

    def _follow(self, namespace: _Namespace, kind: str) -> None:
        """Start the watch thread of one kind in one namespace (once)."""
        if kind in namespace.followed:
            return
        namespace.followed.add(kind)
        list_fn = {
            "services": self._core.list_namespaced_service,
            "pods": self._core.list_namespaced_pod,
            "endpointslices": self._discovery.list_namespaced_endpoint_slice,
            "endpoints": self._core.list_namespaced_endpoints,
        }[kind]
        reflector = Reflector(
            f"{namespace.name}/{kind}",
            list_fn,
            namespace.name,
            self._deliverer(namespace, kind),
            loop=asyncio.get_running_loop(),
            server=self.access.server,
            context=self.access.context,
            refresh=self.access.reload,
            generation=lambda: self.access.generation,
        )
        namespace.reflectors.append(reflector)
        reflector.start()

    def _deliverer(self, namespace: _Namespace, kind: str) -> Callable[[str, Any], None]:
        def deliver(event: str, payload: Any) -> None:
            try:
                self._apply(namespace, kind, event, payload)
            except Exception:
                log.exception("watch event failed", namespace=namespace.name, kind=kind)

        return deliver

    # -- applying watch events (on the event loop) -----------------------------------------
    def _apply(self, namespace: _Namespace, kind: str, event: str, payload: Any) -> None:
        if event in ("ERROR", "DOWN"):
            namespace.errors[kind] = f"watching {kind} in namespace {namespace.name}: {payload}"
            namespace.causes[kind] = str(payload)
            self._recompute_all(namespace)
            return
        namespace.causes.pop(kind, None)
        cleared = namespace.errors.pop(kind, None) is not None
        store = self._store(namespace, kind)
        affected: set[str] | None = set()
        if event == "SYNC":
            store.clear()
            if kind == "pods":
                namespace.pods_by_ip.clear()
            for obj in payload:
                self._put(namespace, kind, obj)
            namespace.synced.add(kind)
            affected = None
        elif event == "DELETED":
            affected = {self._remove(namespace, kind, payload)}
        else:
            affected = {self._put(namespace, kind, payload)}
        if kind == "pods" or cleared:
            self._recompute_all(namespace, pods_only=not cleared and event != "SYNC")
        elif affected is None:
            self._recompute_all(namespace)
        else:
            for service in affected:
                for watch in namespace.watches.get(service, []):
                    self._recompute(namespace, watch)

    def _store(self, namespace: _Namespace, kind: str) -> dict[str, Any]:
        return {
            "services": namespace.services,
            "pods": namespace.pods,
            "endpointslices": namespace.slices,
            "endpoints": namespace.endpoints,
        }[kind]

    def _put(self, namespace: _Namespace, kind: str, obj: JSON) -> str:
        """Store `obj`; return the name of the service it belongs to ("" for pods)."""
        _slim(obj)
        name = _name(obj)
        if kind == "endpointslices":
            service = str(obj.get("metadata", {}).get("labels", {}).get(SERVICE_NAME_LABEL, ""))
            namespace.slices.setdefault(service, {})[name] = obj
            return service
        if kind == "pods":
            old = namespace.pods.get(name)
            if old is not None:
                namespace.pods_by_ip.pop(str(old.get("status", {}).get("podIP", "")), None)
            namespace.pods[name] = obj
            ip = obj.get("status", {}).get("podIP")
            if ip:
                namespace.pods_by_ip[str(ip)] = name
            return ""
        self._store(namespace, kind)[name] = obj
        return name

    def _remove(self, namespace: _Namespace, kind: str, obj: JSON) -> str:
        name = _name(obj)
        if kind == "endpointslices":
            service = str(obj.get("metadata", {}).get("labels", {}).get(SERVICE_NAME_LABEL, ""))
            namespace.slices.get(service, {}).pop(name, None)
            return service
        if kind == "pods":
            old = namespace.pods.pop(name, None)
            if old is not None:
                ip = str(old.get("status", {}).get("podIP", ""))
                if namespace.pods_by_ip.get(ip) == name:
                    del namespace.pods_by_ip[ip]
            return ""
        self._store(namespace, kind).pop(name, None)
        return name

    def _recompute_all(self, namespace: _Namespace, *, pods_only: bool = False) -> None:
        for watches in namespace.watches.values():
            for watch in watches:
                if not pods_only or watch.uses_pods:
                    self._recompute(namespace, watch)

    def _recompute(self, namespace: _Namespace, watch: TargetWatch) -> None:
        key = watch.key
        error = "; ".join(namespace.errors.values()) or None
        service = namespace.services.get(key.service)
        info = watch.info
        if "services" in namespace.synced:
            if service is None:
                watch._set(frozenset(), None, f"service {key.namespace}/{key.service} was deleted")
                return
            try:
                info = service_info(service, watch.port_ref)
            except PortNotFound as exc:
                watch._set(frozenset(), None, exc.explain(f"{key.namespace}/{key.service}"))
                return
        endpoints_kind = "endpointslices" if namespace.use_slices else "endpoints"
        if info is None or endpoints_kind not in namespace.synced:
            watch._set(watch.targets, info, error)
            return
        result: TargetSet
        if namespace.use_slices:
            result = targets_from_slices(
                info,
                namespace.slices.get(key.service, {}).values(),
                namespace.pods,
                namespace.pods_by_ip,
            )
        else:
            result = targets_from_endpoints(
                info, namespace.endpoints.get(key.service), namespace.pods, namespace.pods_by_ip
            )
        watch.uses_pods = result.uses_pods
        if result.uses_pods and "pods" not in namespace.synced:
            # Endpoints without a pod reference or a resolved port: pods are needed. Most
            # clusters never get here (EndpointSlices carry both), so pods are not watched
            # until then.
            self._follow(namespace, "pods")
            watch._set(watch.targets, info, error)
            return
        watch._set(result.targets, info, error)
