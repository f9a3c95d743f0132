"""MetricsCollector: aggregates against hand-computed values, windows, costs,
change detection, validation, threads and the periodic task."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest

from metricstream.collector import (
    DEFAULT_PRICES,
    OTHER,
    InvalidMetricError,
    MetricsCollector,
    ModelPrice,
)
from metricstream.exceptions import ConfigError, MetricStreamError
from metricstream.protocol import (
    MessageType,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    WebSocketMessage,
    decode,
    encode,
)
from tests.collector.helpers import ManualClock, RecordingPublisher
from tests.support import scaled, wait_until

PRICES = {"a": ModelPrice(1.0, 2.0), "b": ModelPrice(10.0, 20.0)}


def _collector(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock, **options: Any
) -> MetricsCollector:
    options.setdefault("window", 10.0)
    options.setdefault("resolution", 1.0)
    options.setdefault("system_stats", False)
    return MetricsCollector(
        publisher,
        prices=PRICES,
        clock=clock,
        wall_clock=wall,
        **options,
    )


def _record_scenario(collector: MetricsCollector, clock: ManualClock) -> None:
    """Four requests over three seconds (clock starts at 100.0)."""
    collector.record_request("a", 100, 50, 100.0)  # t=100.0, cost 0.0002
    clock.advance(1.5)
    collector.record_request("a", 200, 100, 300.0, streaming=True, ttft_ms=50.0)  # 0.0004
    clock.advance(0.5)
    collector.record_request("b", 10, 0, 200.0, status="error", error_message="boom")  # 0.0001
    clock.advance(1.0)
    collector.record_request("b", 40, 10, 400.0, cost=0.5)  # t=103.0, explicit cost


def _by_type(messages: list[WebSocketMessage[Any]]) -> dict[str, list[Any]]:
    result: dict[str, list[Any]] = {}
    for message in messages:
        result.setdefault(message.type, []).append(message.data)
    return result


def test_aggregates_match_hand_computed_values(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall)
    _record_scenario(collector, clock)
    clock.now = 105.0  # 5 s after start: rates divide by 5 s
    snap = collector.snapshot()

    assert snap.metrics == MetricsUpdatePayload(
        total_requests=4,
        total_tokens=150 + 300 + 10 + 50,
        total_cost=0.5007,
        avg_latency_ms=250.0,  # (100 + 300 + 200 + 400) / 4
        error_rate=25.0,
        streaming_percentage=25.0,
        requests_per_second=0.8,
        tokens_per_second=102.0,  # 510 / 5
        active_connections=0,
        # One streamed request with a TTFT and no inter-token latency.
        ttft_p50_ms=50.0,
        ttft_p95_ms=50.0,
        ttft_p99_ms=50.0,
    )
    # Nearest rank over [100, 200, 300, 400].
    assert (snap.latency.p50, snap.latency.p90, snap.latency.p99) == (200.0, 400.0, 400.0)
    assert snap.ttft.count == 1
    assert snap.ttft.p50 == 50.0
    assert snap.metrics_metadata()["latency_p90_ms"] == 400.0

    assert snap.models["a"] == ModelUpdatePayload(
        model="a",
        request_count=2,
        total_prompt_tokens=300,
        total_completion_tokens=150,
        total_tokens=450,
        total_latency_ms=400.0,
        error_count=0,
        avg_latency_ms=200.0,
        error_rate=0.0,
        total_cost=0.0006,
        tokens_per_second=90.0,
        ttft_p50_ms=50.0,
        ttft_p95_ms=50.0,
        ttft_p99_ms=50.0,
    )
    assert snap.models["b"] == ModelUpdatePayload(
        model="b",
        request_count=2,
        total_prompt_tokens=50,
        total_completion_tokens=10,
        total_tokens=60,
        total_latency_ms=600.0,
        error_count=1,
        avg_latency_ms=300.0,
        error_rate=50.0,
        total_cost=0.5001,
        tokens_per_second=12.0,
    )
    costs = snap.costs
    assert costs.period == "hour"
    assert costs.total_cost == pytest.approx(0.5007)
    assert costs.breakdown_by_model == {"a": pytest.approx(0.0006), "b": pytest.approx(0.5001)}
    assert costs.breakdown_by_service == {"inference": pytest.approx(0.5007)}
    # 5 s of spend say nothing about a month: no projection yet.
    assert costs.projection_available is False
    assert costs.projected_monthly_cost == 0.0
    # After 15 minutes, the hour's spend so far is extrapolated to 30 days.
    clock.advance(15 * 60 - 5)
    later = collector.snapshot().costs
    assert later.projection_available is True
    assert later.projected_monthly_cost == pytest.approx(0.5007 / (15 * 60) * 30 * 86400)


def test_request_updates_are_published_as_they_happen(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall)
    _record_scenario(collector, clock)
    requests = publisher.of_type(MessageType.REQUEST_UPDATE)
    assert [m.data.model for m in requests] == ["a", "a", "b", "b"]
    assert [m.data.cost for m in requests] == [0.0002, 0.0004, 0.0001, 0.5]
    third = requests[2].data
    assert (third.status, third.error_message, third.total_tokens) == ("error", "boom", 10)
    assert requests[1].data.streaming is True
    assert len({m.data.id for m in requests}) == 4
    assert all(m.timestamp == 1_700_000_000_000 for m in requests)
    assert requests[0].data.created == 1_700_000_000.0


def test_windows_expire_but_totals_remain(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall)
    _record_scenario(collector, clock)
    # At 111.5 the window (10 s, 1 s buckets) starts at 101.5: the bucket
    # [100, 101) holding the first request has left, [101, 102) has not.
    clock.now = 111.5
    snap = collector.snapshot()
    assert snap.metrics.total_requests == 4
    assert snap.metrics.avg_latency_ms == 300.0  # (300 + 200 + 400) / 3
    assert snap.metrics.error_rate == 33.333
    assert snap.metrics.requests_per_second == 0.3  # 3 requests / 10 s
    assert snap.metrics.tokens_per_second == 36.0  # 360 tokens / 10 s
    assert snap.models["a"].tokens_per_second == 30.0
    assert snap.latency.p50 == 300.0

    clock.now = 114.0  # every bucket has left
    snap = collector.snapshot()
    assert snap.metrics.requests_per_second == 0.0
    assert snap.metrics.avg_latency_ms == 0.0
    assert snap.metrics.error_rate == 0.0
    assert snap.latency.count == 0
    assert snap.models["b"].tokens_per_second == 0.0
    assert snap.models["b"].request_count == 2
    assert snap.metrics.total_tokens == 510


def test_flush_publishes_only_what_changed(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall, cost_period="hour")
    first = collector.flush()
    # Nothing recorded yet: the zero metrics and costs are still news once.
    assert [m.type for m in first] == ["metrics_update", "cost_update"]
    assert collector.flush() == []

    collector.record_request("a", 1, 1, 1.0)
    collector.update_rate_limit("/v1/chat", 100, 40, 1_700_000_060_000)
    collector.update_rate_limit("/v1/embed", 10, 10, 1_700_000_060_000)
    collector.update_kv_cache(
        cache_hits=3,
        cache_misses=1,
        cache_size_bytes=4096,
        cache_entries=2,
        evictions=0,
        avg_lookup_time_ms=0.25,
    )
    published = _by_type(collector.flush())
    assert set(published) == {
        "metrics_update",
        "model_update",
        "cost_update",
        "rate_limit_update",
        "kv_cache_update",
    }
    limits = {p.endpoint: p for p in published["rate_limit_update"]}
    assert limits["/v1/chat"].percentage_used == 60.0
    assert limits["/v1/embed"].percentage_used == 0.0
    assert published["kv_cache_update"][0].hit_rate == 75.0

    # Only the chat endpoint changes; model "b" appears; "a" is unchanged
    # because the clock has not moved.
    collector.update_rate_limit("/v1/chat", 100, 0, 1_700_000_060_000)
    collector.record_request("b", 1, 1, 1.0)
    published = _by_type(collector.flush())
    assert [p.endpoint for p in published["rate_limit_update"]] == ["/v1/chat"]
    assert published["rate_limit_update"][0].percentage_used == 100.0
    assert [p.model for p in published["model_update"]] == ["b"]
    assert "kv_cache_update" not in published
    assert collector.flush() == []


def test_every_published_message_round_trips_through_the_codec(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall, system_stats=True)
    _record_scenario(collector, clock)
    collector.record_error("timeout", "took too long", model="a", severity="high")
    collector.update_rate_limit("/v1/chat", 0, 0, 0)
    collector.update_kv_cache(
        cache_hits=0,
        cache_misses=0,
        cache_size_bytes=0,
        cache_entries=0,
        evictions=0,
        avg_lookup_time_ms=0,
    )
    collector.sample_system()
    collector.flush()
    assert len(publisher.types()) == 8
    for message in publisher.messages:
        decoded = decode(encode(message))
        assert decoded.type == message.type
        assert decoded.data == message.data


def test_system_update_reads_the_host(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall, system_stats=True)
    collector.update_load(queue_size=7)
    collector.request_started()
    sample = collector.sample_system()
    assert sample is not None
    system = collector.snapshot().system
    assert system is not None
    assert 0.0 <= system.cpu_usage <= 100.0
    assert 0.0 < system.memory_usage <= 100.0
    assert 0.0 < system.disk_usage <= 100.0
    assert system.network_in_bytes >= 0
    assert system.network_out_bytes >= 0
    # No NVML on this machine, or no GPU: the fields stay absent.
    if collector._sampler is not None and not collector._sampler.has_gpu:
        assert system.gpu_usage is None
        assert system.gpu_memory_usage is None
    assert system.active_workers == 1  # the in-flight request
    assert system.queue_size == 7
    collector.request_finished()
    collector.update_load(active_workers=5)
    system = collector.snapshot().system
    assert system is not None
    assert system.active_workers == 5


def test_system_stats_can_be_disabled(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall)
    assert collector.sample_system() is None
    assert collector.snapshot().system is None


def test_connections_callback_feeds_active_connections(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall, connections=lambda: 12)
    assert collector.snapshot().metrics.active_connections == 12


def test_unknown_model_costs_nothing_unless_a_default_price_is_set(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall)
    assert collector.record_request("unknown", 1000, 1000, 1.0).cost == 0.0
    priced = _collector(publisher, clock, wall, default_price=ModelPrice(1.0, 1.0))
    assert priced.record_request("unknown", 1000, 1000, 1.0).cost == 0.002
    assert "openai/gpt-oss-120b" in DEFAULT_PRICES


def test_in_progress_requests_are_events_only(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall)
    collector.record_request("a", 10, 0, 0.0, status="in_progress", request_id="r1")
    assert collector.snapshot().metrics.total_requests == 0
    collector.record_request("a", 10, 5, 80.0, request_id="r1")
    assert collector.snapshot().metrics.total_requests == 1
    assert [m.data.id for m in publisher.of_type(MessageType.REQUEST_UPDATE)] == ["r1", "r1"]


def test_errors_are_events_and_counted_by_type(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall)
    collector.record_error("timeout", "slow", model="a", severity="critical", request_id="r9")
    collector.record_error("timeout", "slow again")
    (first, _) = publisher.of_type(MessageType.ERROR_UPDATE)
    assert first.data.severity == "critical"
    assert first.data.request_id == "r9"
    assert first.data.timestamp == 1_700_000_000_000
    snap = collector.snapshot()
    assert snap.errors_by_type == {"timeout": 2}
    assert snap.metrics.error_rate == 0.0  # error_rate counts failed requests only


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("a", -1, 0, 1.0), {}, "prompt_tokens must be >= 0"),
        (("a", 0, -5, 1.0), {}, "completion_tokens must be >= 0"),
        (("a", 1.5, 0, 1.0), {}, "prompt_tokens must be an integer"),
        (("a", True, 0, 1.0), {}, "prompt_tokens must be an integer"),
        (("a", 0, 0, math.nan), {}, "latency_ms must be finite"),
        (("a", 0, 0, math.inf), {}, "latency_ms must be finite"),
        (("a", 0, 0, -1.0), {}, "latency_ms must be >= 0"),
        (("a", 0, 0, "12"), {}, "latency_ms must be a number"),
        (("", 0, 0, 1.0), {}, "model must be a non-empty string"),
        (("a", 0, 0, 1.0), {"status": "done"}, "status must be one of"),
        (("a", 0, 0, 1.0), {"cost": -0.1}, "cost must be >= 0"),
        (("a", 0, 0, 1.0), {"cost": math.nan}, "cost must be finite"),
        (("a", 0, 0, 1.0), {"ttft_ms": math.nan}, "ttft_ms must be finite"),
        (("a", 0, 0, 1.0), {"streaming": 1}, "streaming must be a bool"),
        (("a", 0, 0, 1.0), {"user_id": 5}, "user_id must be a string"),
    ],
)
def test_invalid_requests_are_rejected_before_recording(
    publisher: RecordingPublisher,
    clock: ManualClock,
    wall: ManualClock,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    match: str,
) -> None:
    collector = _collector(publisher, clock, wall)
    with pytest.raises(InvalidMetricError, match=match) as info:
        collector.record_request(*args, **kwargs)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MetricStreamError)
    assert publisher.messages == []
    assert collector.snapshot().metrics.total_requests == 0


def test_invalid_errors_limits_and_cache_values_are_rejected(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall)
    with pytest.raises(InvalidMetricError, match="severity"):
        collector.record_error("x", "y", severity="fatal")  # type: ignore[arg-type]
    with pytest.raises(InvalidMetricError, match="error_type"):
        collector.record_error("", "y")
    with pytest.raises(InvalidMetricError, match="must not exceed limit"):
        collector.update_rate_limit("/v1/chat", 10, 11, 0)
    with pytest.raises(InvalidMetricError, match="limit must be >= 0"):
        collector.update_rate_limit("/v1/chat", -1, 0, 0)
    with pytest.raises(InvalidMetricError, match="avg_lookup_time_ms must be finite"):
        collector.update_kv_cache(
            cache_hits=1,
            cache_misses=1,
            cache_size_bytes=1,
            cache_entries=1,
            evictions=0,
            avg_lookup_time_ms=math.nan,
        )
    with pytest.raises(InvalidMetricError, match="queue_size"):
        collector.update_load(queue_size=-3)
    assert publisher.messages == []


def test_invalid_configuration_is_rejected(publisher: RecordingPublisher) -> None:
    with pytest.raises(ConfigError, match="interval"):
        MetricsCollector(publisher, interval=0, system_stats=False)
    with pytest.raises(ConfigError, match="window"):
        MetricsCollector(publisher, window=math.nan, system_stats=False)
    with pytest.raises(ConfigError, match="cost_period"):
        MetricsCollector(publisher, cost_period="year", system_stats=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ModelPrice"):
        MetricsCollector(publisher, prices={"a": 1.0}, system_stats=False)  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="prompt_per_million"):
        ModelPrice(-1.0, 0.0)


def test_a_failing_publisher_does_not_break_recording(
    clock: ManualClock, wall: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def publish(self, message: WebSocketMessage[Any]) -> None:
            raise RuntimeError("hub closed")

    collector = MetricsCollector(Broken(), system_stats=False, clock=clock, wall_clock=wall)
    collector.record_request("a", 1, 1, 1.0)
    collector.record_request("a", 1, 1, 1.0)
    collector.flush()
    assert collector.snapshot().metrics.total_requests == 2
    assert "publishing request_update failed" in caplog.text


def test_state_a_publisher_refused_is_offered_again(
    clock: ManualClock, wall: ManualClock, publisher: RecordingPublisher
) -> None:
    class Flaky:
        down = True

        def publish(self, message: WebSocketMessage[Any]) -> None:
            if self.down:
                raise RuntimeError("hub restarting")
            publisher.publish(message)

    flaky = Flaky()
    collector = MetricsCollector(flaky, system_stats=False, clock=clock, wall_clock=wall)
    collector.update_rate_limit("/v1/chat/completions", limit=10, remaining=4, reset_time=0)
    assert collector.flush() == []
    flaky.down = False
    clock.advance(1.0)
    wall.advance(1.0)
    # Unchanged since, yet not published before: it goes out now.
    assert MessageType.RATE_LIMIT_UPDATE in {m.type for m in collector.flush()}
    assert publisher.of_type(MessageType.RATE_LIMIT_UPDATE)


async def test_calls_from_other_threads_are_published_on_the_loop(
    publisher: RecordingPublisher,
) -> None:
    threads, per_thread = 4, 500
    async with MetricsCollector(publisher, interval=0.05, system_stats=False) as collector:
        start = threading.Barrier(threads)

        def worker(index: int) -> None:
            start.wait()
            for i in range(per_thread):
                collector.record_request(
                    f"m{index % 2}", i % 7, 3, float(i % 50), streaming=i % 2 == 0
                )
                if i % 100 == 0:
                    collector.record_error("boom", "worker error")

        workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for thread in workers:
            thread.start()
        # Record from the loop thread at the same time.
        for i in range(per_thread):
            collector.record_request("m0", 1, 1, 1.0)
            if i % 50 == 0:
                await asyncio.sleep(0)

        def join_all() -> None:
            for thread in workers:
                thread.join(scaled(30))

        await asyncio.to_thread(join_all)
        total = (threads + 1) * per_thread
        await wait_until(lambda: len(publisher.of_type(MessageType.REQUEST_UPDATE)) == total, 10)
        snap = collector.snapshot()
    assert snap.metrics.total_requests == total
    expected_tokens = threads * sum(i % 7 + 3 for i in range(per_thread)) + per_thread * 2
    assert snap.metrics.total_tokens == expected_tokens
    assert sum(m.request_count for m in snap.models.values()) == total
    assert snap.errors_by_type == {"boom": threads * per_thread // 100}
    assert len({m.data.id for m in publisher.of_type(MessageType.REQUEST_UPDATE)}) == total
    # The publisher was only ever called on the loop's thread.
    assert publisher.threads == {threading.get_ident()}


async def test_periodic_task_publishes_state_every_interval(
    publisher: RecordingPublisher,
) -> None:
    collector = MetricsCollector(publisher, interval=0.05, window=5.0, connections=lambda: 3)
    states = [collector.running]
    async with collector:
        states.append(collector.running)
        collector.record_request("gpt-4o", 10, 20, 30.0)
        await wait_until(
            lambda: (
                {"model_update", "system_update", "metrics_update", "cost_update"}
                <= publisher.types()
            ),
            10,
        )
        # CPU and the network counters move, so system_update keeps coming.
        count = len(publisher.of_type(MessageType.SYSTEM_UPDATE))
        collector.record_request("gpt-4o", 10, 20, 30.0)
        await wait_until(
            lambda: publisher.of_type(MessageType.MODEL_UPDATE)[-1].data.request_count == 2, 10
        )
    states.append(collector.running)
    assert states == [False, True, False]
    metrics = publisher.of_type(MessageType.METRICS_UPDATE)[-1]
    assert metrics.data.active_connections == 3
    assert metrics.metadata is not None
    assert metrics.metadata["latency_p50_ms"] == 30.0
    assert count >= 1
    assert publisher.threads == {threading.get_ident()}


async def test_recording_after_the_loop_is_gone_keeps_the_aggregates() -> None:
    # A collector bound to a loop that has since closed: recording from this
    # thread still counts, but nothing is published from the wrong thread.
    publisher = RecordingPublisher()
    holder: list[MetricsCollector] = []

    def run_elsewhere() -> None:
        async def main() -> None:
            holder.append(MetricsCollector(publisher, system_stats=False))

        asyncio.run(main())

    await asyncio.to_thread(run_elsewhere)
    collector = holder[0]
    collector.record_request("a", 1, 2, 3.0)
    assert collector.snapshot().metrics.total_requests == 1
    assert publisher.messages == []


def test_model_and_service_names_are_capped(
    publisher: RecordingPublisher, clock: ManualClock, wall: ManualClock
) -> None:
    collector = _collector(publisher, clock, wall, max_models=2, max_services=1)
    for i in range(5):
        collector.record_request(f"model-{i}", 1, 1, 1.0, service=f"/path/{i}", cost=1.0)
    snap = collector.snapshot()
    assert set(snap.models) == {"model-0", "model-1", OTHER}
    assert snap.models[OTHER].request_count == 3
    assert snap.costs.breakdown_by_model == {"model-0": 1.0, "model-1": 1.0, OTHER: 3.0}
    assert snap.costs.breakdown_by_service == {"/path/0": 1.0, OTHER: 4.0}
    # The events still name the real model.
    assert publisher.of_type(MessageType.REQUEST_UPDATE)[-1].data.model == "model-4"


def test_an_unbound_collector_counts_exactly_under_concurrent_threads(
    publisher: RecordingPublisher,
) -> None:
    # Created outside any loop and never started: calls apply in the calling
    # threads, and the lock keeps the aggregates exact.
    collector = MetricsCollector(publisher, system_stats=False)
    threads, per_thread = 4, 1000
    start = threading.Barrier(threads)

    def worker() -> None:
        start.wait()
        for i in range(per_thread):
            collector.record_request("m", 1, i % 3, 2.0)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(scaled(30))
    snap = collector.snapshot()
    assert snap.metrics.total_requests == threads * per_thread
    assert snap.models["m"].total_completion_tokens == threads * sum(
        i % 3 for i in range(per_thread)
    )
    assert len(publisher.of_type(MessageType.REQUEST_UPDATE)) == threads * per_thread


async def test_flush_refuses_to_run_off_the_loop_thread(publisher: RecordingPublisher) -> None:
    collector = MetricsCollector(publisher, system_stats=False)
    with pytest.raises(RuntimeError, match="event loop thread"):
        await asyncio.to_thread(collector.flush)
    assert [m.type for m in collector.flush()] == ["metrics_update", "cost_update"]
