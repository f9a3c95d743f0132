"""The demo traffic source: every message type, valid payloads, lively traffic."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from dataclasses import dataclass, field
from typing import Any

import pytest

from metricstream.collector import DemoTraffic, MetricsCollector, ModelProfile, run_demo
from metricstream.exceptions import ConfigError
from metricstream.protocol import STREAM_TYPES, MessageType, decode, encode
from tests.collector.helpers import ManualClock, RecordingPublisher
from tests.support import wait_until


async def test_run_demo_publishes_every_stream_type_with_valid_payloads(
    publisher: RecordingPublisher,
) -> None:
    # The default 1 s interval: every type must show within a few seconds.
    task = asyncio.create_task(run_demo(publisher, interval=1.0, seed=3, connections=lambda: 2))
    try:
        await wait_until(lambda: publisher.types() >= STREAM_TYPES, within=5.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert {str(t) for t in STREAM_TYPES} == {
        "metrics_update",
        "model_update",
        "request_update",
        "error_update",
        "system_update",
        "rate_limit_update",
        "cost_update",
        "kv_cache_update",
    }
    for message in publisher.messages:
        decoded = decode(encode(message))
        assert decoded.type == message.type
        assert decoded.data == message.data
    metrics = publisher.of_type(MessageType.METRICS_UPDATE)[-1].data
    assert metrics.active_connections == 2
    assert len({m.data.model for m in publisher.of_type(MessageType.MODEL_UPDATE)}) >= 1


def _demo(
    publisher: RecordingPublisher, seed: int, wall: ManualClock, **options: Any
) -> tuple[MetricsCollector, DemoTraffic]:
    clock = ManualClock(0.0)
    collector = MetricsCollector(publisher, system_stats=False, clock=clock, wall_clock=wall)
    traffic = DemoTraffic(collector, seed=seed, wall_clock=wall, **options)
    return collector, traffic


def _signature(publisher: RecordingPublisher) -> list[tuple[Any, ...]]:
    return [
        (m.data.model, m.data.prompt_tokens, m.data.completion_tokens, m.data.latency_ms)
        for m in publisher.of_type(MessageType.REQUEST_UPDATE)
    ]


def test_same_seed_same_traffic(wall: ManualClock) -> None:
    first, second = RecordingPublisher(), RecordingPublisher()
    _, a = _demo(first, 11, wall)
    _, b = _demo(second, 11, wall)
    for _ in range(50):
        a.step()
        b.step()
    assert _signature(first) == _signature(second)
    assert len(_signature(first)) > 0


def test_demo_varies_models_streaming_and_errors(wall: ManualClock) -> None:
    publisher = RecordingPublisher()
    collector, traffic = _demo(publisher, 5, wall, rate=50.0)
    for _ in range(200):  # 20 s of demo time
        traffic.step()
    requests = [m.data for m in publisher.of_type(MessageType.REQUEST_UPDATE)]
    errors = [m.data for m in publisher.of_type(MessageType.ERROR_UPDATE)]
    assert len({r.model for r in requests}) == len(traffic.profiles)
    assert {r.streaming for r in requests} == {True, False}
    assert {r.status for r in requests} == {"success", "error"}
    assert len({e.error_type for e in errors}) >= 3
    # Incidents (high, critical) are rarer: the hour-long test sees them.
    assert {e.severity for e in errors} >= {"low", "high"}
    # Different profiles really differ: the reasoning model is the slowest.
    snap = collector.snapshot()
    slowest = max(snap.models.values(), key=lambda m: m.avg_latency_ms)
    assert slowest.model == "deepseek-ai/DeepSeek-R1"


def test_rate_limits_fill_up_and_reset(wall: ManualClock) -> None:
    publisher = RecordingPublisher()
    collector, traffic = _demo(publisher, 2, wall, rate=40.0, rate_limit_period=10.0)
    # Without the wall clock moving no limit resets; 40 s of traffic at the
    # normal rate exceeds every limit (sized for 1.5 periods of traffic).
    for _ in range(400):
        traffic.step()
    limits = collector.snapshot().rate_limits
    assert set(limits) == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}
    assert all(limit.remaining == 0 for limit in limits.values())
    assert all(limit.percentage_used == 100.0 for limit in limits.values())
    rejected = [
        m.data
        for m in publisher.of_type(MessageType.ERROR_UPDATE)
        if m.data.error_type == "rate_limit_exceeded"
    ]
    assert rejected
    wall.advance(10.0)
    traffic.step()
    limits = collector.snapshot().rate_limits
    assert all(limit.remaining >= limit.limit - 10 for limit in limits.values())
    assert all(
        limit.reset_time == int((1_700_000_000.0 + 20.0) * 1000) for limit in limits.values()
    )


def test_kv_cache_sees_hits_misses_and_evictions(wall: ManualClock) -> None:
    publisher = RecordingPublisher()
    collector, traffic = _demo(publisher, 9, wall, rate=50.0)
    for _ in range(100):
        traffic.step()
    cache = collector.snapshot().kv_cache
    assert cache is not None
    assert cache.cache_hits > 0
    assert cache.cache_misses > 0
    assert cache.evictions > 0
    assert 0 < cache.hit_rate < 100
    assert cache.cache_size_bytes <= 64 * 2500 * 8 * 1024  # the cache's capacity


def test_demo_rejects_bad_configuration(publisher: RecordingPublisher) -> None:
    collector = MetricsCollector(publisher, system_stats=False)
    with pytest.raises(ConfigError, match="rate"):
        DemoTraffic(collector, rate=0)
    with pytest.raises(ConfigError, match="profiles"):
        DemoTraffic(collector, profiles=())
    with pytest.raises(ConfigError, match="streaming_share"):
        ModelProfile("m", 1.0, "/v1/x", 10, 10, 1.0, 1.0, 1.5, 0.0)
    with pytest.raises(ConfigError, match="weight"):
        ModelProfile("m", 0.0, "/v1/x", 10, 10, 1.0, 1.0, 0.5, 0.0)


def test_custom_profiles_drive_the_traffic(wall: ManualClock) -> None:
    publisher = RecordingPublisher()
    only = ModelProfile("tiny", 1.0, "/v1/tiny", 10, 5, 1.0, 1.0, 1.0, 0.0)
    collector, traffic = _demo(publisher, 1, wall, profiles=[only], rate=20.0)
    for _ in range(20):
        traffic.step()
    snap = collector.snapshot()
    assert set(snap.models) == {"tiny"}
    assert set(snap.rate_limits) == {"/v1/tiny"}
    requests = [m.data for m in publisher.of_type(MessageType.REQUEST_UPDATE)]
    assert all(r.streaming for r in requests)


@dataclass
class _Hour:
    """What one simulated hour of demo traffic published, sampled every 10 s."""

    publisher: RecordingPublisher
    traffic: DemoTraffic
    samples: list[Any] = field(default_factory=list)  # (demo seconds, snapshot)
    incidents: list[tuple[float, float, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def hour() -> _Hour:
    """An hour of demo time driven by a fake clock: no real waiting."""
    publisher = RecordingPublisher()
    clock, wall = ManualClock(0.0), ManualClock(1_700_000_000.0)
    collector = MetricsCollector(publisher, clock=clock, wall_clock=wall)
    collector.sample_system()  # once: system_update carries the demo's load
    # Coarser steps than the live demo's 0.1 s, for speed: the same traffic.
    traffic = DemoTraffic(collector, seed=3, wall_clock=wall, step=0.5)
    result = _Hour(publisher, traffic)
    started: tuple[float, str] | None = None
    for i in range(7200):
        traffic.step()
        clock.advance(0.5)
        wall.advance(0.5)
        incident = traffic.incident
        if incident is not None and started is None:
            started = (traffic.elapsed, incident[0])
        elif incident is None and started is not None:
            result.incidents.append((started[0], traffic.elapsed, started[1]))
            started = None
        if i % 20 == 19:
            result.samples.append((traffic.elapsed, collector.snapshot()))
    return result


def test_an_hour_has_errors_of_a_few_percent_and_short_incidents_that_recover(
    hour: _Hour,
) -> None:
    requests = [m.data for m in hour.publisher.of_type(MessageType.REQUEST_UPDATE)]
    assert 25_000 < len(requests) < 40_000  # about 8 requests a second
    failed = sum(r.status == "error" for r in requests)
    assert 0.01 < failed / len(requests) < 0.05
    rates = [snap.metrics.error_rate for _, snap in hour.samples]
    assert statistics.median(rates) < 3.0  # a healthy service, most of the time
    # A few incidents, each short, each visible, each over by itself.
    assert 1 <= len(hour.incidents) <= 10
    t0 = requests[0].created
    for start, end, model in hour.incidents:
        assert 20.0 <= end - start <= 91.0
        # The model fails far more often during its incident than usual...
        mine = [r for r in requests if r.model == model]
        inside = [r for r in mine if start <= r.created - t0 <= end]
        outside = [r for r in mine if not start - 1 <= r.created - t0 <= end + 1]
        share_inside = sum(r.status == "error" for r in inside) / max(1, len(inside))
        share_outside = sum(r.status == "error" for r in outside) / max(1, len(outside))
        assert share_inside > 3 * share_outside
        # ...and the service is back to normal once it is over.
        after = [s.metrics.error_rate for t, s in hour.samples if end + 70 < t <= end + 180]
        assert all(rate < 5.0 for rate in after), (start, end, after)
    errors = hour.publisher.of_type(MessageType.ERROR_UPDATE)
    severe = [e.data for e in errors if e.data.severity in ("high", "critical")]
    assert {e.severity for e in severe} == {"high", "critical"}
    assert max(rates) < 20.0  # never the 30 % of an unrealistic demo


def test_an_hour_approaches_its_rate_limits_and_rarely_hits_them(hour: _Hour) -> None:
    peaks: dict[str, float] = {}
    for _, snap in hour.samples:
        for endpoint, limit in snap.rate_limits.items():
            peaks[endpoint] = max(peaks.get(endpoint, 0.0), limit.percentage_used)
    assert max(peaks.values()) >= 90.0
    assert all(peak >= 70.0 for peak in peaks.values())
    requests = hour.publisher.of_type(MessageType.REQUEST_UPDATE)
    refused = [
        e
        for e in hour.publisher.of_type(MessageType.ERROR_UPDATE)
        if e.data.error_type == "rate_limit_exceeded"
    ]
    assert len(refused) / len(requests) < 0.005


def test_an_hour_has_engine_shaped_latencies(hour: _Hour) -> None:
    # Time to first token: a couple of hundred ms typical, a long right tail.
    p50 = statistics.median(snap.ttft.p50 for _, snap in hour.samples)
    p99 = statistics.median(snap.ttft.p99 for _, snap in hour.samples)
    assert 100.0 < p50 < 400.0
    assert 3 * p50 < p99 < 5_000.0
    # Inter-token latency of the reasoning model's long answers: close to its
    # 20 ms decode step, slower under load, a tight distribution.
    per_token = sorted(
        r.latency_ms / r.completion_tokens
        for m in hour.publisher.of_type(MessageType.REQUEST_UPDATE)
        if (r := m.data).model == "deepseek-ai/DeepSeek-R1"
        and r.status == "success"
        and r.completion_tokens >= 300
    )
    median = per_token[len(per_token) // 2]
    assert 20.0 < median < 35.0
    assert per_token[int(len(per_token) * 0.99)] < 3 * median


def test_an_hour_kv_cache_usage_follows_the_load(hour: _Hour) -> None:
    capacity = 64 * 2500 * 8 * 1024
    usage = [snap.kv_cache.cache_size_bytes / capacity for _, snap in hour.samples]
    load = [snap.system.active_workers + snap.system.queue_size for _, snap in hour.samples]
    assert all(0.0 <= u <= 1.0 for u in usage)
    assert max(usage) - min(usage) > 0.3  # it moves
    assert 0.2 < statistics.median(usage) < 0.8  # neither empty nor pinned full
    assert statistics.correlation(usage, load) > 0.6


def test_an_hour_projects_costs_only_after_enough_history(hour: _Hour) -> None:
    for elapsed, snap in hour.samples:
        if elapsed < 15 * 60:
            assert snap.costs.projection_available is False
            assert snap.costs.projected_monthly_cost == 0.0
        else:
            assert snap.costs.projection_available is True
    last = hour.samples[-1][1].costs
    # A full hour observed: the month is 720 of them.
    assert last.projected_monthly_cost == pytest.approx(last.total_cost * 720, rel=0.05)
