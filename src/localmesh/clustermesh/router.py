"""`localmesh agent router`: the in-cluster router of one meshed Service.

It runs in the router pod (the localmesh image) and drives its own Envoy child over ADS
(localmesh's xDS server and snapshot cache, on a 0600 unix socket in a private temporary
directory). It watches, with the pod's ServiceAccount:

- the session Leases of the Service and the shadow pods they name,
- the EndpointSlices of `<svc>-localmesh-origin` (the original selector's pods),

and serves what `router_plan` makes of them, again whenever one changes and when the
first live Lease expires (an expired session loses its route within a lease duration
even if nothing else happens). A live session's shadow pod that runs but is not Ready
yet is asked by the router itself (`shadow_verify`): its own OK makes the mark routable
before the kubelet's next probe, for as long as it keeps answering.

GET /ready on the health port answers 200 once Envoy ACKed a snapshot with the default
route and listens on every router port; /healthz while the agent runs; GET
/routed/<session>?wait=S answers 200 once Envoy ACKed a snapshot routing that session's
mark (waiting up to S seconds for it, else 404): a joining `mesh` asks
through a port-forward before it tells the developer to send requests, so the router
needs no right to write anything of the session's.

A session whose Lease is dead beyond doubt loses its Lease to the router, and with it (by
ownerReferences) its shadow pod and Secret. When no live session is left for
`idle_timeout` seconds, the router retires: it restores the Service (compare-and-swap on
its resourceVersion; a session that joined meanwhile keeps it meshed), then deletes the
origin Service in the version seen before the restore (a joiner's claim makes the delete
miss); the garbage collector removes what the origin Service owns: the router's
Deployment, ServiceAccount, Role and RoleBinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from localmesh.bootstrap import BootstrapOptions, build_bootstrap
from localmesh.clustermesh import manifests as m, router_plan as rp, shadow_verify as sv
from localmesh.clustermesh.membership import (
    CAS_ATTEMPTS,
    delete_shared,
    lease_dead,
    lease_live,
    mesh_state,
    restored,
    session_leases,
)
from localmesh.clustermesh.router_defaults import DEFAULT_IDLE_TIMEOUT
from localmesh.envoy import EnvoySupervisor
from localmesh.errors import KubeError, LocalmeshError, NackedError
from localmesh.kube.incluster import incluster_objects, list_functions
from localmesh.kube.objects import Conflict, KubeObjects, NotFound
from localmesh.kube.reflector import Reflector
from localmesh.kube.targets import JSON
from localmesh.runtime import process_start_ticks
from localmesh.xds.cache import SnapshotCache
from localmesh.xds.server import XdsServer, start_server

log = structlog.get_logger(__name__)

NODE_ID = "localmesh-router"
# The longest the agent waits between plans: idle checks and lease expiry need no event.
MAX_TICK = 1.0
HEALTH_READ_TIMEOUT = 5.0
ROUTED_WAIT_MAX = 30.0  # the longest a /routed request is held open
KINDS = ("Lease", "Pod", "EndpointSlice")
# Envoy's default is one worker per core of the NODE, whatever the pod's CPU share; a
# proxy in a small pod does better with a few (as sidecars are usually configured).
ENVOY_WORKERS = 2
# After SIGTERM the router keeps serving until no new connection arrived for DRAIN_QUIET
# seconds (at most DRAIN_MAX): a node's kube-proxy can send connections to this pod for a
# while after the Service's selector moved back to the pods. Below the pod's grace period.
DRAIN_QUIET = 1.5
DRAIN_MAX = 20.0
DRAIN_POLL = 0.1


def process_age() -> float | None:
    """Seconds since this process started (Linux), for the start-up timings it logs."""
    ticks = process_start_ticks(os.getpid())
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None if ticks is None else round(uptime - ticks / os.sysconf("SC_CLK_TCK"), 2)


class RouterError(LocalmeshError):
    """The router cannot start; the message says why."""


def router_listen_ports(deployment: JSON) -> list[int]:
    """The router's ports: its container ports except the health port (the Service's
    targetPorts, resolved when the Deployment was made)."""
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    ports = []
    for container in containers or []:
        for port in container.get("ports") or []:
            if port.get("name") != "lm-health" and port.get("containerPort") is not None:
                ports.append(int(port["containerPort"]))
    return sorted(set(ports))


class RouterAgent:
    def __init__(
        self,
        namespace: str,
        service: str,
        *,
        pod_ip: str,
        health_port: int,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        kube: KubeObjects | None = None,
        envoy_path: str | None = None,
        log_level: str = "info",
    ) -> None:
        self.namespace = namespace
        self.service = service
        self.pod_ip = pod_ip
        self.health_port = health_port
        self.idle_timeout = idle_timeout
        self._kube = kube
        self._envoy_path = envoy_path
        self._log_level = log_level
        self.ports: list[int] = []
        self.ready = False
        self.retired = False
        self._objects: dict[str, dict[str, JSON]] = {k: {} for k in KINDS}
        self._synced: set[str] = set()
        self._changed = asyncio.Event()
        self._all_synced = asyncio.Event()
        self._cache = SnapshotCache()
        self._reflectors: list[Reflector] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._health: asyncio.Server | None = None
        self._xds: XdsServer | None = None
        self._envoy: EnvoySupervisor | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._last_live = 0.0
        self._planned: rp.RouterPlan | None = None
        self._published = asyncio.Event()  # a new snapshot was set
        self._routed: frozenset[str] = frozenset()  # sessions routed by what Envoy ACKed
        self._routed_changed = asyncio.Event()
        self._startup: dict[str, float | None] = {}  # phase -> seconds since process start
        self._tried: set[tuple[str, str]] = set()  # (Lease, version) deletes already tried
        # Shadows not Ready yet that answer the router's own readiness question.
        self._verifier = sv.ShadowVerifier(self._changed.set)

    # -- watches ---------------------------------------------------------------------------
    def _deliver(self, kind: str) -> Callable[[str, Any], None]:
        def deliver(event: str, payload: Any) -> None:
            store = self._objects[kind]
            if event == "SYNC":
                store.clear()
                for obj in payload:
                    store[obj["metadata"]["name"]] = obj
                self._synced.add(kind)
                if len(self._synced) == len(KINDS):
                    self._all_synced.set()
            elif event in ("ADDED", "MODIFIED"):
                store[payload["metadata"]["name"]] = payload
            elif event == "DELETED":
                store.pop(payload["metadata"]["name"], None)
            else:
                log.warning("router watch", kind=kind, event=event, reason=payload)
                return
            self._changed.set()

        return deliver

    def _start_watches(self, kube: KubeObjects) -> None:
        lists = list_functions(kube)
        selectors = {
            "Lease": f"{m.managed_selector(self.service)},{m.COMPONENT_LABEL}=session",
            "Pod": f"{m.managed_selector(self.service)},{m.COMPONENT_LABEL}=shadow",
            "EndpointSlice": f"kubernetes.io/service-name={m.origin_name(self.service)}",
        }
        loop = asyncio.get_running_loop()
        for kind in KINDS:
            reflector = Reflector(
                f"{kind}/{self.service}",
                functools.partial(lists[kind], label_selector=selectors[kind]),
                self.namespace,
                self._deliver(kind),
                loop=loop,
                server=kube.access.server,
                context=None,
            )
            reflector.start()
            self._reflectors.append(reflector)

    # -- health ----------------------------------------------------------------------------
    async def _on_health(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEALTH_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b" ", 2)
            path = parts[1].decode("latin-1") if len(parts) > 2 else ""
            path, _, query = path.partition("?")
            if path.startswith("/routed/"):
                session = path.removeprefix("/routed/")
                routed = await self._wait_routed(session, query)
                holder = self._holder_of(session)
                if routed:
                    status, body = "200 OK", "routed\n"
                elif holder is not None:
                    status, body = "409 Conflict", f"mark held by {holder}\n"
                else:
                    status, body = "404 Not Found", "not routed\n"
            elif path == "/healthz":
                status, body = "200 OK", "ok\n"
            elif path == "/ready":
                status, body = (
                    ("200 OK", "ready\n")
                    if self.ready
                    else ("503 Service Unavailable", "not ready\n")
                )
            else:
                status, body = "404 Not Found", "not found\n"
            data = body.encode()  # a holder's name may be any text: its length in bytes
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()

    def _holder_of(self, session: str) -> str | None:
        """Who holds `session`'s mark when an older session has it: `holder (session)`."""
        owner = self._planned.held.get(session) if self._planned is not None else None
        return None if owner is None else f"{owner.holder} (session {owner.name})"

    async def _wait_routed(self, session: str, query: str) -> bool:
        """Whether Envoy holds a route for `session`, waiting up to ?wait=S for it (not
        while an older session holds its mark: that will not change by waiting)."""
        wait = 0.0
        for item in query.split("&"):
            key, _, value = item.partition("=")
            if key == "wait":
                with contextlib.suppress(ValueError):
                    asked = float(value)
                    wait = min(max(asked, 0.0), ROUTED_WAIT_MAX) if math.isfinite(asked) else 0.0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while session not in self._routed and self._holder_of(session) is None:
                    self._routed_changed.clear()
                    await self._routed_changed.wait()
        return session in self._routed

    async def _track_routes(self) -> None:
        """Keep `_routed` to the sessions of the snapshot Envoy last ACKed."""
        while True:
            self._published.clear()
            version, planned = self._cache.snapshot.version, self._planned
            try:
                await self._cache.wait_for_ack(version)
            except (NackedError, ValueError) as exc:
                log.error("router snapshot not acked", version=version, reason=str(exc))
            else:
                if planned is not None and self._cache.snapshot.version == version:
                    routed = frozenset(
                        s.name for s in planned.sessions if s.routed and s.name not in planned.held
                    )
                    if routed != self._routed:
                        self._routed = routed
                        self._routed_changed.set()
                        log.info("router acked routes", sessions=sorted(routed))
            if self._cache.snapshot.version == version:
                await self._published.wait()

    # -- planning --------------------------------------------------------------------------
    def plan(self, now: datetime) -> rp.RouterPlan:
        return rp.plan(
            self.pod_ip,
            self.ports,
            leases=self._objects["Lease"].values(),
            pods=self._objects["Pod"],
            slices=self._objects["EndpointSlice"].values(),
            now=now,
            verified=self._verifier.fresh(),
            incumbents=self._routed,
        )

    def _shadows_to_verify(self, router: rp.RouterPlan) -> dict[str, sv.ProbeTarget]:
        """The live sessions' shadow pods that run but are not Ready: pod UID -> where to
        ask them (none once Ready, deleted or without a live Lease)."""
        found = {}
        for session in router.sessions:
            target = sv.probe_target(self._objects["Pod"].get(session.shadow))
            if target is not None:
                found[target.uid] = target
        return found

    def _publish(self, now: datetime) -> rp.RouterPlan:
        router = self._keep_origin_when_gone(self.plan(now))
        if router == self._planned:
            return router  # a tick or a Lease renewal that changes nothing: build nothing
        self._planned = router
        self._routed_changed.set()  # waiters re-check: a mark may now be held by another
        snapshot = rp.build_router_snapshot(router)
        if snapshot.version != self._cache.snapshot.version:
            self._cache.set_snapshot(snapshot)
            self._published.set()
            log.info(
                "router routes",
                sessions=[
                    f"{s.header}: {s.value} -> {s.shadow_ip or 'origin'}" for s in router.sessions
                ],
                origin={p: len(eps) for p, eps in router.origin.items()},
            )
        return router

    def _keep_origin_when_gone(self, router: rp.RouterPlan) -> rp.RouterPlan:
        """The origin Service's EndpointSlices all gone means the mesh is being taken down
        (the origin Service was deleted), not that the pods went: clients whose kube-proxy
        still sends them here keep reaching the pods last known until this pod stops."""
        synced = len(self._synced) == len(KINDS)
        if synced and not self._objects["EndpointSlice"] and self._planned is not None:
            planned = self._planned
            return dataclasses.replace(
                router, origin=planned.origin, declared_http=planned.declared_http
            )
        return router

    async def _serve_until_quiet(self) -> None:
        """Keep serving after SIGTERM until new connections stop arriving."""
        envoy = self._envoy
        if envoy is None or not envoy.running:
            return
        self.ready = False
        began = last_change = time.monotonic()
        accepted: float | None = None
        while (now := time.monotonic()) - began < DRAIN_MAX:
            try:
                stats = await envoy.stats(r"^listener\..*\.downstream_cx_total$")
            except Exception as exc:  # whatever keeps the counters unread ends the drain
                log.debug("router drain: no stats", reason=str(exc))
                return
            total = sum(
                value
                for name, value in stats.items()
                if not name.startswith("listener.admin.") and ".worker_" not in name
            )
            if total != accepted:
                accepted, last_change = total, now
            elif now - last_change >= DRAIN_QUIET:
                break
            await asyncio.sleep(DRAIN_POLL)  # the admin API's counters have no watch
        log.info("router stopping", connections_accepted=accepted, drained=round(now - began, 2))

    async def _become_ready(self) -> None:
        assert self._envoy is not None
        try:
            # Ready only with the origin pods known: the Service's selector moves to this
            # pod once it is Ready, and unmarked requests must not fail then.
            await self._all_synced.wait()
            self._startup["watches synced"] = process_age()
            self._publish(datetime.now(UTC))
            await self._cache.wait_for_ack()
            self._startup["envoy acked"] = process_age()
            for port in self.ports:
                await self._envoy.wait_listening(port, within=60.0)
        except LocalmeshError as exc:
            # Never Ready: the joining session times out on the router and says so.
            log.error("router cannot serve", reason=str(exc))
            return
        self.ready = True
        self._startup["ready"] = process_age()
        log.info("router ready", ports=self.ports, seconds_since_process_start=self._startup)

    # -- retiring --------------------------------------------------------------------------
    async def delete_dead_sessions(self, kube: KubeObjects) -> list[str]:
        """Delete the Leases of this Service's auto-mode sessions that are dead beyond
        doubt, each only in the version judged dead (a renewal makes the delete miss); the
        garbage collector removes their shadow pods and Secrets. The Role names each
        session's Lease (`manifests.router_rbac`)."""
        deleted = []
        for name, lease in sorted(self._objects["Lease"].items()):
            meta = lease["metadata"]
            mode = (meta.get("annotations") or {}).get(m.MODE_ANNOTATION, "auto")
            version = str(meta.get("resourceVersion") or "")
            if mode != "auto" or not lease_dead(lease) or (name, version) in self._tried:
                continue
            self._tried.add((name, version))
            try:
                if await kube.delete("Lease", self.namespace, name, resource_version=version):
                    deleted.append(f"Lease {self.namespace}/{name}")
            except Conflict:
                pass  # renewed after all: the session lives
            except KubeError as exc:
                log.warning("router could not delete a dead session", lease=name, reason=str(exc))
        if deleted:
            log.info("router removed dead sessions", deleted=deleted)
        return deleted

    async def retire(self, kube: KubeObjects) -> bool:
        """Restore the Service, then delete the dead sessions' Leases and the origin Service
        (the garbage collector removes this router, its RBAC and the sessions' objects),
        unless a session is (or may be) live. True when the Service is no longer meshed."""
        origin_name = m.origin_name(self.service)
        origin = await kube.get("Service", self.namespace, origin_name)
        labels = (origin or {}).get("metadata", {}).get("labels") or {}
        # The version BEFORE the restore: a joiner's claim afterwards makes the delete miss.
        version = str(origin["metadata"].get("resourceVersion") or "") if origin else ""
        for attempt in range(CAS_ATTEMPTS):
            current = await kube.get("Service", self.namespace, self.service)
            if current is None or mesh_state(current).original_selector is None:
                break
            leases = await session_leases(kube, self.namespace, self.service)
            listed = mesh_state(current).sessions
            if any(lease_live(lease) for lease in leases.values()) or any(
                not lease_dead(leases.get(name)) for name in listed
            ):
                return False
            try:
                await kube.replace("Service", self.namespace, self.service, restored(current))
                log.info("router restored the service", service=self.service)
                break
            except NotFound:
                break
            except Conflict:
                await asyncio.sleep(random.uniform(0, 0.02 * (attempt + 1)))
        else:
            return False
        deleted = await self.delete_dead_sessions(kube)
        if version and labels.get(m.MANAGED_BY_LABEL) == m.MANAGER:
            # Last: with it go this router's Deployment and the RBAC that lets it act.
            shared = {f"Service/{origin_name}": version}
            gone = await delete_shared(kube, self.namespace, shared)
            deleted += gone
            if not gone:
                # A joiner claimed the origin Service after the restore: it relies on this
                # router (which it found Ready), so this router stays in service.
                log.info("router kept: a session joined while it retired")
                return False
        log.info("router retired", deleted=deleted)
        return True

    # -- running ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> int:
        self._startup["imported"] = process_age()
        kube = self._kube or incluster_objects()
        envoy_started: asyncio.Task[None] | None = None
        try:
            # Envoy first: its process boots while this one reads the cluster and builds
            # the first snapshot (it waits on the ADS socket for it).
            self._tmp = tempfile.TemporaryDirectory(prefix="lm-router-")
            root = Path(self._tmp.name)
            self._xds = await start_server(self._cache, root / "xds.sock")
            bootstrap = build_bootstrap(
                BootstrapOptions(xds_socket_path=str(root / "xds.sock"), node_id=NODE_ID)
            )
            self._envoy = EnvoySupervisor(
                bootstrap,
                runtime_dir=root,
                envoy_path=self._envoy_path,
                log_level=self._log_level,
                concurrency=ENVOY_WORKERS,
            )
            envoy_started = asyncio.create_task(self._envoy.start())
            self._startup["envoy spawned"] = process_age()
            deployment = await kube.get("Deployment", self.namespace, m.router_name(self.service))
            if deployment is None:
                raise RouterError(
                    f"deployment {self.namespace}/{m.router_name(self.service)} not found"
                )
            self.ports = router_listen_ports(deployment)
            if not self.ports:
                raise RouterError("the router deployment lists no ports")
            self._health = await asyncio.start_server(
                self._on_health, self.pod_ip, self.health_port
            )
            self._start_watches(kube)
            self._publish(datetime.now(UTC))  # default route; endpoints follow on sync
            self._startup["first snapshot"] = process_age()
            await envoy_started
            self._startup["envoy started"] = process_age()
            self._tasks.append(asyncio.create_task(self._become_ready()))
            self._tasks.append(asyncio.create_task(self._track_routes()))
            return await self._loop(kube, stop)
        finally:
            if envoy_started is not None and not envoy_started.done():
                envoy_started.cancel()  # its own clean-up stops the process
                with contextlib.suppress(BaseException):
                    await envoy_started
            await self._shutdown(kube)

    async def _loop(self, kube: KubeObjects, stop: asyncio.Event) -> int:
        self._last_live = time.monotonic()
        stopping = asyncio.create_task(stop.wait())
        draining: asyncio.Task[None] | None = None
        try:
            while draining is None or not draining.done():
                if draining is None and stop.is_set():
                    # Planning goes on while it drains: a Lease expiring or a tunnel
                    # dropping still sends its mark back to the pods.
                    draining = asyncio.create_task(self._serve_until_quiet())
                self._changed.clear()  # before planning: an event during it is not lost
                now = datetime.now(UTC)
                router = self._publish(now)
                self._verifier.track(self._shadows_to_verify(router))
                if any(lease_dead(lease) for lease in self._objects["Lease"].values()):
                    try:
                        await self.delete_dead_sessions(kube)
                    except KubeError as exc:
                        log.warning("router could not remove dead sessions", reason=str(exc))
                if router.sessions or len(self._synced) < len(KINDS):
                    self._last_live = time.monotonic()
                elif (
                    draining is None
                    and not self.retired
                    and time.monotonic() - self._last_live >= self.idle_timeout
                ):
                    try:
                        self.retired = await self.retire(kube)
                    except KubeError as exc:
                        log.warning("router could not retire yet", reason=str(exc))
                    self._last_live = time.monotonic()
                expiries = (
                    rp.next_expiry(self._objects["Lease"].values(), now),
                    self._verifier.next_expiry(),  # a verification going stale re-plans too
                )
                expiry = min((e for e in expiries if e is not None), default=None)
                tick = MAX_TICK if expiry is None else min(MAX_TICK, max(expiry, 0.0) + 0.01)
                changed = asyncio.create_task(self._changed.wait())
                await asyncio.wait(
                    {changed, draining or stopping},
                    timeout=tick,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                changed.cancel()
        finally:
            stopping.cancel()
            if draining is not None and not draining.done():
                draining.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await draining
        return 0

    async def _shutdown(self, kube: KubeObjects) -> None:
        self.ready = False
        for task in self._tasks:
            task.cancel()
        await self._verifier.stop()
        for reflector in self._reflectors:
            reflector.stop()
        if self._envoy is not None:
            with contextlib.suppress(Exception):
                await self._envoy.stop()
        if self._xds is not None:
            await self._xds.stop(0)
        if self._health is not None:
            self._health.close()
        for reflector in self._reflectors:
            await reflector.join()
        if self._tmp is not None:
            self._tmp.cleanup()
        if self._kube is None:
            await kube.close()


__all__ = ["DEFAULT_IDLE_TIMEOUT", "RouterAgent", "RouterError", "router_listen_ports"]
