"""The store against recorded message sequences: init, resume, reset, stale, bounds."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from msgspec.structs import replace

from metricstream.protocol import (
    MAX_KEYS,
    ErrorUpdatePayload,
    InitPayload,
    MessageType,
    RequestUpdatePayload,
    SystemUpdatePayload,
    WebSocketMessage,
    make_message,
)
from metricstream.store import MetricsStore, RealtimeMetricsState

from ..protocol.test_messages import COST, ERROR, KV, METRICS, MODEL, RATE, REQUEST, SYSTEM


def msg(mtype: MessageType, data: Any, seq: int | None = None, ts: int = 1_000) -> Any:
    return make_message(mtype, data, sequence=seq, timestamp=ts)


def init(seq: int, data: InitPayload | None = None, *, resumed: bool = False) -> Any:
    return make_message(
        MessageType.INIT,
        data or InitPayload(),
        sequence=seq,
        timestamp=1_000,
        metadata={"epoch": "e", "resumed": resumed},
    )


def request(i: int) -> RequestUpdatePayload:
    return replace(REQUEST, id=f"r{i}")


def test_empty_state_has_the_seeds_shape() -> None:
    state = MetricsStore().state
    assert state == RealtimeMetricsState()
    assert state.metrics is None
    assert dict(state.models) == {}
    assert state.recent_requests == ()
    assert state.connection_state == "DISCONNECTED"
    assert state.is_connected is False
    assert state.last_update is None
    # The seed's fields, and what its sources could not measure.
    assert {f.name for f in dataclasses.fields(state)} == {
        "metrics",
        "metrics_unknown",
        "metrics_estimated",
        "models",
        "recent_requests",
        "recent_errors",
        "system_stats",
        "rate_limits",
        "costs",
        "kv_cache",
        "is_connected",
        "connection_state",
        "last_update",
    }


def test_every_state_message_lands_in_its_place() -> None:
    store = MetricsStore()
    for i, (mtype, data) in enumerate(
        [
            (MessageType.METRICS_UPDATE, METRICS),
            (MessageType.MODEL_UPDATE, MODEL),
            (MessageType.SYSTEM_UPDATE, SYSTEM),
            (MessageType.RATE_LIMIT_UPDATE, RATE),
            (MessageType.COST_UPDATE, COST),
            (MessageType.KV_CACHE_UPDATE, KV),
            (MessageType.REQUEST_UPDATE, REQUEST),
            (MessageType.ERROR_UPDATE, ERROR),
        ],
        start=1,
    ):
        assert store.apply(msg(mtype, data, seq=i, ts=1_000 + i))
    state = store.state
    assert state.metrics == METRICS
    assert state.models == {MODEL.model: MODEL}
    assert state.system_stats == SYSTEM
    assert state.rate_limits == {RATE.endpoint: RATE}
    assert state.costs == COST
    assert state.kv_cache == KV
    assert state.recent_requests == (REQUEST,)
    assert state.recent_errors == (ERROR,)
    assert state.last_update == 1_008


def test_full_init_replaces_state_and_resumed_init_keeps_it() -> None:
    store = MetricsStore()
    store.apply(msg(MessageType.MODEL_UPDATE, replace(MODEL, model="old"), seq=1))
    store.apply(msg(MessageType.REQUEST_UPDATE, request(1), seq=2))
    snapshot = InitPayload(
        metrics=METRICS,
        models={MODEL.model: MODEL},
        recent_requests=[request(2), request(3)],  # oldest first, as sent
        recent_errors=[ERROR],
        system=SYSTEM,
    )
    assert store.apply(init(10, snapshot))
    state = store.state
    assert list(state.models) == [MODEL.model]
    assert [r.id for r in state.recent_requests] == ["r3", "r2"]
    assert state.metrics == METRICS
    assert state.system_stats == SYSTEM
    assert state.recent_errors == (ERROR,)
    # A resumed init changes nothing: the replayed messages follow.
    assert not store.apply(init(10, InitPayload(), resumed=True))
    assert store.state is state


def test_an_older_state_message_never_overwrites_a_newer_one() -> None:
    store = MetricsStore()
    newer = replace(MODEL, request_count=20)
    older = replace(MODEL, request_count=10)
    assert store.apply(msg(MessageType.MODEL_UPDATE, newer, seq=5))
    assert not store.apply(msg(MessageType.MODEL_UPDATE, older, seq=4))
    assert store.state.models[MODEL.model].request_count == 20
    # Another model is a separate key.
    other = replace(MODEL, model="other")
    assert store.apply(msg(MessageType.MODEL_UPDATE, other, seq=3))
    # Messages older than the snapshot are stale too.
    store.apply(init(50, InitPayload(metrics=METRICS)))
    assert not store.apply(msg(MessageType.METRICS_UPDATE, METRICS, seq=49))
    assert store.apply(msg(MessageType.METRICS_UPDATE, METRICS, seq=51))


def test_without_sequences_timestamps_decide() -> None:
    # The FakeAI dialect carries no sequence.
    store = MetricsStore()
    busy = replace(SYSTEM, cpu_usage=80.0)
    idle = replace(SYSTEM, cpu_usage=5.0)
    assert store.apply(msg(MessageType.SYSTEM_UPDATE, busy, ts=2_000))
    assert not store.apply(msg(MessageType.SYSTEM_UPDATE, idle, ts=1_000))
    assert store.state.system_stats == busy
    assert store.apply(msg(MessageType.SYSTEM_UPDATE, idle, ts=3_000))


def test_each_request_is_held_once_and_histories_are_bounded() -> None:
    store = MetricsStore(max_recent_requests=3, max_recent_errors=2)
    for i in range(10):
        store.apply(msg(MessageType.REQUEST_UPDATE, request(i), seq=i + 1))
        store.apply(msg(MessageType.ERROR_UPDATE, ERROR, seq=100 + i))
    assert not store.apply(msg(MessageType.REQUEST_UPDATE, request(9), seq=200))
    assert [r.id for r in store.state.recent_requests] == ["r9", "r8", "r7"]
    assert len(store.state.recent_errors) == 2
    # An evicted id may come back (it is history, not a duplicate any more).
    assert store.apply(msg(MessageType.REQUEST_UPDATE, request(0), seq=201))


def test_init_history_is_oldest_first_and_keeps_the_newest() -> None:
    store = MetricsStore(max_recent_requests=3)
    store.apply(init(5, InitPayload(recent_requests=[request(i) for i in range(1, 6)])))
    assert [r.id for r in store.state.recent_requests] == ["r5", "r4", "r3"]
    store.apply(msg(MessageType.REQUEST_UPDATE, request(6), seq=6))
    assert [r.id for r in store.state.recent_requests] == ["r6", "r5", "r4"]


def test_a_later_record_of_a_request_replaces_it_in_place() -> None:
    store = MetricsStore()
    started = replace(REQUEST, id="r1", status="in_progress")
    done = replace(REQUEST, id="r1", status="success")
    history = store.request_history()
    store.apply(msg(MessageType.REQUEST_UPDATE, started, seq=1))
    store.apply(msg(MessageType.REQUEST_UPDATE, request(2), seq=2))
    assert store.apply(msg(MessageType.REQUEST_UPDATE, done, seq=3))
    assert [(r.id, r.status) for r in store.state.recent_requests] == [
        ("r2", "success"),
        ("r1", "success"),
    ]
    assert [r.status for r in history.requests if r.id == "r1"] == ["success", "in_progress"]
    # A snapshot holding both records of one request shows it once.
    fresh = MetricsStore()
    fresh.apply(init(3, InitPayload(recent_requests=[started, request(2), done])))
    assert [(r.id, r.status) for r in fresh.state.recent_requests] == [
        ("r2", "success"),
        ("r1", "success"),
    ]


def test_keyed_state_is_bounded() -> None:
    store = MetricsStore()
    for i in range(1100):
        store.apply(msg(MessageType.MODEL_UPDATE, replace(MODEL, model=f"m{i}")))
    models = store.state.models
    assert len(models) == MAX_KEYS == 1024
    assert "m1099" in models
    assert "m0" not in models


def test_unknown_and_connection_messages_change_nothing() -> None:
    store = MetricsStore()
    assert not store.apply(WebSocketMessage(type="historical_data", data={"x": 1}))
    assert not store.apply(msg(MessageType.PONG, None))
    assert store.state.last_update is None


def test_watch_calls_back_only_when_the_selected_value_changes() -> None:
    store = MetricsStore()
    seen: list[int | None] = []
    watch = store.watch(lambda s: s.metrics.total_requests if s.metrics else None, seen.append)
    store.apply(msg(MessageType.METRICS_UPDATE, METRICS, seq=1))
    store.apply(msg(MessageType.MODEL_UPDATE, MODEL, seq=2))  # not selected
    store.apply(msg(MessageType.METRICS_UPDATE, METRICS, seq=3))  # same value
    store.apply(msg(MessageType.METRICS_UPDATE, replace(METRICS, total_requests=7), seq=4))
    assert seen == [1000, 7]
    watch.cancel()
    store.apply(msg(MessageType.METRICS_UPDATE, METRICS, seq=5))
    assert seen == [1000, 7]


def test_a_failing_watch_or_listener_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MetricsStore()
    seen: list[Any] = []

    def boom(_: Any, __: Any = None) -> None:
        raise RuntimeError("boom")

    store.watch(lambda s: s.metrics, boom)
    store.on(MessageType.METRICS_UPDATE, boom)
    store.watch(lambda s: s.metrics, seen.append)
    store.apply(msg(MessageType.METRICS_UPDATE, METRICS, seq=1))
    assert seen == [METRICS]
    assert "failed" in caplog.text


async def test_coalesced_watch_fires_at_most_once_per_interval_with_the_latest_value() -> None:
    store = MetricsStore()
    seen: list[int] = []
    done = asyncio.Event()

    def record(value: int) -> None:
        seen.append(value)
        if value == 500:
            done.set()

    store.watch(
        lambda s: len(s.recent_requests) and int(s.recent_requests[0].id[1:]), record, interval=0.05
    )
    for i in range(1, 501):
        store.apply(msg(MessageType.REQUEST_UPDATE, request(i), seq=i))
    await asyncio.wait_for(done.wait(), 5)
    # The first change fires at once, the burst after it is folded into one call.
    assert seen == [1, 500]


def test_connection_state_is_part_of_the_state() -> None:
    store = MetricsStore()
    states: list[str] = []
    store.watch(lambda s: s.connection_state, states.append)
    store.set_connection_state("CONNECTING")
    store.set_connection_state("CONNECTED")
    assert store.state.is_connected
    assert store.connection_status().is_connected
    store.set_connection_state("RECONNECTING")
    assert states == ["CONNECTING", "CONNECTED", "RECONNECTING"]


def test_hook_views() -> None:
    store = MetricsStore()
    history = store.request_history(max_size=2, filter_fn=lambda r: r.streaming)
    errors_seen: list[ErrorUpdatePayload] = []
    monitor = store.error_monitor(max_size=2, on_error=errors_seen.append)
    for i in range(4):
        store.apply(msg(MessageType.REQUEST_UPDATE, replace(REQUEST, id=f"s{i}")))
        store.apply(
            msg(
                MessageType.REQUEST_UPDATE,
                replace(REQUEST, id=f"n{i}", streaming=False),
            )
        )
        store.apply(msg(MessageType.ERROR_UPDATE, ERROR))
    assert [r.id for r in history.requests] == ["s3", "s2"]
    history.clear()
    assert history.requests == []
    assert monitor.error_count == 4
    assert len(monitor.errors) == 2
    assert len(errors_seen) == 4
    monitor.clear()
    assert monitor.error_count == 0

    assert store.model_metrics(MODEL.model) is None
    store.apply(msg(MessageType.MODEL_UPDATE, MODEL))
    assert store.model_metrics(MODEL.model) == MODEL
    assert store.model_metrics(None) is None

    assert store.system_health().is_healthy is False  # no stats yet
    store.apply(msg(MessageType.SYSTEM_UPDATE, SYSTEM, ts=1))
    assert store.system_health().is_healthy is True
    for field, value in [
        ("cpu_usage", 90.0),
        ("memory_usage", 95.0),
        ("gpu_usage", 95.0),
        ("queue_size", 1000),
    ]:
        hot: SystemUpdatePayload = replace(SYSTEM, **{field: value})
        fresh = MetricsStore()
        fresh.apply(msg(MessageType.SYSTEM_UPDATE, hot))
        assert fresh.system_health().is_healthy is False, field

    stats = store.aggregate_stats()
    assert stats.total_models == 1
    assert stats.total_requests == MODEL.request_count  # from the models, no metrics yet
    assert stats.error_rate == pytest.approx(10.0)
    assert stats.recent_request_count == 8
    store.apply(msg(MessageType.METRICS_UPDATE, METRICS, ts=5_000))
    stats = store.aggregate_stats()
    assert (stats.total_requests, stats.requests_per_second) == (1000, 10.0)
    assert stats.recent_error_count == 4
    store.clear_history()
    assert store.aggregate_stats().recent_request_count == 0


def test_invalid_sizes_and_intervals_raise_the_projects_config_error() -> None:
    from metricstream.exceptions import ConfigError
    from metricstream.store import StateReducer

    store = MetricsStore()
    with pytest.raises(ConfigError, match="interval must be positive"):
        store.watch(lambda state: state.metrics, lambda value: None, interval=0)
    with pytest.raises(ConfigError, match="max_size"):
        store.request_history(max_size=0)
    with pytest.raises(ConfigError, match="max_size"):
        store.error_monitor(max_size=0)
    with pytest.raises(ConfigError, match="history sizes"):
        StateReducer(max_recent_requests=0)


def test_metrics_fields_a_source_cannot_measure_are_named_not_zeroed() -> None:
    store = MetricsStore()
    unknown = {
        "unknown": ["total_cost", "streaming_percentage", 7],
        "estimated": ["total_requests"],
    }
    store.apply(make_message(MessageType.METRICS_UPDATE, METRICS, sequence=1, metadata=unknown))
    state = store.state
    assert state.metrics_unknown == {"total_cost", "streaming_percentage"}
    assert state.metrics_estimated == {"total_requests"}
    # A later update from a source that measures everything clears them.
    store.apply(make_message(MessageType.METRICS_UPDATE, METRICS, sequence=2))
    assert store.state.metrics_unknown == frozenset()
    assert store.state.metrics_estimated == frozenset()
