"""Request and failure counts per Envoy cluster over the last few seconds.

    window = RecentTraffic()
    window.add(now, cluster_traffic(stats))   # every SAMPLE_EVERY s, and at status time
    counts, seconds = window.recent()          # {cluster: Recent}, the span they cover

Envoy's counters only grow (until a new Envoy process starts them at zero again), so the
recent counts are the difference between the newest sample and the newest one at least
WINDOW seconds older (or the oldest kept, right after start-up). A counter that went down
means a new process: its value is what happened since.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass

from localmesh.envoy import ClusterTraffic

WINDOW = 10.0  # seconds status calls "recent"
SAMPLE_EVERY = 2.0  # seconds between samples of Envoy's counters
# Only the counters the window needs: the full cluster stats of 1,000 entries are large.
STATS_PATTERN = r"^cluster\..*\.(upstream_rq_completed|upstream_rq_5xx)$"


@dataclass(frozen=True)
class Recent:
    requests: int = 0  # answered, each once however often it was retried
    # 5xx answers, the upstream's and Envoy's own 503 for resets and connect failures
    # once the retries ran out (failed tries that a retry saved are no failure).
    failures: int = 0


def _counts(traffic: Mapping[str, ClusterTraffic]) -> dict[str, Recent]:
    return {name: Recent(t.completed, t.responses_5xx) for name, t in traffic.items()}


def _since(new: int, old: int) -> int:
    return new - old if new >= old else new


class RecentTraffic:
    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, dict[str, Recent]]] = collections.deque()

    def add(self, now: float, traffic: Mapping[str, ClusterTraffic]) -> None:
        self._samples.append((now, _counts(traffic)))
        # Keep one sample at least a window old: the baseline of the next difference.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def recent(self) -> tuple[dict[str, Recent], float]:
        if len(self._samples) < 2:
            return {}, 0.0
        now, newest = self._samples[-1]
        then, base = next(
            (s for s in reversed(self._samples) if s[0] <= now - self.window), self._samples[0]
        )
        found = {}
        for name, counts in newest.items():
            old = base.get(name, Recent())
            found[name] = Recent(
                _since(counts.requests, old.requests), _since(counts.failures, old.failures)
            )
        return found, now - then
