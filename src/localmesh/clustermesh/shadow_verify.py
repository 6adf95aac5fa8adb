"""The router's own check of shadow pods the kubelet has not (yet) called Ready.

A shadow pod is Ready while the developer's machine holds a tunnel connection to it (its
agent's /readyz), but a kubelet probes at most once a second, so a joining developer
would wait up to a second more for the route after the tunnel connected. While a live
session's shadow pod runs with a pod IP and is not Ready, the router asks the same
endpoint itself, at the pod IP and the probe's port, every `VERIFY_INTERVAL` seconds. An
OK answer makes the shadow routable at once; it stays so only `FRESH_FOR` seconds after
it was asked, and a failed answer ends it at once: a tunnel that drops before the kubelet
ever said Ready sends the mark back to the pods within a fraction of a second. The
kubelet's Ready=True stays authoritative: a Ready pod is not polled.

Cheap on purpose: one short-lived HTTP/1.1 GET on a raw asyncio connection per pod and
interval (raw_http), no client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from localmesh.clustermesh.pods import pod_ready
from localmesh.clustermesh.raw_http import http_get
from localmesh.kube.targets import JSON

VERIFY_INTERVAL = 0.1  # seconds between two questions to one shadow
ASK_TIMEOUT = 0.4  # a question without an answer by then failed
FRESH_FOR = 0.5  # an OK answer routes this long after it was asked


@dataclass(frozen=True)
class ProbeTarget:
    """Where to ask one shadow pod: its readiness probe's GET at its pod IP."""

    uid: str
    ip: str
    port: int
    path: str


def probe_target(pod: JSON | None) -> ProbeTarget | None:
    """The shadow pod's readiness probe (httpGet, HTTP) at its pod IP while the pod is
    Running with an IP, not being deleted and not Ready; None when there is nothing to
    verify (Ready pods are the kubelet's to judge)."""
    if pod is None:
        return None
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ip, uid = status.get("podIP"), meta.get("uid")
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not ip or not uid:
        return None
    if pod_ready(pod):
        return None
    for container in (pod.get("spec") or {}).get("containers") or []:
        get = (container.get("readinessProbe") or {}).get("httpGet")
        if not get or str(get.get("scheme") or "HTTP").upper() != "HTTP":
            continue
        port = get.get("port")
        if isinstance(port, str) and not port.isdigit():
            named = [p for p in container.get("ports") or [] if p.get("name") == port]
            port = named[0].get("containerPort") if named else None
        if port is None:
            continue
        return ProbeTarget(str(uid), str(ip), int(port), str(get.get("path") or "/"))
    return None


class Verifications:
    """When each shadow (by pod UID) last answered OK; which are fresh at a time."""

    def __init__(self, fresh_for: float = FRESH_FOR) -> None:
        self.fresh_for = fresh_for
        self._ok: dict[str, float] = {}  # uid -> when the question it answered OK was asked

    def answered(self, uid: str, ok: bool, asked: float, now: float) -> bool:
        """Record an answer to the question asked at `asked`; True when `uid`'s freshness at
        `now` changed (the router must re-plan)."""
        was = self.is_fresh(uid, now)
        if ok:
            self._ok[uid] = max(asked, self._ok.get(uid, asked))
        else:
            self._ok.pop(uid, None)
        return was != self.is_fresh(uid, now)

    def forget(self, uid: str) -> None:
        self._ok.pop(uid, None)

    def is_fresh(self, uid: str, now: float) -> bool:
        asked = self._ok.get(uid)
        return asked is not None and now - asked <= self.fresh_for

    def fresh(self, now: float) -> frozenset[str]:
        return frozenset(uid for uid in self._ok if self.is_fresh(uid, now))

    def next_expiry(self, now: float) -> float | None:
        """Seconds until the first fresh verification goes stale (None: none is fresh)."""
        left = [asked + self.fresh_for - now for asked in self._ok.values()]
        live = [s for s in left if s >= 0]
        return min(live) if live else None


async def ask(target: ProbeTarget, within: float = ASK_TIMEOUT) -> bool:
    """One GET of the target's readiness path: True on 2xx/3xx (as a kubelet judges)."""
    host = f"[{target.ip}]" if ":" in target.ip else target.ip
    try:
        status, _ = await http_get(
            target.ip, target.port, target.path, within=within, host_header=f"{host}:{target.port}"
        )
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
        return False
    return 200 <= status < 400


class ShadowVerifier:
    """One polling task per shadow to verify (`track`), each asking every `interval`;
    `on_change` is called whenever a shadow's freshness changes by an answer. `stop`
    ends them all."""

    def __init__(
        self,
        on_change: Callable[[], None],
        *,
        interval: float = VERIFY_INTERVAL,
        timeout: float = ASK_TIMEOUT,
        fresh_for: float = FRESH_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_change = on_change
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self.verifications = Verifications(fresh_for)
        self._polls: dict[str, tuple[ProbeTarget, asyncio.Task[None]]] = {}

    @property
    def polling(self) -> frozenset[str]:
        """The pod UIDs polled right now."""
        return frozenset(uid for uid, (_, task) in self._polls.items() if not task.done())

    def track(self, targets: Mapping[str, ProbeTarget]) -> None:
        """Poll exactly `targets` (pod UID -> target): new ones start, gone ones stop and
        their verification is forgotten (a pod that became Ready, was deleted or lost its
        Lease)."""
        for uid in list(self._polls):
            target, task = self._polls[uid]
            if targets.get(uid) != target:
                task.cancel()
                del self._polls[uid]
                self.verifications.forget(uid)
        for uid, target in targets.items():
            if uid not in self._polls:
                task = asyncio.create_task(self._poll(target), name=f"verify shadow {uid}")
                self._polls[uid] = (target, task)

    def fresh(self) -> frozenset[str]:
        return self.verifications.fresh(self._clock())

    def next_expiry(self) -> float | None:
        return self.verifications.next_expiry(self._clock())

    async def stop(self) -> None:
        tasks = [task for _, task in self._polls.values()]
        self._polls.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self, target: ProbeTarget) -> None:
        while True:
            asked = self._clock()
            ok = await ask(target, self._timeout)
            if self.verifications.answered(target.uid, ok, asked, self._clock()):
                self._on_change()
            await asyncio.sleep(max(0.0, asked + self._interval - self._clock()))


__all__ = [
    "FRESH_FOR",
    "VERIFY_INTERVAL",
    "ProbeTarget",
    "ShadowVerifier",
    "Verifications",
    "ask",
    "probe_target",
]
