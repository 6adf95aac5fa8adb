"""Scriptable faults for tests: readiness flips, dying listeners, slow starts, pod
deletion, API server restarts, watch-history expiry, and knobs other parts read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from localmesh.sandbox.resources import PODS

if TYPE_CHECKING:
    from localmesh.sandbox.cluster import Cluster


class Faults:
    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        # Idle timeout (seconds) the port-forward handler applies to its streams; None = none.
        self.portforward_idle_timeout: float | None = None
        # Seconds from a pod's start to Ready, for pods without their own ready delay.
        self.ready_delay: float = 0.0
        # Seconds a deleted pod keeps serving (unready, terminating) before it is gone.
        self.termination_delay: float = 0.0
        # Seconds the service proxy takes to apply an endpoint change, as kube-proxy's
        # resync lags behind the EndpointSlices on a real node (0 = at once).
        self.proxy_lag: float = 0.0
        # Seconds between BOOKMARK events on watches that asked for them.
        self.bookmark_interval: float = 1.0
        # First back-off (s) of a crashing container or a failing image pull; it doubles
        # up to 300 s, as the kubelet's does.
        self.backoff_base: float = 10.0
        # Seconds the garbage collector takes to act on a deletion (0: at once, within the
        # delete call). Above 0 it is asynchronous, as a real cluster's (see garbage.py).
        self.garbage_delay: float = 0.0
        self._restart_apiserver: Callable[[float, bool], Awaitable[None]] | None = None
        self._held_unready: list[tuple[str, dict[str, str]]] = []  # (namespace, labels)

    def hold_unready(self, namespace: str, labels: dict[str, str]) -> None:
        """Pods created from now on in `namespace` whose labels include `labels` never
        become Ready (as if their readiness probe always failed), whatever they run."""
        self._held_unready.append((namespace, dict(labels)))

    def held_unready(self, pod: dict[str, Any]) -> bool:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        return any(
            meta.get("namespace") == ns and all(labels.get(k) == v for k, v in want.items())
            for ns, want in self._held_unready
        )

    def set_ready(self, namespace: str, pod: str, ready: bool | None) -> None:
        """Force a pod Ready (True) or unready (False); None returns it to normal."""
        rt = self._cluster.kubelet.runtime(namespace, pod)
        rt.forced_ready = ready
        self._cluster.kubelet.sync_status(rt)
        if ready is False:
            obj = self._cluster.store.peek(PODS, namespace, pod)
            if obj is not None:
                self._cluster.record_event(
                    obj, "Unhealthy", "Readiness probe failed (injected fault)", type_="Warning"
                )

    async def kill_listener(self, namespace: str, pod: str, port: int | None = None) -> None:
        """Close a pod's server on `port` (all ports if None) and drop its connections.

        The pod stays Running and Ready, like a crashed process before its probe notices:
        connections to it are refused.
        """
        kubelet = self._cluster.kubelet
        await kubelet.kill_listener(kubelet.runtime(namespace, pod), port)

    async def revive_listener(self, namespace: str, pod: str, port: int | None = None) -> None:
        """Start the servers `kill_listener` stopped again, on the same IP and port."""
        kubelet = self._cluster.kubelet
        await kubelet.revive_listener(kubelet.runtime(namespace, pod), port)

    def collect_garbage_now(self) -> int:
        """With `garbage_delay`: do at once what the garbage collector has yet to do (and
        what follows from it), ending the window where owned objects outlive their owner."""
        return self._cluster.garbage.catch_up()

    def delete_pod(self, namespace: str, pod: str, grace: int = 0) -> None:
        """Delete a pod (its deployment creates a replacement with a new name and IP)."""
        self._cluster.delete(PODS, namespace, pod, grace=grace)

    def expire_watch_history(self) -> int:
        """Forget the event history: watches from any older resourceVersion get 410 Expired.
        Returns the current resourceVersion."""
        return self._cluster.store.compact()

    async def restart_apiserver(
        self, downtime: float = 0.0, *, rotate_credentials: bool = False
    ) -> None:
        """Stop the API server (dropping every connection and watch), wait `downtime`
        seconds, and serve again on the same port with the same objects. With
        `rotate_credentials`, it comes back with a new CA and admin token, written to the
        same kubeconfig path (the old token is refused, the old CA fails TLS)."""
        if self._restart_apiserver is None:
            raise RuntimeError("the API server is not running")
        await self._restart_apiserver(downtime, rotate_credentials)
