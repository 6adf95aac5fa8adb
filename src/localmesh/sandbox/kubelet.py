"""Runs pods: gives each its loopback IP, starts its containers' servers, reports status.

A pod is Running once its listeners are bound and Ready after its ready delay (annotation
`sandbox.localmesh.dev/ready-delay`, else the cluster default), unless a fault forces it
unready. A deleted pod keeps serving for the termination delay (its endpoints show it
terminating, as the real kubelet keeps probing a terminating pod).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from localmesh.sandbox import errors
from localmesh.sandbox.ips import LoopbackAllocator
from localmesh.sandbox.resources import PODS
from localmesh.sandbox.store import Obj, StoredEvent, now_rfc3339
from localmesh.sandbox.workloads import (
    Listener,
    PodInfo,
    container_env,
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
    logs: deque[str] = field(default_factory=lambda: deque(maxlen=1000))

    def log(self, line: str) -> None:
        self.logs.append(f"{now_rfc3339()} {line}")

    @property
    def ready(self) -> bool:
        return bool(self.ip) and self.delay_elapsed and self.forced_ready is not False


def _container_id(uid: str, name: str) -> str:
    return "containerd://" + hashlib.sha256(f"{uid}/{name}".encode()).hexdigest()


class Kubelet:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.ips = LoopbackAllocator()
        self.runtimes: dict[str, PodRuntime] = {}  # by pod uid
        self._stopping: set[asyncio.Task[Any]] = set()

    # ---- lookups used by faults and the API server -------------------------------------
    def runtime(self, namespace: str, name: str) -> PodRuntime:
        pod = self.cluster.store.peek(PODS, namespace, name)
        rt = self.runtimes.get(pod["metadata"]["uid"]) if pod else None
        if rt is None:
            raise errors.not_found("pods", name)
        return rt

    # ---- reacting to the store -----------------------------------------------------------
    def on_event(self, ev: StoredEvent) -> None:
        if ev.rtype is not PODS:
            return
        uid = ev.obj["metadata"]["uid"]
        if ev.type == "ADDED":
            new = PodRuntime(ev.obj["metadata"]["namespace"], ev.obj["metadata"]["name"], uid)
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
    def _containers(self, pod: Obj) -> list[tuple[str, str, int]]:
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
        env = container_env(pod, container)
        return PodInfo(rt.name, rt.namespace, ip, env, self.cluster.dns)

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
        self.cluster.record_event(
            pod,
            "Scheduled",
            f"Successfully assigned {rt.namespace}/{rt.name} to {NODE_NAME}",
            component="default-scheduler",
        )
        await self._bind(rt)
        rt.started_at = now_rfc3339()
        for c in pod["spec"].get("containers", []):
            self.cluster.record_event(pod, "Started", f"Started container {c['name']}")
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
        if delay > 0:
            await asyncio.sleep(delay)  # a terminating pod keeps serving for a while
        if rt.task is not None:
            rt.task.cancel()
        await self._close_listeners(rt)
        with contextlib.suppress(errors.ApiError):
            self.cluster.store.delete(PODS, rt.namespace, rt.name)

    async def _stop(self, rt: PodRuntime) -> None:
        if rt.task is not None:
            rt.task.cancel()
        await self._close_listeners(rt)
        if rt.ip:
            self.ips.release(rt.ip)

    async def _close_listeners(self, rt: PodRuntime) -> None:
        listeners, rt.listeners = list(rt.listeners.values()), {}
        for listener in listeners:
            await listener.close()

    async def stopped(self) -> None:
        """Wait until every deleted pod's servers are closed."""
        while self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    async def shutdown(self) -> None:
        for rt in list(self.runtimes.values()):
            await self._close_listeners(rt)
        self.runtimes.clear()

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
        for c in pod["spec"].get("containers", []):
            containers.append(
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": c.get("image", ""),
                    "containerID": _container_id(rt.uid, c["name"]),
                    "ready": ready,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": rt.started_at}},
                    "lastState": {},
                }
            )
        new["status"] = {
            "phase": "Running",
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
