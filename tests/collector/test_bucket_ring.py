"""The bucket ring behind every rolling window, and the windows against naive references."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from metricstream.collector._window import (
    CostWindow,
    RollingSamples,
    RollingWindow,
    WindowTotals,
    _BucketRing,
    nearest_rank,
)


def _ring(window: float = 10.0, span: float = 1.0) -> _BucketRing[list[float]]:
    return _BucketRing(window, span, list)


def _live(ring: _BucketRing[list[float]], now: float) -> list[float]:
    return [value for bucket in ring.live(now) for value in bucket]


def test_ring_expires_everything_across_a_jump_of_many_spans() -> None:
    ring = _ring()
    for i in range(10):
        ring.current(100.0 + i).append(float(i))
    assert len(ring) == 10
    # A jump of a million spans: opening the new bucket drops all the old ones
    # at once, without walking the spans in between.
    ring.current(1_000_100.0).append(99.0)
    assert len(ring) == 1
    assert _live(ring, 1_000_100.0) == [99.0]
    # And a read after the same jump, with no event, leaves nothing behind.
    assert _live(ring, 2_000_000.0) == []
    assert len(ring) == 0


def test_ring_bucket_leaves_exactly_when_all_of_it_is_out_of_the_window() -> None:
    ring = _ring()
    ring.current(100.2).append(1.0)
    ring.current(100.9).append(2.0)
    ring.current(101.0).append(4.0)
    # Bucket [100, 101) ends at 101: in at 110.9, gone at 111.0.
    assert _live(ring, 110.9) == [1.0, 2.0, 4.0]
    assert _live(ring, 111.0) == [4.0]
    assert _live(ring, 112.0) == []


def test_ring_wraps_around_keeping_one_window_of_buckets() -> None:
    ring = _ring(window=5.0, span=0.5)
    now = 1000.0
    # Three windows' worth of events, one per bucket: the ring must keep
    # turning over, never holding more than window / span + 1 buckets.
    for step in range(30):
        now = 1000.0 + step * 0.5
        ring.current(now).append(now)
        assert len(ring) <= 11
    live = _live(ring, now)
    assert live == [t for t in (1000.0 + s * 0.5 for s in range(30)) if t + 0.5 > now - 5.0]
    # The bucket opened at now - window still ends after it: 11 buckets.
    assert len(live) == 11


def test_ring_clamps_a_clock_that_steps_back_into_the_newest_bucket() -> None:
    ring = _ring()
    newest = ring.current(105.5)
    newest.append(1.0)
    # Stamped in an older bucket: counted in the newest one, never reordered.
    assert ring.current(104.0) is newest
    assert ring.current(90.0) is newest
    ring.current(90.0).append(2.0)
    assert len(ring) == 1
    # So it leaves with the newest bucket, not at its own time.
    assert _live(ring, 115.9) == [1.0, 2.0]
    assert _live(ring, 116.0) == []
    # With no bucket left, the next event opens one at its own time, even if
    # that is before the bucket just dropped.
    ring.current(50.0).append(3.0)
    assert _live(ring, 50.0) == [3.0]
    assert _live(ring, 61.0) == []


def test_ring_without_expiry_on_open_keeps_buckets_until_read_within_a_bound() -> None:
    ring: _BucketRing[list[float]] = _BucketRing(
        10.0, 1.0, list, expire_on_open=False, max_buckets=3
    )
    ring.current(0.0).append(0.0)
    ring.current(100.0).append(1.0)
    assert len(ring) == 2  # the bucket at 0 is out of the window, but not yet read
    for t in (101.0, 102.0, 103.0):
        ring.current(t).append(t)
    assert len(ring) == 3  # max_buckets drops the oldest as buckets open
    assert _live(ring, 103.0) == [101.0, 102.0, 103.0]


# Naive references: every event kept with its time; an event counts at
# ``query`` while its bucket [i*r, (i+1)*r) ends after ``query - window``.

_WINDOW = 10.0
_SPAN = 0.5


def _in_window(t: float, query: float) -> bool:
    return (math.floor(t / _SPAN) + 1) * _SPAN > query - _WINDOW


# A run of operations on a clock that never goes back: ("add", gap, value)
# records an event ``gap`` seconds after the previous operation, ("read", gap,
# _) reads the window ``gap`` seconds after it.
_ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "read"]),
        st.floats(min_value=0, max_value=4, allow_nan=False),
        st.integers(min_value=0, max_value=1000),
    ),
    max_size=80,
)


@given(ops=_ops)
def test_rolling_window_matches_a_naive_reference(ops: list[tuple[str, float, int]]) -> None:
    window = RollingWindow(_WINDOW, _SPAN)
    assert window.window == _WINDOW
    events: list[tuple[float, int]] = []
    now = 1000.0
    for op, gap, value in ops:
        now += gap
        if op == "add":
            window.add(
                now,
                error=value % 2 == 1,
                streaming=value % 3 == 0,
                prompt_tokens=value,
                completion_tokens=1,
                latency_ms=float(value),
                cost=0.5,
            )
            events.append((now, value))
            continue
        live = [v for t, v in events if _in_window(t, now)]
        expected = WindowTotals(
            requests=len(live),
            errors=sum(v % 2 == 1 for v in live),
            streaming=sum(v % 3 == 0 for v in live),
            prompt_tokens=sum(live),
            completion_tokens=len(live),
            latency_ms=float(sum(live)),
            cost=0.5 * len(live),
        )
        assert window.totals(now) == expected


@given(ops=_ops, max_samples=st.integers(min_value=1, max_value=12))
def test_rolling_samples_match_a_naive_reference(
    ops: list[tuple[str, float, int]], max_samples: int
) -> None:
    samples = RollingSamples(_WINDOW, _SPAN, max_samples)
    events: list[tuple[float, float]] = []
    now = 1000.0
    for op, gap, value in ops:
        now += gap
        if op == "add":
            samples.add(now, float(value))
            events.append((now, float(value)))
            continue
        # The newest ``max_samples`` events, then only those still in the window.
        live = sorted(v for t, v in events[-max_samples:] if _in_window(t, now))
        stats = samples.stats(now)
        assert stats.count == len(live)
        if live:
            assert (stats.min, stats.max) == (live[0], live[-1])
            assert stats.avg == sum(live) / len(live)
            assert stats.p50 == nearest_rank(live, 50)
            assert stats.p99 == nearest_rank(live, 99)
        else:
            assert stats.p99 == 0.0


@given(ops=_ops)
def test_cost_window_matches_a_naive_reference(ops: list[tuple[str, float, int]]) -> None:
    costs = CostWindow(_WINDOW, _SPAN)
    events: list[tuple[float, str, str, float]] = []
    now = 1000.0
    for op, gap, value in ops:
        now += gap
        model, service, cost = f"m{value % 3}", f"/s{value % 2}", value / 4
        if op == "add":
            costs.add(now, model, service, cost)
            events.append((now, model, service, cost))
            continue
        by_model: dict[str, float] = {}
        by_service: dict[str, float] = {}
        for t, m, s, c in events:
            if _in_window(t, now):
                by_model[m] = by_model.get(m, 0.0) + c
                by_service[s] = by_service.get(s, 0.0) + c
        assert costs.breakdown(now) == (by_model, by_service)
