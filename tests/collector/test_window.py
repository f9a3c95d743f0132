"""The rolling-window building blocks, on hand-picked times."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metricstream.collector._window import CostWindow, RollingSamples, RollingWindow
from metricstream.exceptions import ConfigError


def _add(window: RollingWindow, now: float, *, tokens: int = 10, latency: float = 5.0) -> None:
    window.add(
        now,
        error=False,
        streaming=False,
        prompt_tokens=tokens,
        completion_tokens=0,
        latency_ms=latency,
        cost=0.0,
    )


def test_window_sums_buckets_and_expires_whole_buckets() -> None:
    window = RollingWindow(10.0, 1.0)
    _add(window, 100.2, tokens=1)
    _add(window, 100.9, tokens=2)
    _add(window, 101.0, tokens=4)
    assert window.totals(105.0).requests == 3
    assert window.totals(105.0).prompt_tokens == 7
    # Bucket [100, 101) ends at 101: still in at 110.9, gone at 111.0.
    assert window.totals(110.9).prompt_tokens == 7
    assert window.totals(111.0).prompt_tokens == 4
    assert window.totals(112.0).requests == 0


def test_window_keeps_a_late_event_in_the_newest_bucket() -> None:
    window = RollingWindow(10.0, 1.0)
    _add(window, 105.5)
    _add(window, 104.0)  # a clock that stepped back: counted, never reordered
    assert window.totals(105.5).requests == 2


def test_window_rejects_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="window"):
        RollingWindow(0.0, 1.0)
    with pytest.raises(ConfigError, match="resolution"):
        RollingWindow(10.0, math.nan)
    with pytest.raises(ConfigError, match="must not exceed"):
        RollingWindow(1.0, 2.0)


def test_samples_give_nearest_rank_percentiles() -> None:
    samples = RollingSamples(60.0, 1.0)
    for i, value in enumerate([50.0, 10.0, 40.0, 20.0, 30.0, 60.0, 70.0, 80.0, 90.0, 100.0]):
        samples.add(100.0 + i * 0.01, value)
    stats = samples.stats(101.0)
    assert stats.count == 10
    assert stats.avg == 55.0
    assert (stats.min, stats.max) == (10.0, 100.0)
    # Nearest rank: p50 -> 5th of 10, p90 -> 9th, p99 -> ceil(9.9) = 10th.
    assert (stats.p50, stats.p90, stats.p99) == (50.0, 90.0, 100.0)


def test_samples_expire_and_are_bounded() -> None:
    samples = RollingSamples(10.0, 1.0, max_samples=3)
    for i in range(5):
        samples.add(100.0, float(i))
    assert samples.stats(100.0).count == 3
    assert samples.stats(100.0).min == 2.0
    assert samples.stats(111.0).count == 0
    assert samples.stats(111.0).p99 == 0.0
    with pytest.raises(ConfigError, match="max_samples"):
        RollingSamples(10.0, 1.0, max_samples=0)


def test_cost_window_breaks_down_by_model_and_service() -> None:
    costs = CostWindow(3600.0, 60.0)
    costs.add(0.0, "a", "/chat", 1.0)
    costs.add(30.0, "b", "/chat", 2.0)
    costs.add(61.0, "a", "/embed", 4.0)
    assert costs.breakdown(100.0) == ({"a": 5.0, "b": 2.0}, {"/chat": 3.0, "/embed": 4.0})
    # The first minute's bucket leaves after 3660 s, the second after 3720 s.
    assert costs.breakdown(3660.0) == ({"a": 4.0}, {"/embed": 4.0})
    assert costs.breakdown(3720.0) == ({}, {})


@given(
    gaps=st.lists(st.floats(min_value=0, max_value=3, allow_nan=False), max_size=60),
    tokens=st.lists(st.integers(min_value=0, max_value=1000), min_size=60, max_size=60),
    later=st.floats(min_value=0, max_value=20, allow_nan=False),
)
def test_window_matches_a_brute_force_count(
    gaps: list[float], tokens: list[int], later: float
) -> None:
    window = RollingWindow(10.0, 0.5)
    now = 1000.0
    events: list[tuple[float, int]] = []
    for gap, count in zip(gaps, tokens, strict=False):
        now += gap
        _add(window, now, tokens=count)
        events.append((now, count))
    query = now + later
    # An event counts while its bucket [i*r, (i+1)*r) ends after query - window.
    expected = [c for t, c in events if (math.floor(t / 0.5) + 1) * 0.5 > query - 10.0]
    totals = window.totals(query)
    assert totals.requests == len(expected)
    assert totals.prompt_tokens == sum(expected)
