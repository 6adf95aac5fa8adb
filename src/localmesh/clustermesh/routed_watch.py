"""Whether the router still routes this session's mark, re-asked while `mesh` runs.

The join waits for the router once (session.wait_routed). Afterwards the answer can change:
the router pod is replaced (a new one has to route the mark again), the shadow pod is not
Ready (the tunnel is down), the router crash-loops. The router's GET /routed/<session>?wait=S
answers at once while the mark is routed and long-polls only for it to become routed, so it
cannot tell "no longer routed" by itself: `RoutedWatch` asks again every few seconds (at
once while routed, with a short long-poll while not) and keeps the latest answer for
`status`. It asks the router pod that is Ready now, through a port-forward (the user's own
right), and says why when the mark is not routed.

The router pod asked is one the meshed Service selects now (its `spec.selector`, exactly
what its ClusterIP uses): a retired router that the garbage collector has not removed yet
may still be Ready, but no request reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.membership import lease_expires_in, lease_live, mesh_state
from localmesh.clustermesh.pods import pod_ready
from localmesh.clustermesh.session import ask_routed, health_port_of
from localmesh.errors import KubeError
from localmesh.forward import Connector, PodForwarder
from localmesh.kube import Target
from localmesh.kube.objects import KubeObjects
from localmesh.kube.targets import JSON

log = structlog.get_logger(__name__)

RECHECK_SECONDS = 3.0  # between two questions while the mark is routed, or held by another
NOT_ROUTED_WAIT = 3.0  # the long-poll while it is not: an answer as soon as it is routed
ERROR_PAUSE = 1.0  # the shortest round: no answer makes the loop ask back to back


@dataclass(frozen=True)
class RoutedAnswer:
    routed: bool
    why: str = ""  # when not routed: the reason, for `status`
    held: bool = False  # an older session holds the mark: the router answers that at once

    def __str__(self) -> str:
        return "routed" if self.routed else f"not routed ({self.why})"


def pause_after(answer: RoutedAnswer, took: float) -> float:
    """Seconds to wait after a round that took `took` seconds and answered `answer`. Routed
    and held are answered at once and stay so for a while: RECHECK_SECONDS. A long-poll
    (not routed yet) paced its own round; every other round is stretched to ERROR_PAUSE, so
    no answer, however quick, has the loop ask back to back."""
    if answer.routed or answer.held:
        return RECHECK_SECONDS
    return max(0.0, ERROR_PAUSE - took)


class RoutedWatch:
    """Keeps `answer` current for one session until `stop`."""

    def __init__(
        self,
        kube: KubeObjects,
        connector: Connector,
        namespace: str,
        service: str,
        session: str,
        *,
        routed: bool = True,
    ) -> None:
        self.kube = kube
        self.connector = connector
        self.namespace = namespace
        self.service = service
        self.session = session
        self.answer = RoutedAnswer(routed, "" if routed else "not asked yet")
        self._forwarder: PodForwarder | None = None
        self._forwarding: tuple[str, int] | None = None  # (pod, health port)
        self._address: tuple[str, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"routed? {self.session}")

    async def stop(self) -> None:
        """End the watch. Never raises (the caller's leave runs after it): what the watch
        died of is logged."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                log.error("mesh routing watch failed", session=self.session, error=repr(exc))
        await self._close_forwarder()

    async def _pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            answer = await self.check()
            if answer != self.answer:
                log.info("mesh routing changed", session=self.session, now=str(answer))
            self.answer = answer
            await self._pause(pause_after(answer, loop.time() - began))

    async def check(self) -> RoutedAnswer:
        """Ask the Ready router pod now; why not, when it does not route the mark."""
        try:
            pod = await self._router_pod()
        except (KubeError, OSError) as exc:  # the API server unreachable: ask again later
            return RoutedAnswer(False, f"router unreachable: {exc}")
        if isinstance(pod, str):
            return RoutedAnswer(False, pod)
        wait = 0.0 if self.answer.routed else NOT_ROUTED_WAIT
        try:
            host, port = await self._forward_to(pod)
            answer = await ask_routed(host, port, self.session, wait)
            if answer.routed:
                return RoutedAnswer(True)
            if answer.held_by is not None:
                return RoutedAnswer(False, f"mark held by {answer.held_by}", held=True)
        except (KubeError, OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            await self._close_forwarder()  # a fresh port-forward next time
            return RoutedAnswer(False, f"router unreachable: {str(exc) or type(exc).__name__}")
        return RoutedAnswer(False, await self._why_not())

    async def _why_not(self) -> str:
        """The router routes a session while its Lease is live and its shadow pod Ready."""
        with contextlib.suppress(KubeError, OSError):
            lease = await self.kube.get("Lease", self.namespace, self.session)
            if lease is None:
                return "Lease gone"
            if not lease_live(lease):
                left = lease_expires_in(lease)
                ago = f" {-left:.0f}s ago" if left is not None else ""
                return f"Lease expired{ago} (not renewed: this machine asleep or offline?)"
            shadow = await self.kube.get("Pod", self.namespace, self.session)
            if shadow is None:
                return "shadow pod gone"
            if not pod_ready(shadow):
                return "shadow pod not Ready"
        return f"router {self._forwarding[0] if self._forwarding else ''} has no route for it"

    async def _router_pod(self) -> JSON | str:
        """A Ready router pod the meshed Service selects, or why there is none."""
        service = await self.kube.get("Service", self.namespace, self.service)
        selector = ((service or {}).get("spec") or {}).get("selector") or {}
        if service is None or mesh_state(service).original_selector is None or not selector:
            return f"not meshed: service {self.namespace}/{self.service} is not meshed now"
        if selector.get(m.COMPONENT_LABEL) != "router":
            return f"not meshed: service {self.namespace}/{self.service} does not select a router"
        pods = await self.kube.list("Pod", self.namespace, m.label_selector(selector))
        ready = sorted((p for p in pods if pod_ready(p)), key=lambda p: str(p["metadata"]["name"]))
        current = self._forwarding[0] if self._forwarding else None
        # Keep asking the same pod while it is Ready (its port-forward is warm).
        for pod in ready:
            if pod["metadata"]["name"] == current:
                return pod
        return ready[0] if ready else "no Ready router pod"

    async def _forward_to(self, pod: JSON) -> tuple[str, int]:
        wanted = (str(pod["metadata"]["name"]), health_port_of(pod))
        if self._forwarding != wanted or self._address is None:
            await self._close_forwarder()
            forwarder = PodForwarder(
                self.connector, self.namespace, Target(wanted[0], "", wanted[1]), spares=0
            )
            self._forwarder, self._forwarding = forwarder, wanted
            self._address = await forwarder.start()
        return self._address

    async def _close_forwarder(self) -> None:
        forwarder, self._forwarder, self._address = self._forwarder, None, None
        if forwarder is not None:
            with contextlib.suppress(Exception):
                await forwarder.stop()
