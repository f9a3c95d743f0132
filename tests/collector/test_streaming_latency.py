"""MetricsCollector: per-request TTFT/ITL/TPOT and their rolling percentiles."""

from __future__ import annotations

from typing import Any

import pytest

from metricstream.collector import InvalidMetricError, MetricsCollector, ModelPrice
from metricstream.protocol import MessageType, decode, encode
from tests.collector.helpers import ManualClock, RecordingPublisher


def _collector(publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock) -> Any:
    return MetricsCollector(
        publisher,
        prices={"m": ModelPrice(1.0, 1.0)},
        window=10.0,
        resolution=1.0,
        system_stats=False,
        clock=clock,
        wall_clock=wall,
    )


def test_request_timings_are_derived_from_the_gaps(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall)
    # 5 gaps; nearest rank: p50 = 3rd smallest, p95 = largest.
    payload = collector.record_request(
        "m",
        10,
        6,
        160.0,
        streaming=True,
        ttft_ms=60.0,
        itl_samples_ms=[10.0, 30.0, 20.0, 50.0, 40.0],
        finish_reason="stop",
        endpoint="/v1/chat/completions",
    )
    assert payload.time_to_first_token_ms == 60.0
    assert payload.inter_token_latency_ms == 30.0
    assert payload.inter_token_latency_p50_ms == 30.0
    assert payload.inter_token_latency_p95_ms == 50.0
    assert payload.time_per_output_token_ms == 20.0  # (160 - 60) / (6 - 1)
    assert payload.finish_reason == "stop"
    assert payload.endpoint == "/v1/chat/completions"
    # What went on the wire round-trips with the fields.
    [message] = publisher.messages
    wire = decode(encode(message))
    assert wire.type == MessageType.REQUEST_UPDATE
    assert wire.data.inter_token_latency_p95_ms == 50.0


def test_mean_alone_and_no_timings(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall)
    only_mean = collector.record_request("m", 1, 1, 5.0, streaming=True, ttft_ms=2.0, itl_ms=4.0)
    assert only_mean.inter_token_latency_ms == 4.0
    assert only_mean.inter_token_latency_p50_ms is None
    # One completion token: no gap to divide by, so no TPOT.
    assert only_mean.time_per_output_token_ms is None
    plain = collector.record_request("m", 1, 1, 5.0)
    assert plain.time_to_first_token_ms is None
    assert plain.inter_token_latency_ms is None
    assert plain.finish_reason is None
    snap = collector.snapshot()
    assert snap.itl.count == 1
    assert snap.metrics.itl_p50_ms == 4.0


def test_rolling_percentiles_service_wide_and_per_model(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall)
    snap = collector.snapshot()
    # Nothing measured yet: the optional fields stay absent.
    assert snap.metrics.ttft_p50_ms is None
    assert snap.metrics.itl_p99_ms is None
    for i in range(1, 21):
        collector.record_request(
            "m" if i % 2 else "n",
            1,
            3,
            100.0 * i,
            streaming=True,
            ttft_ms=float(i),
            itl_samples_ms=[float(i), float(i)],
        )
    snap = collector.snapshot()
    assert (snap.metrics.ttft_p50_ms, snap.metrics.ttft_p95_ms, snap.metrics.ttft_p99_ms) == (
        10.0,
        19.0,
        20.0,
    )
    assert (snap.metrics.itl_p50_ms, snap.metrics.itl_p95_ms) == (10.0, 19.0)
    # Model "m" saw the odd ones: 1, 3, ..., 19.
    assert snap.models["m"].ttft_p50_ms == 9.0
    assert snap.models["m"].itl_p99_ms == 19.0
    assert snap.models["n"].ttft_p50_ms == 10.0
    # Past the window they are gone again.
    clock.advance(12.0)
    assert collector.snapshot().metrics.ttft_p50_ms is None
    published = collector.flush()
    metrics = [m for m in published if m.type == MessageType.METRICS_UPDATE]
    assert metrics
    assert metrics[0].data.ttft_p50_ms is None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"itl_samples_ms": [1.0, -2.0]}, "itl_samples_ms"),
        ({"itl_samples_ms": [float("nan")]}, "itl_samples_ms"),
        ({"itl_samples_ms": "12"}, "itl_samples_ms"),
        ({"itl_ms": -1.0}, "itl_ms"),
        ({"finish_reason": 3}, "finish_reason"),
        ({"endpoint": b"/v1"}, "endpoint"),
    ],
)
def test_invalid_timings_are_refused_before_recording(
    publisher: RecordingPublisher,
    clock: ManualClock,
    wall: ManualClock,
    options: dict[str, Any],
    match: str,
) -> None:
    collector = _collector(publisher, clock, wall)
    with pytest.raises(InvalidMetricError, match=match):
        collector.record_request("m", 1, 1, 1.0, **options)
    assert collector.snapshot().metrics.total_requests == 0
    assert publisher.messages == []
