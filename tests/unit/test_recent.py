"""RecentTraffic: counts over the last window from Envoy's ever-growing counters."""

from __future__ import annotations

from localmesh.envoy import ClusterTraffic
from localmesh.recent import Recent, RecentTraffic


def sample(completed: int, failed: int) -> dict[str, ClusterTraffic]:
    return {"c": ClusterTraffic(completed=completed, responses_5xx=failed)}


def test_nothing_before_two_samples() -> None:
    window = RecentTraffic(window=10)
    assert window.recent() == ({}, 0.0)
    window.add(0.0, sample(5, 1))
    assert window.recent() == ({}, 0.0)


def test_difference_over_the_window_only() -> None:
    window = RecentTraffic(window=10)
    for t, (done, failed) in enumerate([(0, 0), (10, 0), (20, 0), (30, 5)]):
        window.add(t * 5.0, sample(done, failed))
    # At t=15 the newest sample at least 10 s older is t=5: 30-10 answered, 5 failed.
    assert window.recent() == ({"c": Recent(20, 5)}, 10.0)


def test_old_samples_are_dropped() -> None:
    window = RecentTraffic(window=10)
    for t in range(100):
        window.add(float(t), sample(t, 0))
    assert len(window._samples) <= 12
    assert window.recent() == ({"c": Recent(10, 0)}, 10.0)


def test_a_new_envoy_process_starts_its_counters_at_zero() -> None:
    window = RecentTraffic(window=10)
    window.add(0.0, sample(100, 50))
    window.add(10.0, sample(3, 3))  # restarted: counters since the new process started
    assert window.recent() == ({"c": Recent(3, 3)}, 10.0)
