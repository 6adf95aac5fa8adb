"""Runs pods: gives each its loopback IP, starts its containers, reports status.

Each container is one of three kinds, by its image:
- a built-in workload (`localmesh.dev/sandbox/<workload>`): a server in this process;
- localmesh's own image (`localmesh:*`, `*/localmesh:*`): its command runs as a real
  subprocess (see processes.py), restarted with CrashLoopBackOff as a kubelet does, its
  readiness and liveness probes honoured;
- anything else: the image cannot be pulled (ErrImagePull, then ImagePullBackOff).

A pod is Running once its containers started and Ready when all are ready and its ready
delay (annotation `sandbox.localmesh.dev/ready-delay`, else the cluster default) passed,
unless a fault forces it unready. A deleted pod keeps serving for the termination delay
(its endpoints show it terminating, as the real kubelet keeps probing a terminating pod);
its processes get SIGTERM at once and SIGKILL after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import hashlib
import shutil
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from localmesh.sandbox import errors
from localmesh.sandbox.ips import NO_PER_POD_ADDRESSES, LoopbackAllocator
from localmesh.sandbox.probes import Probe, ProbeState, run_probe
from localmesh.sandbox.processes import (
    SERVICEACCOUNT_DIR_ENV,
    TOKEN_SECONDS,
    ContainerProcess,
    NodeConfig,
    StartError,
    argv_for,
    container_env,
    runs_as_process,
    write_service_account,
)
from localmesh.sandbox.resources import CONFIGMAPS, PODS, SERVICEACCOUNTS
from localmesh.sandbox.store import Obj, StoredEvent, now_rfc3339
from localmesh.sandbox.workloads import (
    Listener,
    PodInfo,
    plain_env,
    start_listener,
    workload_of_image,
)

if TYPE_CHECKING:
    from localmesh.sandbox.cluster import Cluster

log = structlog.get_logger(__name__)

NODE_NAME = "sandbox-node"
READY_DELAY_ANNOTATION = "sandbox.localmesh.dev/ready-delay"
WORKLOAD_ANNOTATION = "sandbox.localmesh.dev/workload"
_BIND_ATTEMPTS = 20
BUILTIN, PROCESS, UNPULLABLE = "builtin", "process", "unpullable"
MAX_BACKOFF = 300.0  # the kubelet's cap for restart and image pull back-off
_LOG_LINES = 1000

LogLine = tuple[str, str]  # (RFC 3339 time, text)


@dataclass(eq=False)
class ContainerRuntime:
    """One container of a pod: its kind, state as the API shows it, restarts and logs."""

    name: str
    image: str
    kind: str
    spec: dict[str, Any]
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    started: bool = False  # has run at least once
    startup_done: bool = True  # its startup probe passed (or it has none)
    ready: bool = False
    logs: deque[LogLine] = field(default_factory=lambda: deque(maxlen=_LOG_LINES))
    previous: list[LogLine] | None = None
    process: ContainerProcess | None = None
    task: asyncio.Task[Any] | None = None
    appended: asyncio.Event = field(default_factory=asyncio.Event)  # replaced per line
    total: int = 0  # lines ever logged by this run (the deque keeps the last ones)

    def log(self, line: str) -> None:
        self.logs.append((now_rfc3339(), line))
        self.total += 1
        self.appended.set()
        self.appended = asyncio.Event()

    @property
    def running(self) -> bool:
        return "running" in self.state


@dataclass(eq=False)
class PodRuntime:
    namespace: str
    name: str
    uid: str
    ip: str = ""
    # (workload, port) of every container port; listeners of the ports that are up.
    ports: list[tuple[str, str, int]] = field(default_factory=list)  # (container, workload, port)
    listeners: dict[int, Listener] = field(default_factory=dict)
    started_at: str = ""
    delay_elapsed: bool = False
    forced_ready: bool | None = None
    terminating: bool = False
    task: asyncio.Task[Any] | None = None
    containers: dict[str, ContainerRuntime] = field(default_factory=dict)

    def log(self, line: str) -> None:
        """A line of the built-in workloads' log (the first container's)."""
        target = next(
            (c for c in self.containers.values() if c.kind == BUILTIN),
            next(iter(self.containers.values()), None),
        )
        if target is not None:
            target.log(line)

    @property
    def ready(self) -> bool:
        return (
            bool(self.ip)
            and self.delay_elapsed
            and self.forced_ready is not False
            and all(c.ready for c in self.containers.values())
        )


def _container_id(uid: str, name: str) -> str:
    return "containerd://" + hashlib.sha256(f"{uid}/{name}".encode()).hexdigest()


class Kubelet:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.ips = LoopbackAllocator()
        self.runtimes: dict[str, PodRuntime] = {}  # by pod uid
        self._stopping: set[asyncio.Task[Any]] = set()
        # Set by the sandbox: without it, localmesh-image containers cannot start.
        self.node: NodeConfig | None = None
        self._objects_changed = asyncio.Event()  # a service account or config map appeared

    # ---- lookups used by faults and the API server -------------------------------------
    def runtime(self, namespace: str, name: str) -> PodRuntime:
        pod = self.cluster.store.peek(PODS, namespace, name)
        rt = self.runtimes.get(pod["metadata"]["uid"]) if pod else None
        if rt is None:
            raise errors.not_found("pods", name)
        return rt

    # ---- reacting to the store -----------------------------------------------------------
    def logs(
        self, namespace: str, name: str, container: str | None, previous: bool = False
    ) -> list[LogLine]:
        """A container's log lines (`kubectl logs`), with the API server's errors."""
        rt = self.runtime(namespace, name)
        if container is None:
            if len(rt.containers) > 1:
                names = " ".join(rt.containers)
                raise errors.bad_request(
                    f"a container name must be specified for pod {name}, choose one of: [{names}]"
                )
            c = next(iter(rt.containers.values()), None)
        else:
            c = rt.containers.get(container)
        if c is None:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        if previous:
            if c.previous is None:
                raise errors.bad_request(
                    f'previous terminated container "{c.name}" in pod "{name}" not found'
                )
            return list(c.previous)
        if not c.started:
            reason = (c.state.get("waiting") or {}).get("reason", "ContainerCreating")
            detail = (
                "trying and failing to pull image"
                if reason in ("ErrImagePull", "ImagePullBackOff")
                else reason
            )
            raise errors.bad_request(
                f'container "{c.name}" in pod "{name}" is waiting to start: {detail}'
            )
        return list(c.logs)

    async def follow(
        self, namespace: str, name: str, container: str | None
    ) -> AsyncGenerator[LogLine | None, None]:
        """`kubectl logs -f`: the log so far, then each new line until this run of the
        container ends; None about every second while nothing happens."""
        lines = self.logs(namespace, name, container)
        rt = self.runtime(namespace, name)
        c = rt.containers[container] if container else next(iter(rt.containers.values()))
        run, sent = c.logs, c.total
        for line in lines:
            yield line
        while True:
            if c.logs is not run or rt.uid not in self.runtimes:
                return  # restarted or deleted: a new run has its own log
            new = min(c.total - sent, len(run))  # a full deque has dropped the oldest
            for line in list(run)[len(run) - new :] if new else []:
                yield line
            sent = c.total
            if not c.running and c.kind != BUILTIN:
                return
            waiter = c.appended
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), 1.0)
            yield None

    def on_event(self, ev: StoredEvent) -> None:
        if ev.rtype in (SERVICEACCOUNTS, CONFIGMAPS) or ev.rtype.plural == "secrets":
            # Containers waiting for their service account or a referenced config map retry.
            self._objects_changed.set()
            self._objects_changed = asyncio.Event()
            return
        if ev.rtype is not PODS:
            return
        uid = ev.obj["metadata"]["uid"]
        if ev.type == "ADDED":
            new = PodRuntime(ev.obj["metadata"]["namespace"], ev.obj["metadata"]["name"], uid)
            if self.cluster.faults.held_unready(ev.obj):
                new.forced_ready = False
            self.runtimes[uid] = new
            new.task = self.cluster.tasks.spawn(self._run(new), f"pod/{new.namespace}/{new.name}")
        elif ev.type == "DELETED":
            rt = self.runtimes.pop(uid, None)
            if rt is not None:
                task = self.cluster.tasks.spawn(
                    self._stop(rt), f"stop-pod/{rt.namespace}/{rt.name}"
                )
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)
        elif ev.obj["metadata"].get("deletionTimestamp"):
            rt = self.runtimes.get(uid)
            if rt is not None and not rt.terminating:
                rt.terminating = True
                self.cluster.tasks.spawn(self._terminate(rt), f"terminate/{rt.namespace}/{rt.name}")

    # ---- pod lifecycle -------------------------------------------------------------------
    def _classify(self, pod: Obj) -> dict[str, ContainerRuntime]:
        override = pod["metadata"].get("annotations", {}).get(WORKLOAD_ANNOTATION)
        patterns = self.node.process_images if self.node else ()
        out = {}
        for c in pod["spec"].get("containers", []):
            image = c.get("image", "")
            if override or workload_of_image(image):
                kind = BUILTIN
            elif runs_as_process(image, patterns):
                kind = PROCESS
            else:
                kind = UNPULLABLE
            out[c["name"]] = ContainerRuntime(c["name"], image, kind, c)
        return out

    def _containers(self, pod: Obj) -> list[tuple[str, str, int]]:
        """(container, workload, port) of every built-in workload's TCP port."""
        override = pod["metadata"].get("annotations", {}).get(WORKLOAD_ANNOTATION)
        out = []
        for c in pod["spec"].get("containers", []):
            workload = override or workload_of_image(c.get("image", ""))
            for p in c.get("ports") or []:
                if workload and p.get("protocol", "TCP") == "TCP":
                    out.append((c["name"], workload, int(p["containerPort"])))
        return out

    def _pod_info(self, rt: PodRuntime, ip: str, container: str) -> PodInfo:
        pod = self.cluster.store.peek(PODS, rt.namespace, rt.name)
        env = plain_env(pod, container)
        return PodInfo(rt.name, rt.namespace, ip, env, self.cluster.dns, self.ips.listen_host)

    async def _bind(self, rt: PodRuntime) -> None:
        """Take a free loopback IP and start every listener on it (another IP if taken)."""
        for _ in range(_BIND_ATTEMPTS):
            ip = self.ips.allocate()
            # Shared with the runtime at once, so a pod deleted mid-start closes them too.
            started: dict[int, Listener] = {}
            rt.ip, rt.listeners = ip, started
            try:
                for container, workload, port in rt.ports:
                    if port not in started:
                        info = self._pod_info(rt, ip, container)
                        started[port] = await start_listener(workload, info, port)
            except OSError as exc:
                rt.ip, rt.listeners = "", {}
                for listener in started.values():
                    await listener.close()
                self.ips.release(ip)
                if exc.errno not in (errno.EADDRINUSE, 98, errno.EADDRNOTAVAIL):
                    raise
                continue
            return
        raise RuntimeError(f"no free loopback address for pod {rt.namespace}/{rt.name}")

    async def _run(self, rt: PodRuntime) -> None:
        pod = self.cluster.store.peek(PODS, rt.namespace, rt.name)
        if pod is None:
            return
        rt.ports = self._containers(pod)
        rt.containers = self._classify(pod)
        self.cluster.record_event(
            pod,
            "Scheduled",
            f"Successfully assigned {rt.namespace}/{rt.name} to {NODE_NAME}",
            component="default-scheduler",
        )
        await self._bind(rt)
        rt.started_at = now_rfc3339()
        for c in rt.containers.values():
            if c.kind == BUILTIN:
                c.state = {"running": {"startedAt": rt.started_at}}
                c.started = c.ready = True
                self.cluster.record_event(pod, "Started", f"Started container {c.name}")
            else:
                run = self._supervise(rt, c) if c.kind == PROCESS else self._pull_backoff(rt, c)
                c.task = self.cluster.tasks.spawn(
                    run, f"container/{rt.namespace}/{rt.name}/{c.name}"
                )
        for _, workload, port in rt.ports:
            rt.log(f"{workload} listening on {rt.ip}:{port}")
        self.sync_status(rt)
        annotations = pod["metadata"].get("annotations", {})
        delay = float(annotations.get(READY_DELAY_ANNOTATION, self.cluster.faults.ready_delay))
        if delay > 0:
            await asyncio.sleep(delay)  # simulated slow start, not synchronisation
        rt.delay_elapsed = True
        self.sync_status(rt)

    async def _terminate(self, rt: PodRuntime) -> None:
        self.sync_status(rt)
        pod = self.cluster.store.peek(PODS, rt.namespace, rt.name)
        if pod is not None:
            for c in pod["spec"].get("containers", []):
                self.cluster.record_event(pod, "Killing", f"Stopping container {c['name']}")
        grace = float((pod or {}).get("metadata", {}).get("deletionGracePeriodSeconds", 0) or 0)
        delay = min(grace, self.cluster.faults.termination_delay)
        processes = [c.process.stop(grace) for c in rt.containers.values() if c.process]

        async def keep_serving() -> None:
            if delay > 0:
                await asyncio.sleep(delay)  # a terminating pod keeps serving for a while

        await asyncio.gather(keep_serving(), *processes)
        if rt.task is not None:
            rt.task.cancel()
        await self._stop_containers(rt)
        await self._close_listeners(rt)
        with contextlib.suppress(errors.ApiError):
            self.cluster.store.delete(PODS, rt.namespace, rt.name)

    async def _stop(self, rt: PodRuntime) -> None:
        rt.terminating = True
        if rt.task is not None:
            rt.task.cancel()
        await self._stop_containers(rt)
        await self._close_listeners(rt)
        if rt.ip:
            self.ips.release(rt.ip)

    async def _stop_containers(self, rt: PodRuntime) -> None:
        """End every container task; their processes are stopped on the way out."""
        tasks = [c.task for c in rt.containers.values() if c.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.node is not None:
            shutil.rmtree(self.pod_dir(rt), ignore_errors=True)

    async def _close_listeners(self, rt: PodRuntime) -> None:
        listeners, rt.listeners = list(rt.listeners.values()), {}
        for listener in listeners:
            await listener.close()

    async def stopped(self) -> None:
        """Wait until every deleted pod's servers are closed."""
        while self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    async def shutdown(self) -> None:
        runtimes = list(self.runtimes.values())
        for rt in runtimes:
            rt.terminating = True
        await asyncio.gather(*(self._stop_containers(rt) for rt in runtimes))
        for rt in runtimes:
            await self._close_listeners(rt)
        self.runtimes.clear()

    # ---- containers that are processes or cannot be pulled -------------------------------
    def pod_dir(self, rt: PodRuntime) -> Path:
        """The pod's own directory (its service-account files, its processes' cwd)."""
        assert self.node is not None
        return self.node.pods_dir / f"{rt.namespace}_{rt.name}_{rt.uid}"

    def _backoff(self, attempt: int) -> float:
        """10s, 20s, 40s ... 300s (the base is `faults.backoff_base`)."""
        base = self.cluster.faults.backoff_base
        return float(min(base * 2 ** max(attempt, 0), MAX_BACKOFF))

    def _event(self, rt: PodRuntime, reason: str, message: str, warning: bool = False) -> None:
        pod = self.cluster.store.peek(PODS, rt.namespace, rt.name)
        if pod is not None and pod["metadata"]["uid"] == rt.uid:
            self.cluster.record_event(
                pod, reason, message, type_="Warning" if warning else "Normal"
            )

    async def _retry_later(self, seconds: float) -> None:
        """Wait for a referenced object to appear, or `seconds` at most."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._objects_changed.wait(), seconds)

    async def _pull_backoff(self, rt: PodRuntime, c: ContainerRuntime) -> None:
        """An image the sandbox cannot run: pulls fail and back off, as for a wrong name."""
        ref = c.image if "/" in c.image.split(":")[0] else f"docker.io/library/{c.image}"
        if ":" not in ref.rsplit("/", 1)[-1] and "@" not in ref:
            ref += ":latest"
        failure = (
            f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref}": '
            f'failed to resolve reference "{ref}": {ref}: not found'
        )
        attempt = 0
        while not rt.terminating:
            self._event(rt, "Pulling", f'Pulling image "{c.image}"')
            self._event(rt, "Failed", f'Failed to pull image "{c.image}": {failure}', True)
            self._event(rt, "Failed", "Error: ErrImagePull", True)
            c.state = {"waiting": {"reason": "ErrImagePull", "message": failure}}
            self.sync_status(rt)
            await asyncio.sleep(min(1.0, self._backoff(attempt)))  # the next sync of the pod
            back_off = f'Back-off pulling image "{c.image}"'
            self._event(rt, "BackOff", back_off)
            self._event(rt, "Failed", "Error: ImagePullBackOff", True)
            c.state = {"waiting": {"reason": "ImagePullBackOff", "message": back_off}}
            self.sync_status(rt)
            await asyncio.sleep(self._backoff(attempt))  # the image pull back-off
            attempt += 1

    def _mount_service_account(self, rt: PodRuntime, pod: Obj) -> str | None:
        """Project the token, CA and namespace into the pod's directory; None when the
        pod opts out. ValueError when the service account does not exist."""
        assert self.node is not None
        spec = pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        sa = self.cluster.store.peek(SERVICEACCOUNTS, rt.namespace, account)
        if sa is None:
            raise ValueError(f'serviceaccount "{account}" not found')
        mount = spec.get("automountServiceAccountToken")
        if mount is None:
            mount = sa.get("automountServiceAccountToken", True)
        if not mount:
            return None
        token, _ = self.node.identities.issue(rt.namespace, account, TOKEN_SECONDS, pod=pod)
        directory = self.pod_dir(rt) / "serviceaccount"
        write_service_account(directory, token, self.node.ca_pem, rt.namespace)
        return str(directory)

    def _prepare(
        self, rt: PodRuntime, c: ContainerRuntime, pod: Obj
    ) -> tuple[list[str], dict[str, str]]:
        """argv and environment of the next run. ValueError: the container must wait
        (CreateContainerConfigError); StartError: it fails to start."""
        assert self.node is not None
        # The pod's directory is its processes' working directory, token or not.
        self.pod_dir(rt).mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            sa_dir = self._mount_service_account(rt, pod)
        except ValueError as exc:
            volume = f"kube-api-access-{rt.uid[:5]}"
            raise ValueError(f'MountVolume.SetUp failed for volume "{volume}" : {exc}') from None
        env = container_env(pod, c.spec, self.cluster.store, self.node)
        if sa_dir is not None:
            env[SERVICEACCOUNT_DIR_ENV] = sa_dir
        return argv_for(c.spec, env), env

    async def _supervise(self, rt: PodRuntime, c: ContainerRuntime) -> None:
        """Run the container's process, restart it by the pod's restartPolicy with the
        kubelet's back-off, probe it; stop it when the task is cancelled."""
        crashes = 0
        try:
            # Neither changes while the sandbox runs: the container never starts.
            if not rt.terminating and (self.ips.shared or self.node is None):
                if self.ips.shared:
                    # Its process binds the pod IP (POD_IP), which this machine cannot give.
                    reason = "CreateContainerError"
                    message = f"a process container needs its own pod IP: {NO_PER_POD_ADDRESSES}"
                    self._event(rt, "Failed", message, True)
                else:
                    reason = "CreateContainerConfigError"
                    message = "the sandbox runs no process containers here"
                c.state = {"waiting": {"reason": reason, "message": message}}
                self.sync_status(rt)
                return
            while not rt.terminating:
                pod = self.cluster.store.peek(PODS, rt.namespace, rt.name)
                if pod is None or pod["metadata"]["uid"] != rt.uid:
                    return
                try:
                    argv, env = self._prepare(rt, c, pod)
                except ValueError as exc:
                    mount = str(exc).startswith("MountVolume")
                    self._event(rt, "FailedMount" if mount else "Failed", str(exc), True)
                    reason = "ContainerCreating" if mount else "CreateContainerConfigError"
                    c.state = {"waiting": {"reason": reason, "message": str(exc)}}
                    self.sync_status(rt)
                    await self._retry_later(self._backoff(0))
                    continue
                except StartError as exc:
                    started = finished = now_rfc3339()
                    c.state = {
                        "terminated": {
                            "exitCode": 128,
                            "reason": "StartError",
                            "message": str(exc),
                            "startedAt": started,
                            "finishedAt": finished,
                            "containerID": _container_id(rt.uid, c.name),
                        }
                    }
                    self._event(rt, "Failed", f"Error: {exc}", True)
                    code = 128
                else:
                    code = await self._run_once(rt, c, argv, env)
                if rt.terminating:
                    return
                policy = self._pod_spec(rt).get("restartPolicy", "Always")
                if policy == "Never" or (policy == "OnFailure" and code == 0):
                    self.sync_status(rt)
                    return
                c.last_state = {"terminated": c.state["terminated"]}
                self.sync_status(rt)
                crashes += 1
                delay = 0.0 if crashes == 1 else self._backoff(crashes - 2)
                if delay > 0:
                    where = f"{rt.name}_{rt.namespace}({rt.uid})"
                    c.state = {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off {delay:g}s restarting failed container="
                            f"{c.name} pod={where}",
                        }
                    }
                    self._event(
                        rt,
                        "BackOff",
                        f"Back-off restarting failed container {c.name} in pod {where}",
                        True,
                    )
                    self.sync_status(rt)
                    await asyncio.sleep(delay)  # the restart back-off
                c.restart_count += 1
        finally:
            if c.process is not None:
                await c.process.stop(2.0)

    def _pod_spec(self, rt: PodRuntime) -> dict[str, Any]:
        pod = self.cluster.store.peek(PODS, rt.namespace, rt.name)
        spec: dict[str, Any] = (pod or {}).get("spec", {})
        return spec

    async def _run_once(
        self, rt: PodRuntime, c: ContainerRuntime, argv: list[str], env: dict[str, str]
    ) -> int:
        """One run of the process: start, probe, wait for its exit; returns the exit code."""
        if c.started:
            c.previous, c.logs, c.total = list(c.logs), deque(maxlen=_LOG_LINES), 0
        self._event(rt, "Pulled", f'Container image "{c.image}" already present on machine')
        self._event(rt, "Created", f"Created container {c.name}")
        process = ContainerProcess(argv, env, self.pod_dir(rt), c.log)
        started = now_rfc3339()
        try:
            await process.start()
        except OSError as exc:
            c.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(exc),
                    "startedAt": started,
                    "finishedAt": now_rfc3339(),
                    "containerID": _container_id(rt.uid, c.name),
                }
            }
            return 128
        c.process = process
        self._event(rt, "Started", f"Started container {c.name}")
        c.state = {"running": {"startedAt": started}}
        c.started = True
        c.ready = False
        c.startup_done = "startupProbe" not in c.spec
        self.sync_status(rt)
        probes = asyncio.create_task(self._probes(rt, c))
        try:
            code = await process.wait()
        finally:
            probes.cancel()
            await asyncio.gather(probes, return_exceptions=True)
        c.process = None
        c.ready = False
        c.state = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": started,
                "finishedAt": now_rfc3339(),
                "containerID": _container_id(rt.uid, c.name),
            }
        }
        return code

    async def _probes(self, rt: PodRuntime, c: ContainerRuntime) -> None:
        """The startup probe until it passes, then readiness and liveness probes."""
        ports = {
            p["name"]: int(p["containerPort"]) for p in c.spec.get("ports") or [] if p.get("name")
        }
        startup = c.spec.get("startupProbe")
        if startup is not None:
            probe = Probe(startup, rt.ip, ports)
            state = ProbeState.of(probe)
            await asyncio.sleep(float(startup.get("initialDelaySeconds") or 0))  # its schedule
            while not state.passing:
                ok, message = await probe.run()
                state.record(ok)
                if not ok and state.failures == 1:
                    self._event(rt, "Unhealthy", f"Startup probe failed: {message}", True)
                if state.failures >= state.failure_threshold and c.process is not None:
                    self._event(
                        rt, "Killing", f"Container {c.name} failed startup probe, will be restarted"
                    )
                    grace = float(self._pod_spec(rt).get("terminationGracePeriodSeconds", 30))
                    await c.process.stop(grace)
                    return
                if not state.passing:
                    await asyncio.sleep(probe.setting("periodSeconds"))  # its schedule
        readiness, liveness = c.spec.get("readinessProbe"), c.spec.get("livenessProbe")
        c.startup_done = True
        c.ready = readiness is None
        self.sync_status(rt)
        running = []
        if readiness is not None:
            running.append(self._probe(rt, c, Probe(readiness, rt.ip, ports), liveness=False))
        if liveness is not None:
            running.append(self._probe(rt, c, Probe(liveness, rt.ip, ports), liveness=True))
        await asyncio.gather(*running)

    async def _probe(
        self, rt: PodRuntime, c: ContainerRuntime, probe: Probe, *, liveness: bool
    ) -> None:
        kind = "Liveness" if liveness else "Readiness"
        state = ProbeState.of(probe, passing=liveness)

        async def on_result(ok: bool, message: str) -> None:
            changed = state.record(ok)
            if not ok and state.failures == 1:
                self._event(rt, "Unhealthy", f"{kind} probe failed: {message}", True)
            if liveness:
                if changed and not state.passing and c.process is not None:
                    self._event(
                        rt,
                        "Killing",
                        f"Container {c.name} failed liveness probe, will be restarted",
                    )
                    grace = float(self._pod_spec(rt).get("terminationGracePeriodSeconds", 30))
                    await c.process.stop(grace)
            elif changed:
                c.ready = state.passing
                self.sync_status(rt)

        await run_probe(probe, on_result)

    # ---- faults --------------------------------------------------------------------------
    async def kill_listener(self, rt: PodRuntime, port: int | None) -> None:
        for p in [port] if port is not None else list(rt.listeners):
            listener = rt.listeners.pop(p, None)
            if listener is not None:
                rt.log(f"listener on port {p} killed")
                await listener.close()

    async def revive_listener(self, rt: PodRuntime, port: int | None) -> None:
        for container, workload, p in rt.ports:
            if (port is None or p == port) and p not in rt.listeners:
                rt.listeners[p] = await start_listener(
                    workload, self._pod_info(rt, rt.ip, container), p
                )
                rt.log(f"listener on port {p} restarted")

    # ---- status --------------------------------------------------------------------------
    def _phase(self, rt: PodRuntime) -> str:
        cs = list(rt.containers.values())
        if any(not c.started for c in cs):
            return "Pending"
        policy = self._pod_spec(rt).get("restartPolicy", "Always")
        done = [c.state.get("terminated") for c in cs]
        if policy != "Always" and all(done):
            failed = any(t and t.get("exitCode") for t in done)
            if policy == "Never" or not failed:
                return "Failed" if failed else "Succeeded"
        return "Running"

    def sync_status(self, rt: PodRuntime) -> None:
        """Write the pod's status as the kubelet sees it now (no write when unchanged)."""
        pod = self.cluster.store.peek(PODS, rt.namespace, rt.name)
        if pod is None or pod["metadata"]["uid"] != rt.uid:
            return
        new = copy.deepcopy(pod)
        new["spec"]["nodeName"] = NODE_NAME
        old_status = pod.get("status", {})
        ready = rt.ready
        ts = now_rfc3339()

        def cond(type_: str, status: bool) -> dict[str, Any]:
            prev = next((c for c in old_status.get("conditions", []) if c["type"] == type_), None)
            value = "True" if status else "False"
            if prev is not None and prev["status"] == value:
                return dict(prev)
            return {"type": type_, "status": value, "lastProbeTime": None, "lastTransitionTime": ts}

        containers = []
        gates_open = rt.delay_elapsed and rt.forced_ready is not False
        for c in rt.containers.values():
            entry: dict[str, Any] = {
                "name": c.name,
                "image": c.image,
                "imageID": c.image if c.started else "",
                "ready": c.ready and gates_open,
                "started": c.running and c.startup_done,
                "restartCount": c.restart_count,
                "state": copy.deepcopy(c.state),
                "lastState": copy.deepcopy(c.last_state),
            }
            if c.started:
                entry["containerID"] = _container_id(rt.uid, c.name)
            containers.append(entry)
        new["status"] = {
            "phase": self._phase(rt),
            "conditions": [
                cond("PodReadyToStartContainers", True),
                cond("Initialized", True),
                cond("Ready", ready),
                cond("ContainersReady", ready),
                cond("PodScheduled", True),
            ],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": rt.ip,
            "podIPs": [{"ip": rt.ip}],
            "startTime": old_status.get("startTime") or rt.started_at,
            "containerStatuses": containers,
            "qosClass": old_status.get("qosClass", "BestEffort"),
        }
        with contextlib.suppress(errors.ApiError):
            self.cluster.store.update(PODS, new, check_version=False)
