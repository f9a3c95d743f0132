"""Aggregator: the collector's arithmetic with no loop, no thread and no clock.

Every time is an argument, so each test states exactly when things happen.
The property tests hold the promise that lets the hub skip its own check:
whatever the aggregator accepts, it builds messages the clients' decoder
accepts.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metricstream.collector import OTHER, InvalidMetricError, ModelPrice, SystemSample
from metricstream.collector._aggregate import Aggregator
from metricstream.exceptions import ConfigError
from metricstream.protocol import MessageType, WebSocketMessage, decode, encode
from metricstream.protocol.messages import CheckedMessage

PRICES = {"a": ModelPrice(1.0, 2.0), "b": ModelPrice(10.0, 20.0)}
WALL = 1_700_000_000.0


def _aggregator(**options: Any) -> Aggregator:
    options.setdefault("window", 10.0)
    options.setdefault("resolution", 1.0)
    return Aggregator(started_at=100.0, prices=PRICES, id_prefix="req-t", **options)


def _record(agg: Aggregator, *args: Any, now: float, **kwargs: Any) -> WebSocketMessage[Any]:
    record = agg.request(*args, now=now, wall=WALL, **kwargs)
    agg.add_request(record)
    return record.message


def test_requests_aggregate_at_the_times_given() -> None:
    agg = _aggregator()
    _record(agg, "a", 100, 50, 100.0, now=100.0)
    _record(agg, "a", 200, 100, 300.0, now=101.5, streaming=True, ttft_ms=50.0)
    _record(agg, "b", 10, 0, 200.0, now=102.0, status="error")
    _record(agg, "b", 40, 10, 400.0, now=103.0, cost=0.5)

    snap = agg.snapshot(105.0, connections=4)
    assert snap.metrics.total_requests == 4
    assert snap.metrics.total_tokens == 510
    assert snap.metrics.total_cost == 0.5007
    assert snap.metrics.requests_per_second == 0.8  # 4 requests over the 5 s observed
    assert snap.metrics.error_rate == 25.0
    assert snap.metrics.active_connections == 4
    assert snap.models["a"].ttft_p50_ms == 50.0
    assert snap.models["b"].error_count == 1
    assert agg.latency_percentiles(105.0).p50 == 200.0
    # Read later: the window has moved on, the totals have not.
    later = agg.snapshot(114.0)
    assert later.metrics.requests_per_second == 0.0
    assert later.metrics.total_requests == 4
    assert agg.latency_percentiles(114.0).count == 0


def test_request_builds_its_event_without_recording_it() -> None:
    agg = _aggregator()
    record = agg.request("a", 1, 2, 3.0, now=100.0, wall=WALL + 0.0004, usage_estimated=True)
    message = record.message
    assert isinstance(message, CheckedMessage)
    assert message.type == MessageType.REQUEST_UPDATE
    assert message.timestamp == 1_700_000_000_000
    assert message.metadata == {"usage_estimated": True}
    assert record.payload.id == "req-t-1"
    assert record.payload.created == WALL
    assert agg.snapshot(100.0).metrics.total_requests == 0
    agg.add_request(record)
    assert agg.snapshot(100.0).metrics.total_requests == 1


def test_build_returns_only_what_changed_since_published() -> None:
    agg = _aggregator()
    first = agg.build(100.0, WALL)
    assert [m.type for m in first] == ["metrics_update", "cost_update"]
    assert all(m.timestamp == 1_700_000_000_000 for m in first)
    # Not marked published: built again.
    assert [m.type for m in agg.build(100.0, WALL)] == ["metrics_update", "cost_update"]
    for message in first:
        agg.published(message)
    assert agg.build(100.0, WALL) == []

    agg.set_rate_limit(agg.rate_limit("/v1/chat", 100, 40, 0))
    agg.set_kv_cache(
        agg.kv_cache(
            cache_hits=3,
            cache_misses=1,
            cache_size_bytes=1,
            cache_entries=1,
            evictions=0,
            avg_lookup_time_ms=0.5,
        )
    )
    _record(agg, "a", 1, 1, 1.0, now=100.0)
    built = agg.build(100.0, WALL)
    assert [m.type for m in built] == [
        "metrics_update",
        "model_update",
        "cost_update",
        "rate_limit_update",
        "kv_cache_update",
    ]
    # States made only of checked values are marked; sums are left to the hub.
    checked = {m.type for m in built if isinstance(m, CheckedMessage)}
    assert checked == {"rate_limit_update", "kv_cache_update"}
    for message in built:
        agg.published(message)
    agg.set_rate_limit(agg.rate_limit("/v1/embed", 10, 10, 0))
    assert [(m.type, m.data.endpoint) for m in agg.build(100.0, WALL)] == [
        ("rate_limit_update", "/v1/embed")
    ]


def test_load_and_in_flight_feed_system_update() -> None:
    agg = _aggregator()
    assert agg.snapshot(100.0).system is None
    agg.set_system(SystemSample(10.0, 20.0, 30.0, 1, 2))
    agg.request_started()
    agg.request_started()
    agg.request_finished()
    system = agg.snapshot(100.0).system
    assert system is not None
    assert (system.active_workers, system.queue_size) == (1, 0)
    agg.set_load(active_workers=7, queue_size=3)
    system = agg.snapshot(100.0).system
    assert system is not None
    assert (system.active_workers, system.queue_size) == (7, 3)
    with pytest.raises(InvalidMetricError, match="queue_size"):
        agg.set_load(active_workers=1, queue_size=-1)
    system = agg.snapshot(100.0).system
    assert system is not None
    assert system.active_workers == 7  # nothing changed


def test_names_past_the_caps_count_under_other() -> None:
    agg = _aggregator(max_models=1, max_services=1)
    for i in range(3):
        _record(agg, f"m{i}", 1, 1, 1.0, now=100.0, service=f"/s{i}", cost=1.0)
    snap = agg.snapshot(100.0)
    assert set(snap.models) == {"m0", OTHER}
    assert snap.costs.breakdown_by_service == {"/s0": 1.0, OTHER: 2.0}


def test_costs_too_large_to_price_are_refused() -> None:
    agg = _aggregator()
    # Finite counts whose price is not: the event could not be published.
    with pytest.raises(InvalidMetricError, match="too large to price"):
        agg.request("b", 10**310, 0, 1.0, now=100.0, wall=WALL)
    with pytest.raises(InvalidMetricError, match="too large to price"):
        agg.request("b", 10**307, 10**307, 1.0, now=100.0, wall=WALL)


def test_a_mean_of_huge_gaps_stays_finite() -> None:
    agg = _aggregator()
    record = agg.request(
        "a", 1, 3, 1.0, now=100.0, wall=WALL, itl_samples_ms=[sys.float_info.max] * 2
    )
    assert record.payload.inter_token_latency_ms == sys.float_info.max
    assert decode(encode(record.message)).data == record.payload


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ConfigError, match="window"):
        Aggregator(started_at=0.0, window=0)
    with pytest.raises(ConfigError, match="max_models"):
        Aggregator(started_at=0.0, max_models=0)
    with pytest.raises(ConfigError, match="cost_period"):
        Aggregator(started_at=0.0, cost_period="year")  # type: ignore[arg-type]


# --- what the aggregator accepts, the clients' decoder accepts ---------------

_amounts = st.floats(min_value=0.0, max_value=sys.float_info.max, allow_nan=False)
_counts = st.integers(min_value=0, max_value=2**80)
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
_names = _text.filter(bool)
_requests = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["a", "b", "unpriced"]) | _names,
        "prompt_tokens": _counts,
        "completion_tokens": _counts,
        "latency_ms": _amounts,
        "dt": st.floats(min_value=0.0, max_value=30.0),
    },
    optional={
        "streaming": st.booleans(),
        "status": st.sampled_from(["success", "error", "in_progress"]),
        "error_message": _text,
        "cost": _amounts,
        "ttft_ms": _amounts,
        "itl_ms": _amounts,
        "itl_samples_ms": st.lists(_amounts, max_size=5),
        "service": _names,
        "finish_reason": _text,
        "endpoint": _text,
        "usage_estimated": st.booleans(),
    },
)


def _wire_ok(message: WebSocketMessage[Any]) -> None:
    decoded = decode(encode(message))
    assert decoded.type == message.type
    assert decoded.data == message.data


@settings(max_examples=150, deadline=None)
@given(requests=st.lists(_requests, max_size=12))
def test_every_message_built_from_accepted_values_decodes(requests: list[dict[str, Any]]) -> None:
    agg = _aggregator(default_price=ModelPrice(3.0, 4.0))
    now = 100.0
    for request in requests:
        options = dict(request)
        now += options.pop("dt")
        try:
            record = agg.request(now=now, wall=WALL, **options)
        except InvalidMetricError:
            continue  # refused: nothing recorded, nothing built
        # The event goes out unchecked by the hub, so it must decode.
        _wire_ok(record.message)
        agg.add_request(record)
        payload = record.payload
        assert payload.total_tokens == payload.prompt_tokens + payload.completion_tokens
        assert math.isfinite(payload.cost)
    for message in agg.build(now, WALL):
        if isinstance(message, CheckedMessage):
            _wire_ok(message)
        snap = agg.snapshot(now)
        assert 0.0 <= snap.metrics.error_rate <= 100.0
        assert 0.0 <= snap.metrics.streaming_percentage <= 100.0


@settings(max_examples=100, deadline=None)
@given(
    hits=_counts,
    misses=_counts,
    size=_counts,
    lookup=_amounts,
    limit=_counts,
    used=st.floats(min_value=0.0, max_value=1.0),
    error=_text,
)
def test_checked_states_and_errors_decode(
    hits: int, misses: int, size: int, lookup: float, limit: int, used: float, error: str
) -> None:
    agg = _aggregator()
    agg.set_kv_cache(
        agg.kv_cache(
            cache_hits=hits,
            cache_misses=misses,
            cache_size_bytes=size,
            cache_entries=size,
            evictions=misses,
            avg_lookup_time_ms=lookup,
        )
    )
    remaining = limit - int(limit * used)
    agg.set_rate_limit(agg.rate_limit("/v1/chat", limit, max(0, remaining), size))
    checked = [m for m in agg.build(100.0, WALL) if isinstance(m, CheckedMessage)]
    assert {m.type for m in checked} == {"kv_cache_update", "rate_limit_update"}
    for message in checked:
        _wire_ok(message)
    _wire_ok(agg.error("e", error, wall=WALL, model=error or None, stack_trace=error))


def test_the_collector_forwards_every_option_to_the_aggregator() -> None:
    # record_request passes its arguments on by position: each must land on
    # the parameter of the same name.
    from metricstream.collector import MetricsCollector
    from tests.collector.helpers import ManualClock, RecordingPublisher

    options: dict[str, Any] = {
        "streaming": True,
        "status": "error",
        "error_message": "upstream said no",
        "cost": 0.25,
        "user_id": "user-1",
        "organization_id": "org-1",
        "ttft_ms": 7.0,
        "request_id": "r-1",
        "service": "/v1/completions",
        "itl_ms": 3.0,
        "itl_samples_ms": [1.0, 2.0, 6.0],
        "finish_reason": "length",
        "endpoint": "/v1/completions",
        "usage_estimated": True,
    }
    publisher = RecordingPublisher()
    collector = MetricsCollector(
        publisher,
        system_stats=False,
        prices=PRICES,
        clock=ManualClock(100.0),
        wall_clock=ManualClock(WALL),
    )
    collector.record_request("a", 10, 20, 30.0, **options)
    record = _aggregator().request("a", 10, 20, 30.0, now=100.0, wall=WALL, **options)
    [message] = publisher.messages
    assert message.data == record.payload
    assert message.metadata == record.message.metadata == {"usage_estimated": True}
    snap = collector.snapshot()
    assert snap.costs.breakdown_by_service == {"/v1/completions": 0.25}
