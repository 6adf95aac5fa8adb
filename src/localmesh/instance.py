"""One running mesh: config → Kubernetes targets → forwarders → reconciler → xDS → Envoy.

`MeshInstance.run()` is what `localmesh up` (and `localmesh demo`) execute. It owns every
long-lived part and tears them down in the reverse order of their start:

    config        load + validate (a ConfigError stops here: nothing was started)
    runtime dir   instance lock (one `up` per --name), sockets, bootstrap
    cluster       credentials as kubectl finds them; entries resolved one by one
    gRPC server   ADS for Envoy + the control API (status, down, live dump), unix sockets
    reconciler    the one task that turns facts into MeshSpecs, then snapshots
    forwarders    one local listener per ready pod; up/down events feed the reconciler
    Envoy         started once from a static bootstrap; restarted if it dies
    /etc/hosts    a marked block, removed on exit (and after a crash, on the next start)

With `watch=True` edits of services.yaml are applied live (only the difference: new entries
get forwarders, removed ones lose theirs, routes follow over RDS); an invalid edit is logged
with its file:line and the last good config keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import grpc
import structlog

from localmesh.bootstrap import AdsMode, BootstrapOptions, build_bootstrap
from localmesh.config import Config, ServiceEntry, load_config
from localmesh.control import (
    POD_READY,
    EnvoyStatus,
    HostStatus,
    InstanceStatus,
    PodStatus,
    SnapshotResource,
    XdsTypeStatus,
    bind_unix_socket,
    register_control,
    secure_socket,
)
from localmesh.envoy import EnvoySupervisor, ListenerBindError, cluster_traffic
from localmesh.errors import ConfigError, LocalmeshError, TargetError
from localmesh.filewatch import SaveWatch
from localmesh.forward import ForwarderEvent, ForwardManager, ForwardOptions
from localmesh.hosts import HostsFile
from localmesh.kube import Cluster, ServiceKey
from localmesh.mesh import MeshSpec, cluster_name
from localmesh.reconciler import Reconciler, Route
from localmesh.runtime import InstanceLock, RuntimePaths, invoking_user, runtime_paths
from localmesh.xds.cache import SnapshotCache
from localmesh.xds.resources import TYPE_ORDER, to_json
from localmesh.xds.server import AdsService, prepare_socket_path
from localmesh.xds.snapshot import build_snapshot

log = structlog.get_logger(__name__)

FIRST_TARGETS_TIMEOUT = 15.0  # how long start-up waits for an entry's first forwarders
RETRY_UNRESOLVED_EVERY = 5.0  # entries whose service is missing are tried again this often


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


@dataclass
class _EntryState:
    entry: ServiceEntry
    key: ServiceKey | None = None
    error: str = ""
    last_reconnect: datetime | None = None
    last_reconnect_reason: str = ""


@dataclass
class _Started:
    """What has been started so far, so that stop() undoes exactly that."""

    saves: SaveWatch | None = None
    lock: InstanceLock | None = None
    server: grpc.aio.Server | None = None
    cluster: Cluster | None = None
    manager: ForwardManager | None = None
    envoy: EnvoySupervisor | None = None
    hosts: HostsFile | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class MeshInstance:
    """A running `localmesh up`; also the control API's provider (status, down, dump)."""

    def __init__(self, options: UpOptions, *, out: TextIO | None = None) -> None:
        self.options = options
        self.out = out or sys.stdout
        self.paths: RuntimePaths = runtime_paths(options.name, base=options.runtime_base)
        self.config: Config | None = None
        self.cache = SnapshotCache()
        self.reconciler = Reconciler(self._publish, listener_address=options.bind, listener_port=80)
        self._entries: dict[ServiceEntry, _EntryState] = {}
        self._started = _Started()
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._config_problem = ""
        self._started_at = datetime.now(UTC)
        self._arrivals = asyncio.Event()  # any forwarder event (start-up waits on it)

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
        config = load_config(opts.config_path)  # before anything starts: nothing to undo
        self.config = config
        if opts.watch:  # from here on no save is missed (and no inotify: fail now)
            self._started.saves = SaveWatch(opts.config_path)
        self.reconciler.set_routes((), listener_port=config.listener_port)
        if opts.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)

        user = invoking_user()
        owner_uid = user.uid if user.uid != os.geteuid() else None
        # First the name (a second `up --name X` must not touch X's hosts block), then the
        # hosts file: both fail before anything long-lived has started.
        self._started.lock = InstanceLock(self.paths, uid=owner_uid).acquire()
        _check_port_free(opts.bind, config.listener_port)
        hosts = HostsFile(opts.hosts_file, opts.name) if opts.edit_hosts else None
        if hosts is not None:
            update = hosts.ensure(_hosts(config), address=opts.bind)
            self._started.hosts = hosts
            for name in update.stale_removed:
                log.info("removed hosts entries left by a crashed run", mesh=name)
        cluster = await asyncio.to_thread(Cluster.connect, _kubeconfig(opts), opts.context)
        self._started.cluster = cluster

        await self._start_server(owner_uid)
        self._spawn("reconciler", self.reconciler.run)

        manager = ForwardManager(cluster, self._on_forwarder, ForwardOptions(bind="127.0.0.1"))
        await manager.start()
        self._started.manager = manager
        await self._apply(config)
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
        self._started.envoy = envoy
        await envoy.start()
        self._spawn("envoy supervision", envoy.join)  # a dead supervisor stops `up`
        await envoy.wait_listening(config.listener_port)
        await self._wait_in_sync()

        if hosts is not None:
            self._print("/etc/hosts updated successfully")
        self._print_forwards()
        self._print(f"envoy config: {self.paths.envoy_bootstrap}")
        self._print(f"listen: {_listen(opts.bind, config.listener_port)}")
        _freeze_heap()
        if opts.watch:
            self._spawn("watch services.yaml", self._watch_config)
        self._spawn("retry unresolved entries", self._retry_unresolved)

    async def stop(self) -> None:
        """Undo whatever start() did, newest first; safe to call more than once."""
        started, self._started = self._started, _Started()
        for task in started.tasks:
            task.cancel()
        for task in started.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        undone = []  # for the one line that ends a run
        if started.envoy is not None:
            undone.append("Envoy stopped")
            await _quietly("stop envoy", started.envoy.stop())
        if started.manager is not None:
            undone.append(f"port-forwards of {len(self._entries)} entries closed")
            await _quietly("close forwarders", started.manager.close())
        if started.hosts is not None:
            try:
                started.hosts.remove()
                undone.append(f"{self.options.hosts_file} entries removed")
            except LocalmeshError as exc:
                log.error("cannot remove hosts entries", error=str(exc))
        if started.cluster is not None:
            await _quietly("close cluster watches", started.cluster.close())
        if started.server is not None:
            # Last: a `localmesh down` waiting for its reply gets it before the socket goes.
            await started.server.stop(grace=1.0)
        if started.saves is not None:
            started.saves.close()
        if started.lock is not None:
            started.lock.release()
            undone.append("runtime files removed")
        if undone and self._ready.is_set():  # a run that served (a failed start says why)
            self._print("stopped: " + ", ".join(undone))
        if self.options.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("stopping", signal=sig.name)
        self._stop.set()

    def _spawn(self, name: str, run: Callable[[], object]) -> None:
        async def guarded() -> None:
            try:
                await run()  # type: ignore[misc]
            except asyncio.CancelledError:
                raise
            except Exception:
                # A dead core task would leave a mesh that silently stops following changes.
                log.exception("task died; stopping", task=name)
                self._stop.set()

        self._started.tasks.append(asyncio.create_task(guarded(), name=name))

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
        self._started.server = server
        for path in (self.paths.xds_socket, self.paths.control_socket):
            secure_socket(path, owner_uid)

    # -- config ---------------------------------------------------------------------------
    async def _apply(self, config: Config) -> None:
        """Make forwarders and routes follow `config` (only the difference is touched)."""
        manager = self._started.manager
        assert manager is not None
        wanted = set(config.services)
        for entry in [e for e in self._entries if e not in wanted]:
            state = self._entries.pop(entry)
            if state.key is not None:
                await manager.remove(entry)
        for entry in config.services:
            if entry not in self._entries:
                self._entries[entry] = state = _EntryState(entry)
                await self._add(state)
            else:
                self._entries[entry].entry = entry  # keep the newest source location
        self.config = config
        self._set_routes()

    async def _add(self, state: _EntryState) -> None:
        manager = self._started.manager
        assert manager is not None
        try:
            service = await manager.add(state.entry)
        except TargetError as exc:
            # Retried every few seconds: say it loudly once, then only when the reason changes.
            report = log.error if str(exc) != state.error else log.debug
            state.error = str(exc)
            report("cannot forward", host=state.entry.host, error=state.error)
            return
        state.key, state.error = service.key, ""

    def _set_routes(self) -> None:
        assert self.config is not None
        routes = [
            Route(
                host=s.entry.host,
                cluster=cluster_name(s.key.namespace, s.key.service, s.key.port, s.entry.protocol),
                protocol=s.entry.protocol,
                backend=str(s.key),
            )
            for s in self._entries.values()
            if s.key is not None
        ]
        self.reconciler.set_routes(routes, listener_port=self.config.listener_port)

    async def _retry_unresolved(self) -> None:
        while True:
            await asyncio.sleep(RETRY_UNRESOLVED_EVERY)
            pending = [s for s in self._entries.values() if s.key is None]
            for state in pending:
                await self._add(state)
            if any(s.key is not None for s in pending):
                self._set_routes()

    async def _watch_config(self) -> None:
        assert self._started.saves is not None
        with self._started.saves as saves:
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
            config = await asyncio.to_thread(_load_without_gc, self.options.config_path)
        except ConfigError as exc:
            self._config_problem = f"services.yaml is invalid, serving the previous version: {exc}"
            log.error("invalid services.yaml; keeping the previous config", error=str(exc))
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
        await self._apply(config)
        hosts = self._started.hosts
        if hosts is not None:
            try:
                hosts.ensure(_hosts(config), address=self.options.bind)
            except LocalmeshError as exc:
                log.error("cannot update hosts entries", error=str(exc))
        log.info("services.yaml applied", services=len(config.services))
        return True

    # -- forwarders → reconciler → xDS ----------------------------------------------------
    def _on_forwarder(self, event: ForwarderEvent) -> None:
        if event.up:
            self.reconciler.endpoint_up(str(event.key), event.endpoint)
        else:
            self.reconciler.endpoint_down(str(event.key), event.endpoint)
            for state in self._entries.values():
                if state.key == event.key:
                    state.last_reconnect = datetime.now(UTC)
                    state.last_reconnect_reason = f"pod {event.pod} went away"
        self._arrivals.set()

    async def _publish(self, spec: MeshSpec) -> None:
        started = time.perf_counter()
        # The cache's current snapshot carries the bytes of every unchanged piece.
        snapshot = build_snapshot(spec, self.cache.snapshot)
        self.cache.set_snapshot(snapshot)
        log.debug(
            "snapshot served",
            version=snapshot.version,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _wait_first_targets(self) -> None:
        """Until every resolved entry has as many forwarders as it has ready pods (bounded:
        an entry whose pods are not ready yet is served when they are)."""
        manager = self._started.manager
        assert manager is not None
        try:
            async with asyncio.timeout(FIRST_TARGETS_TIMEOUT):
                while not self._all_forwarded(manager):
                    self._arrivals.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):  # also re-check the watches' state
                            await self._arrivals.wait()
        except TimeoutError:
            log.warning("some services have no forwarders yet; they join when pods are ready")

    def _all_forwarded(self, manager: ForwardManager) -> bool:
        services = manager.services
        for state in self._entries.values():
            if state.key is None:
                continue
            service = services.get(state.key)
            if service is None or service.last_update is None:
                return False
            if len(service.forwarders) < len(service.last_update.targets):
                return False
        return True

    async def _wait_in_sync(self) -> None:
        await self.reconciler.wait_published(lambda spec: spec == self.reconciler.desired())
        async with asyncio.timeout(15):
            await self.cache.wait_for_ack()

    # -- output ---------------------------------------------------------------------------
    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _print_forwards(self) -> None:
        for state in self._entries.values():
            entry = state.entry
            target = f"{entry.namespace}/{entry.service}:{entry.port_ref}"
            if state.key is None:
                self._print(f"pf: {entry.host} -> {target} not forwarded: {state.error}")
                continue
            target = f"{entry.namespace}/{entry.service}:{state.key.port}"
            via = ", ".join(
                f"{e.address}:{e.port}" for e in self.reconciler.endpoints(str(state.key))
            )
            self._print(f"pf: {entry.host} -> {target} via {via or '(no ready pods yet)'}")

    # -- control API provider -------------------------------------------------------------
    async def status(self) -> InstanceStatus:
        envoy = self._started.envoy
        traffic = {}
        if envoy is not None and envoy.running:
            with contextlib.suppress(Exception):
                traffic = cluster_traffic(await envoy.stats(r"^cluster\."))
        manager = self._started.manager
        services = manager.services if manager is not None else {}
        hosts = []
        for state in self._entries.values():
            entry = state.entry
            pods: list[PodStatus] = []
            cluster = ""
            target_port = 0
            if state.key is not None:
                cluster = cluster_name(
                    state.key.namespace, state.key.service, state.key.port, entry.protocol
                )
                service = services.get(state.key)
                for target, forwarder in sorted((service.forwarders if service else {}).items()):
                    address, port = forwarder.address
                    target_port = target.port
                    pods.append(
                        PodStatus(
                            name=target.pod,
                            local_address=address,
                            local_port=port,
                            state=POD_READY,
                            active_connections=forwarder.stats.active,
                            last_error=forwarder.stats.last_error or "",
                        )
                    )
            counts = traffic.get(cluster)
            hosts.append(
                HostStatus(
                    host=entry.host,
                    namespace=entry.namespace,
                    service=entry.service,
                    port=entry.port_ref,
                    type=entry.protocol.value,
                    cluster=cluster,
                    target_port=target_port,
                    pods=tuple(pods),
                    last_reconnect=state.last_reconnect,
                    last_reconnect_reason=state.last_reconnect_reason,
                    requests=counts.requests if counts else 0,
                    errors=(counts.responses_5xx + counts.connect_failures) if counts else 0,
                    error=state.error,
                )
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
            hosts=tuple(hosts),
            xds=self._xds_status(),
            config_path=str(self.options.config_path),
            started_at=self._started_at,
            extra_problems=(self._config_problem,) if self._config_problem else (),
        )

    async def _served_port(self, configured: int) -> int:
        """The port Envoy listens on: the configured one, unless Envoy could not bind it
        and kept its previous listener (the xDS status then shows the rejection)."""
        envoy = self._started.envoy
        if envoy is None or not envoy.running or configured not in envoy.listener_errors:
            return configured
        ports = await envoy.listening_ports()
        return configured if not ports or configured in ports else min(ports)

    def _xds_status(self) -> tuple[XdsTypeStatus, ...]:
        snapshot = self.cache.snapshot
        found: list[XdsTypeStatus] = []
        for stream in self.cache.status():
            for t in stream.types:
                found.append(
                    XdsTypeStatus(
                        type_url=t.type_url,
                        served_version=snapshot.type_version(t.type_url),
                        acked_version=t.acked_version,
                        nack=t.last_error or "",
                    )
                )
        return tuple(found)

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
                json=json.dumps(to_json(r.message()), sort_keys=True),
            )
            for type_url in TYPE_ORDER
            for r in snapshot.resources(type_url).values()
        ]


def _load_without_gc(path: Path) -> Config:
    """load_config with the cyclic GC paused: the parse allocates ~100k containers that all
    live until it returns, so the collections it triggers (over everything not frozen, too)
    only cost time: 40-120 ms of CPU per parse of 1,000 entries instead of ~30 ms while
    other traffic flows. Reference counting still frees everything as usual."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return load_config(path)
    finally:
        if paused:
            gc.enable()


def _freeze_heap() -> None:
    """Exempt everything start-up built from the cyclic GC's full collections.

    With 1,000 services that is ~1M long-lived objects: every full collection walked all
    of them (~300 ms of CPU, holding the GIL), and the objects one reload allocates were
    enough to trigger one every other edit. Start-up garbage is collected first; what is
    frozen can only ever leak if it later becomes cyclic garbage, which bounds it by the
    start-up heap that was live anyway.
    """
    gc.collect()
    gc.freeze()


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


async def _quietly(what: str, awaitable: object) -> None:
    try:
        await awaitable  # type: ignore[misc]
    except Exception as exc:
        log.error("shutdown step failed", step=what, error=str(exc))
