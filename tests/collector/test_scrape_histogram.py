"""The bucket arithmetic behind the scraped percentiles and rates."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metricstream.collector._engines import (
    Histogram,
    UnknownEngineError,
    counter_delta,
    detect_engine,
    parse_exposition,
)

BOUNDS = (0.01, 0.05, 0.1, 0.5, 1.0, math.inf)


def reference_quantile(q: float, bounds: tuple[float, ...], counts: tuple[float, ...]) -> float:
    """Prometheus's ``bucketQuantile`` (promql/quantile.go), transcribed."""
    observations = counts[-1]
    rank = q * observations
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end = (0.0 if b == 0 else bounds[b - 1]), bounds[b]
    count = counts[b] - (0.0 if b == 0 else counts[b - 1])
    rank -= 0.0 if b == 0 else counts[b - 1]
    return start + (end - start) * (rank / count)


per_bucket = st.lists(st.integers(0, 1000), min_size=len(BOUNDS), max_size=len(BOUNDS))


def cumulative(values: list[int]) -> tuple[float, ...]:
    total, out = 0, []
    for value in values:
        total += value
        out.append(float(total))
    return tuple(out)


@given(per_bucket, st.floats(0.01, 0.99))
def test_quantile_is_promqls(values: list[int], q: float) -> None:
    counts = cumulative(values)
    histogram = Histogram(BOUNDS, counts)
    if counts[-1] == 0:
        assert histogram.quantile(q) is None
        return
    assert histogram.quantile(q) == pytest.approx(reference_quantile(q, BOUNDS, counts))


@given(per_bucket, per_bucket)
def test_deltas_add_back_up(before: list[int], extra: list[int]) -> None:
    old = Histogram(BOUNDS, cumulative(before))
    new = Histogram(BOUNDS, cumulative([a + b for a, b in zip(before, extra, strict=True)]))
    delta = new.since(old)
    assert delta.counts == cumulative(extra)
    assert old.plus(delta) == new


def test_a_histogram_that_went_down_started_afresh() -> None:
    old = Histogram(BOUNDS, (5, 10, 10, 10, 10, 10))
    new = Histogram(BOUNDS, (1, 1, 2, 2, 2, 2))
    assert new.since(old) == new  # the engine restarted: all of it is new
    other = Histogram((0.5, math.inf), (1, 2))
    assert other.since(old) == other  # different buckets: nothing to subtract
    assert old.plus(other) == old  # cannot be added: the larger one stands


@given(st.floats(0, 1e12), st.floats(0, 1e12))
def test_a_counter_never_grows_negative(now: float, before: float) -> None:
    delta = counter_delta(now, before)
    assert delta >= 0
    assert delta == (now - before if now >= before else now)


def test_engines_are_told_apart_by_their_names() -> None:
    assert detect_engine(["vllm:num_requests_running", "process_cpu_seconds"]) == "vllm"
    assert detect_engine(["sglang:token_usage"]) == "sglang"
    assert detect_engine(["tgi_queue_size", "tgi_request_count"]) == "tgi"
    assert detect_engine(["python_gc_objects_collected"]) is None
    with pytest.raises(UnknownEngineError):
        parse_exposition("# TYPE up gauge\nup 1\n")
    with pytest.raises(ValueError, match="not the Prometheus text format"):
        parse_exposition("<html><body>login</body></html>\n")
    with pytest.raises(ValueError, match="not the Prometheus text format"):
        parse_exposition('{"requests": {}}')  # FakeAI's /metrics is JSON
