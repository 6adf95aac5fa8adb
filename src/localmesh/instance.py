"""One running mesh: config → Kubernetes targets → forwarders → reconciler → xDS → Envoy.

`MeshInstance.run()` is what `localmesh up` (and `localmesh demo`) execute. It owns every
long-lived part (each registers its clean-up on one AsyncExitStack) and tears them down in
the reverse order of their start:

    config        load + validate (a ConfigError stops here: nothing was started)
    runtime dir   instance lock (one `up` per --name), sockets, bootstrap
    gRPC server   ADS for Envoy + the control API (status, down, live dump), unix sockets
    /etc/hosts    a marked block, removed on exit (and after a crash, on the next start)
    cluster       credentials as kubectl finds them; entries resolved one by one
    reconciler    the one task that plans the desired state from facts, then snapshots
    forwarders    one local listener per ready pod (`apply_config.Backends`); up/down
                  events feed the reconciler
    Envoy         started once from a static bootstrap; restarted if it dies, or if its
                  listener stops serving (`localmesh.listenerhealth`)

Config apply lives in `localmesh.apply_config`, the status builder in
`localmesh.statusview` (recent counts per host: `localmesh.recent`), GC tuning in
`localmesh.heap`.

With `watch=True` edits of services.yaml are applied live (only the difference: new entries
get forwarders, removed ones lose theirs, routes follow over RDS); an invalid edit is logged
with its file:line and the last good config keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import grpc
import structlog

from localmesh import access_log
from localmesh.apply_config import Backends
from localmesh.bootstrap import AdsMode, BootstrapOptions, build_bootstrap
from localmesh.config import Config, ServiceEntry, load_config
from localmesh.control import (
    CheckStatus,
    EnvoyStatus,
    InstanceStatus,
    SnapshotResource,
    bind_unix_socket,
    register_control,
    secure_socket,
)
from localmesh.desired import DesiredState
from localmesh.envoy import EnvoySupervisor, cluster_traffic
from localmesh.errors import ConfigError, ListenerBindError, LocalmeshError
from localmesh.filewatch import SaveWatch
from localmesh.forward import ForwarderEvent, ForwardManager, ForwardOptions
from localmesh.heap import freeze_heap, load_without_gc
from localmesh.hosts import HostsFile
from localmesh.kube import Cluster
from localmesh.listenerhealth import ListenerHealth
from localmesh.recent import SAMPLE_EVERY, STATS_PATTERN, RecentTraffic
from localmesh.reconciler import Reconciler
from localmesh.runtime import InstanceLock, RuntimePaths, invoking_user, runtime_paths
from localmesh.statusview import hosts_status, xds_status
from localmesh.xds.cache import SnapshotCache
from localmesh.xds.resources import TYPE_ORDER
from localmesh.xds.server import AdsService, prepare_socket_path
from localmesh.xds.snapshot import build_snapshot

log = structlog.get_logger(__name__)

FIRST_TARGETS_TIMEOUT = 15.0  # how long start-up waits for an entry's first forwarders
RETRY_UNRESOLVED_EVERY = 5.0  # entries whose service is missing are tried again this often
STATS_TIMEOUT = 2.0  # status waits this long for Envoy's stats (the listener check says why)


@dataclass(frozen=True)
class UpOptions:
    config_path: Path
    name: str = "default"
    bind: str = "127.0.0.1"
    kubeconfig: str | None = None
    context: str | None = None
    edit_hosts: bool = True
    hosts_file: Path = Path("/etc/hosts")
    watch: bool = False
    log_level: str = "info"
    envoy_path: str | None = None
    # One worker outruns the forwarders it feeds; a second only adds wake-ups (every accepted
    # connection woke both), ~10% of keep-alive req/s on 2 cores (bench/datapath.py).
    envoy_workers: int = 1
    ads_mode: AdsMode = AdsMode.DELTA  # changes cost only what changed (bench/xds_push)
    runtime_base: Path | None = None  # tests: a private directory instead of XDG_RUNTIME_DIR
    handle_signals: bool = True
    access_log: bool = False  # one `request` line per request (Envoy's access log)


class MeshInstance:
    """A running `localmesh up`; also the control API's provider (status, down, dump).

    Every part start() brings up registers its own clean-up on one AsyncExitStack, so
    stop() undoes exactly what was started, newest first, whatever failed half-way.
    """

    def __init__(self, options: UpOptions, *, out: TextIO | None = None) -> None:
        self.options = options
        self.out = out or sys.stdout
        self.paths: RuntimePaths = runtime_paths(options.name, base=options.runtime_base)
        self.config: Config | None = None
        self.cache = SnapshotCache()
        self._access_log = self.paths.root / "access.log" if options.access_log else None
        self.reconciler = Reconciler(
            self._publish,
            listener_address=options.bind,
            access_log=str(self._access_log or ""),
        )
        self._stack = contextlib.AsyncExitStack()
        self._manager: ForwardManager | None = None
        self._cluster: Cluster | None = None
        self._backends: Backends | None = None
        self._envoy: EnvoySupervisor | None = None
        self._listener_health: ListenerHealth | None = None
        self._recent = RecentTraffic()
        self._hosts: HostsFile | None = None
        self._saves: SaveWatch | None = None
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._config_problem = ""
        self._started_at = datetime.now(UTC)
        self._undone: list[str] = []  # what stop() undid, for the line that ends a run

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> int:
        """Start everything, serve until stopped (signal or `localmesh down`), clean up."""
        try:
            await self.start()
            self._ready.set()
            await self._stop.wait()
        finally:
            await self.stop()
        return 0

    async def wait_ready(self) -> None:
        """Until start-up finished and the mesh is routable (for tests and `demo`)."""
        await self._ready.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        opts = self.options
        stack = self._stack
        config = load_config(opts.config_path)  # before anything starts: nothing to undo
        self.config = config
        if opts.watch:  # from here on no save is missed (and no inotify: fail now)
            self._saves = SaveWatch(opts.config_path)
            stack.callback(self._saves.close)
        if opts.handle_signals:
            self._handle_signals()

        user = invoking_user()
        owner_uid = user.uid if user.uid != os.geteuid() else None
        # First the name (a second `up --name X` must not touch X's hosts block), then the
        # hosts file: both fail before anything long-lived has started.
        lock = InstanceLock(self.paths, uid=owner_uid).acquire()
        stack.callback(self._undone.append, "runtime files removed")  # runs after release
        stack.callback(lock.release)
        _check_port_free(opts.bind, config.listener_port)
        # The control server goes (nearly) last: a `localmesh down` waiting for its reply
        # gets it before the socket goes.
        await self._start_server(owner_uid)
        if opts.edit_hosts:  # a wrong --hosts-file is reported before the cluster is asked
            HostsFile(opts.hosts_file, opts.name).blocks()
        # Credentials before the hosts file is edited: a cluster that refuses them changes
        # nothing.
        cluster = await asyncio.to_thread(Cluster.connect, _kubeconfig(opts), opts.context)
        stack.push_async_callback(_quietly, "close cluster watches", cluster.close)
        self._cluster = cluster
        await asyncio.to_thread(cluster.check_credentials)
        cluster.start_probe()
        if opts.edit_hosts:
            hosts = HostsFile(opts.hosts_file, opts.name)
            update = hosts.ensure(_hosts(config), address=opts.bind)
            self._hosts = hosts
            stack.callback(self._remove_hosts)
            for name in update.stale_removed:
                log.info("removed hosts entries left by a crashed run", mesh=name)

        self._spawn("reconciler", self.reconciler.run)
        if self._access_log is not None:
            access_log.prepare(self._access_log)
            tail = access_log.AccessLogTail(self._access_log, self.reconciler.pod_of)
            self._spawn("access log", tail.run)
        manager = ForwardManager(cluster, self._on_forwarder, ForwardOptions(bind="127.0.0.1"))
        await manager.start()
        stack.callback(self._note_forwarders_closed)
        stack.push_async_callback(_quietly, "close forwarders", manager.close)
        self._manager = manager
        self._backends = Backends(manager, self.reconciler)
        await self._backends.apply(config)
        await self._wait_first_targets()

        bootstrap = build_bootstrap(
            BootstrapOptions(
                xds_socket_path=str(self.paths.xds_socket),
                node_id=f"localmesh-{opts.name}",
                ads_mode=opts.ads_mode,
            )
        )
        envoy = EnvoySupervisor(
            bootstrap,
            runtime_dir=self.paths.root,
            envoy_path=opts.envoy_path,
            log_level=opts.log_level,
            concurrency=opts.envoy_workers,
        )
        self._envoy = envoy
        stack.callback(self._undone.append, "Envoy stopped")
        stack.push_async_callback(_quietly, "stop envoy", envoy.stop)
        await envoy.start()
        self._spawn("envoy supervision", envoy.join)  # a dead supervisor stops `up`
        await envoy.wait_listening(config.listener_port)
        await self._wait_in_sync()
        self._listener_health = ListenerHealth(envoy, opts.bind, config.listener_port)
        self._spawn("check the listener", self._listener_health.run)
        self._spawn("sample envoy's counters", self._sample_traffic)

        if self._hosts is not None:
            self._print(f"{self.options.hosts_file} updated successfully")
        self._print_forwards()
        self._print(f"envoy config: {self.paths.envoy_bootstrap}")
        self._print(f"listen: {_listen(opts.bind, config.listener_port)}")
        freeze_heap()
        if opts.watch:
            self._spawn("watch services.yaml", self._watch_config)
        self._spawn("retry unresolved entries", self._retry_unresolved)

    async def stop(self) -> None:
        """Undo whatever start() did, newest first; safe to call more than once."""
        stack, self._stack = self._stack, contextlib.AsyncExitStack()
        await stack.aclose()
        undone, self._undone = self._undone, []
        if undone and self._ready.is_set():  # a run that served (a failed start says why)
            self._print("stopped: " + ", ".join(undone))

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

        def restore() -> None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

        self._stack.callback(restore)

    def _note_forwarders_closed(self) -> None:
        entries = len(self.config.services) if self.config is not None else 0
        self._undone.append(f"port-forwards of {entries} entries closed")

    def _remove_hosts(self) -> None:
        if self._hosts is None:
            return
        try:
            self._hosts.remove()
            self._undone.append(f"{self.options.hosts_file} entries removed")
        except LocalmeshError as exc:
            log.error("cannot remove hosts entries", error=str(exc))

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("stopping", signal=sig.name)
        self._stop.set()

    def _spawn(self, name: str, run: Callable[[], Awaitable[object]]) -> None:
        async def guarded() -> None:
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A dead core task would leave a mesh that silently stops following changes.
                log.exception("task died; stopping", task=name)
                self._stop.set()

        task = asyncio.create_task(guarded(), name=name)

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

        self._stack.push_async_callback(cancel)

    async def _start_server(self, owner_uid: int | None) -> None:
        server = grpc.aio.server()
        AdsService(self.cache).register(server)
        register_control(server, self)
        for path in (self.paths.xds_socket, self.paths.control_socket):
            prepare_socket_path(path)
            old_umask = os.umask(0o177)  # never reachable by others, not even briefly
            try:
                bind_unix_socket(server, path)
            finally:
                os.umask(old_umask)
        await server.start()
        self._stack.push_async_callback(server.stop, 1.0)
        for path in (self.paths.xds_socket, self.paths.control_socket):
            secure_socket(path, owner_uid)

    # -- config ---------------------------------------------------------------------------
    async def _retry_unresolved(self) -> None:
        assert self._backends is not None
        while True:
            await asyncio.sleep(RETRY_UNRESOLVED_EVERY)
            await self._backends.retry_unresolved()

    async def _watch_config(self) -> None:
        assert self._saves is not None
        with self._saves as saves:
            # Saves while `up` was starting are queued: apply whatever is there now.
            await self.reload()
            while True:
                await saves.next()
                await self.reload()

    async def reload(self) -> bool:
        """Load services.yaml again and apply it; on error keep serving the last good one."""
        try:
            # In a thread: parsing 1,000 entries takes a few hundred ms, which on the event
            # loop would stall every forwarder (all traffic) for that long.
            config = await asyncio.to_thread(load_without_gc, self.options.config_path)
        except ConfigError as exc:
            self._config_problem = f"services.yaml is invalid, serving the previous version: {exc}"
            issues = str(exc).splitlines()
            log.error("invalid services.yaml; keeping the previous config", issues=len(issues))
            for issue in issues:  # one line each, `file:line:column: ...`, as `up` prints them
                log.error(issue)
            return False
        except OSError as exc:
            self._config_problem = f"cannot read services.yaml: {exc}"
            log.error("cannot read services.yaml; keeping the previous config", error=str(exc))
            return False
        self._config_problem = ""
        if self.cache.retry_rejected():
            # Saving again is the user's "try again": a rejection may have had an outside
            # cause that is gone now (the listener port was taken, and is free again).
            log.info("offering the config Envoy rejected again")
        if config == self.config:
            return True
        assert self._backends is not None
        await self._backends.apply(config)
        self.config = config
        if self._listener_health is not None:
            self._listener_health.port = config.listener_port
        if self._hosts is not None:
            try:
                self._hosts.ensure(_hosts(config), address=self.options.bind)
            except LocalmeshError as exc:
                log.error("cannot update hosts entries", error=str(exc))
        log.info("services.yaml applied", services=len(config.services))
        return True

    # -- forwarders → reconciler → xDS ----------------------------------------------------
    def _on_forwarder(self, event: ForwarderEvent) -> None:
        if self._backends is not None:
            self._backends.on_forwarder(event)

    async def _publish(self, state: DesiredState) -> None:
        started = time.perf_counter()
        # The cache's current snapshot carries the bytes of every unchanged piece.
        snapshot = build_snapshot(state, self.cache.snapshot)
        self.cache.set_snapshot(snapshot)
        log.debug(
            "snapshot served",
            version=snapshot.version,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _wait_first_targets(self) -> None:
        """Until every resolved backend has as many forwarders as it has ready pods
        (bounded: a backend whose pods are not ready yet is served when they are)."""
        backends = self._backends
        assert backends is not None
        try:
            async with asyncio.timeout(FIRST_TARGETS_TIMEOUT):
                while not backends.all_forwarded():
                    backends.arrivals.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):  # also re-check the watches' state
                            await backends.arrivals.wait()
        except TimeoutError:
            log.warning("some services have no forwarders yet; they join when pods are ready")

    async def _wait_in_sync(self) -> None:
        await self.reconciler.wait_published(lambda state: state == self.reconciler.desired())
        async with asyncio.timeout(15):
            await self.cache.wait_for_ack()

    # -- output ---------------------------------------------------------------------------
    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _print_forwards(self) -> None:
        assert self._backends is not None and self.config is not None
        for entry in self.config.services:
            if entry.local is not None:
                self._print(f"local: {entry.host} -> {entry.local}")
            for backend in entry.backends():
                self._print_backend(backend)
            for route in entry.routes:
                self._print(f"route: {entry.host} [{route.describe_match()}] -> {route.target}")

    def _print_backend(self, backend: ServiceEntry) -> None:
        assert self._backends is not None
        state = self._backends.state(backend)
        if state is None:
            return
        entry = state.entry
        target = f"{entry.namespace}/{entry.service}:{entry.port_ref}"
        if state.key is None:
            self._print(f"pf: {entry.host} -> {target} not forwarded: {state.error}")
            return
        target = f"{entry.namespace}/{entry.service}:{state.key.port}"
        via = ", ".join(f"{e.address}:{e.port}" for e in self.reconciler.endpoints(str(state.key)))
        self._print(f"pf: {entry.host} -> {target} via {via or '(no ready pods yet)'}")

    # -- control API provider -------------------------------------------------------------
    async def status(self) -> InstanceStatus:
        envoy = self._envoy
        traffic = {}
        if envoy is not None and envoy.running:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STATS_TIMEOUT):  # a stopped Envoy never answers
                    traffic = cluster_traffic(await envoy.stats(r"^cluster\."))
        if traffic:
            self._recent.add(asyncio.get_running_loop().time(), traffic)
        recent, recent_seconds = self._recent.recent()
        hosts = (
            await hosts_status(self._backends, self._manager, traffic, recent)
            if self._backends is not None
            else ()
        )
        return InstanceStatus(
            name=self.options.name,
            pid=os.getpid(),
            listener_address=self.options.bind,
            listener_port=await self._served_port(self.config.listener_port if self.config else 0),
            envoy=EnvoyStatus(
                running=envoy is not None and envoy.running,
                pid=(envoy.pid or 0) if envoy is not None else 0,
                admin_address=(envoy.admin_address or "") if envoy is not None else "",
                restarts=envoy.restart_count if envoy is not None else 0,
                version=(envoy.version or "") if envoy is not None else "",
                bootstrap_path=str(self.paths.envoy_bootstrap),
            ),
            hosts=hosts,
            recent_seconds=recent_seconds,
            checks=await self._checks(),
            xds=xds_status(self.cache),
            config_path=str(self.options.config_path),
            started_at=self._started_at,
            extra_problems=(
                *((self._config_problem,) if self._config_problem else ()),
                *(self._cluster.problems() if self._cluster is not None else ()),
            ),
        )

    async def _sample_traffic(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            envoy = self._envoy
            if envoy is not None and envoy.running:
                with contextlib.suppress(Exception):  # a stopped Envoy: the check says so
                    async with asyncio.timeout(STATS_TIMEOUT):
                        stats = await envoy.stats(STATS_PATTERN)
                    self._recent.add(loop.time(), cluster_traffic(stats))
            await asyncio.sleep(SAMPLE_EVERY)  # the sampling interval

    async def _checks(self) -> tuple[CheckStatus, ...]:
        """The facts status is derived from, checked now (each repaired in between)."""
        health = self._listener_health
        return (await health.check(),) if health is not None else ()

    async def _served_port(self, configured: int) -> int:
        """The port Envoy listens on: the configured one, unless Envoy could not bind it
        and kept its previous listener (the xDS status then shows the rejection)."""
        envoy = self._envoy
        if envoy is None or not envoy.running or configured not in envoy.listener_errors:
            return configured
        ports = await envoy.listening_ports()
        return configured if not ports or configured in ports else min(ports)

    async def down(self) -> None:
        log.info("stopping", reason="localmesh down")
        self._stop.set()

    async def snapshot(self) -> Sequence[SnapshotResource]:
        snapshot = self.cache.snapshot
        return [
            SnapshotResource(
                type_url=r.type_url,
                name=r.name,
                version=r.version,
                json=json.dumps(r.json(), sort_keys=True),
            )
            for type_url in TYPE_ORDER
            for r in snapshot.resources(type_url).values()
        ]


def _hosts(config: Config) -> list[str]:
    return [s.host for s in config.services]


def _listen(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _check_port_free(address: str, port: int) -> None:
    """Fail before anything starts (hosts file, forwarders, Envoy) when the listener port
    is taken; Envoy would only NACK the listener later. Only "in use" counts: a low port
    may be bindable by Envoy (setcap) and not by us."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ListenerBindError(_listen(address, port), exc.strerror or str(exc)) from None


def _kubeconfig(opts: UpOptions) -> str | None:
    """--kubeconfig, else KUBECONFIG, else (under sudo) the invoking user's, not root's."""
    if opts.kubeconfig or os.environ.get("KUBECONFIG"):
        return opts.kubeconfig
    user = invoking_user()
    if user.uid != os.geteuid():
        candidate = Path(user.home) / ".kube" / "config"
        if candidate.exists():
            return str(candidate)
    return None


async def _quietly(what: str, stop: Callable[[], Awaitable[object]]) -> None:
    try:
        await stop()
    except Exception as exc:
        log.error("shutdown step failed", step=what, error=str(exc))
