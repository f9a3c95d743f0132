"""Each value is validated once: the collector's events reach a real hub
without being decoded again, and anything else is still checked there."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from metricstream.collector import MetricsCollector
from metricstream.collector._aggregate import Aggregator
from metricstream.exceptions import PublishError
from metricstream.protocol import (
    MessageType,
    MetricsUpdatePayload,
    WebSocketMessage,
    decode,
    make_message,
)
from metricstream.protocol.messages import CheckedMessage
from metricstream.server import MetricsHub
from tests.collector.helpers import ManualClock


def _metrics(**changes: Any) -> MetricsUpdatePayload:
    payload = MetricsUpdatePayload(
        total_requests=1,
        total_tokens=2,
        total_cost=0.0,
        avg_latency_ms=1.0,
        error_rate=0.0,
        streaming_percentage=0.0,
        requests_per_second=0.0,
        tokens_per_second=0.0,
        active_connections=0,
    )
    return msgspec.structs.replace(payload, **changes)


def _checked(mtype: str, data: Any) -> CheckedMessage[Any]:
    return CheckedMessage(type=mtype, timestamp=1_700_000_000_000, data=data)


def test_the_hub_takes_a_checked_message_on_its_builders_word() -> None:
    # A value no client would accept, in a message that claims to be checked:
    # the hub does not decode it again (which is the point of the claim),
    # while the same payload in a plain message is refused as before.
    hub = MetricsHub(heartbeat_interval=None)
    bad = _metrics(error_rate=150.0)
    with pytest.raises(PublishError, match="error_rate"):
        hub.publish(make_message(MessageType.METRICS_UPDATE, bad))
    published = hub.publish(_checked(MessageType.METRICS_UPDATE, bad))
    assert published.sequence == 1
    # What leaves the hub is a plain numbered message.
    assert type(published) is WebSocketMessage


def test_a_checked_message_still_gets_every_check_but_the_decode() -> None:
    hub = MetricsHub(max_buffer_bytes=4096, heartbeat_interval=None)
    with pytest.raises(PublishError, match="not a stream message type"):
        hub.publish(_checked(MessageType.HEARTBEAT, _metrics()))
    aggregator = Aggregator(started_at=0.0)
    long = aggregator.request("m", 1, 1, 1.0, now=0.0, wall=0.0, error_message="x" * 10_000)
    with pytest.raises(PublishError, match="larger than the per-client buffer"):
        hub.publish(long.message)
    assert hub.sequence == 0


def test_a_checked_message_whose_payload_must_be_converted_is_checked() -> None:
    # A dict (or another type's Struct) is not what a builder checked.
    hub = MetricsHub(heartbeat_interval=None)
    fields = msgspec.structs.asdict(_metrics(error_rate=150.0))
    with pytest.raises(PublishError, match="error_rate"):
        hub.publish(_checked(MessageType.METRICS_UPDATE, fields))
    with pytest.raises(PublishError):
        hub.publish(_checked(MessageType.RATE_LIMIT_UPDATE, _metrics(error_rate=150.0)))
    assert hub.sequence == 0


async def test_the_collectors_messages_reach_the_hub_and_decode() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    clock, wall = ManualClock(100.0), ManualClock(1_700_000_000.0)
    collector = MetricsCollector(hub, system_stats=False, clock=clock, wall_clock=wall)
    collector.record_request("m", 10, 20, 30.0, streaming=True, ttft_ms=5.0, itl_ms=1.0)
    collector.record_error("timeout", "slow", model="m", severity="high")
    collector.update_rate_limit("/v1/chat", 10, 4, 0)
    collector.update_kv_cache(
        cache_hits=1,
        cache_misses=1,
        cache_size_bytes=1,
        cache_entries=1,
        evictions=0,
        avg_lookup_time_ms=0.1,
    )
    clock.advance(1.0)
    published = collector.flush()
    assert len(published) == 5
    entries = hub.log.entries_after(0)
    assert entries is not None
    decoded = [decode(bytes(entry.frame.data)) for entry in entries]
    assert [m.type for m in decoded] == [
        "request_update",
        "error_update",
        "metrics_update",
        "model_update",
        "cost_update",
        "rate_limit_update",
        "kv_cache_update",
    ]
    assert [m.sequence for m in decoded] == list(range(1, 8))
    assert decoded[0].data.time_to_first_token_ms == 5.0
    snapshot = hub.snapshot()
    assert snapshot.rate_limits["/v1/chat"].percentage_used == 60.0
    assert snapshot.recent_errors[0].severity == "high"
