"""The demo traffic source: every message type, valid payloads, lively traffic."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from metricstream.collector import DemoTraffic, MetricsCollector, ModelProfile, run_demo
from metricstream.exceptions import ConfigError
from metricstream.protocol import STREAM_TYPES, MessageType, decode, encode
from tests.collector.helpers import ManualClock, RecordingPublisher


async def test_run_demo_publishes_every_stream_type_with_valid_payloads(
    publisher: RecordingPublisher,
) -> None:
    # The default 1 s interval: every type must show within a few seconds.
    task = asyncio.create_task(run_demo(publisher, interval=1.0, seed=3, connections=lambda: 2))
    try:
        await publisher.wait_for(lambda: publisher.types() >= STREAM_TYPES, within=5.0)
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
    assert len({e.severity for e in errors}) >= 3
    # Different profiles really differ: the reasoning model is the slowest.
    snap = collector.snapshot()
    slowest = max(snap.models.values(), key=lambda m: m.avg_latency_ms)
    assert slowest.model == "deepseek-ai/DeepSeek-R1"


def test_rate_limits_fill_up_and_reset(wall: ManualClock) -> None:
    publisher = RecordingPublisher()
    collector, traffic = _demo(publisher, 2, wall, rate=40.0, rate_limit_period=10.0)
    # Without the wall clock moving no limit resets; 40 s of traffic at the
    # normal rate exceeds every limit (sized for 1.3 periods of traffic).
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
    assert cache.cache_size_bytes <= 1024 * 1024 * 1024


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
