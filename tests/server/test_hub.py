"""The hub on its own: numbering, snapshot, fan-out, bounds, resume decisions.

Subscribers here write into a list through a real coroutine (optionally held
at a gate, as a paused transport would hold a send); the ASGI side is covered
by the tests that run uvicorn.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from metricstream.exceptions import ConfigError, PublishError
from metricstream.protocol import (
    Filter,
    HeartbeatPayload,
    MessageType,
    RateLimitUpdatePayload,
    decode_frame,
    make_message,
)
from metricstream.server import MemoryReplayLog, MetricsHub, ServerSettings, Subscriber
from tests.server.conftest import error_event, metrics, model_update, request
from tests.support import scaled, wait_until


class Sink:
    """Collects the frames a subscriber is sent; ``gate`` can hold sends back."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def send(self, frame: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("peer gone")
        self.frames.append(frame)

    def messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for frame in self.frames:
            value = json.loads(frame)
            out.extend(value if isinstance(value, list) else [value])
        return out

    def sequences(self) -> list[int]:
        return [m["sequence"] for m in self.messages() if m["type"] != "init"]


def rate_limit(endpoint: str, remaining: int) -> Any:
    return make_message(
        MessageType.RATE_LIMIT_UPDATE,
        RateLimitUpdatePayload(
            endpoint=endpoint, limit=100, remaining=remaining, reset_time=0, percentage_used=1.0
        ),
    )


# -- publishing and the snapshot (no event loop needed) -----------------------


def test_publish_numbers_messages_from_one() -> None:
    hub = MetricsHub()
    original = metrics()
    first = hub.publish(original)
    second = hub.publish(request("r1"))
    assert (first.sequence, second.sequence) == (1, 2)
    assert first.timestamp == original.timestamp
    assert original.sequence is None, "the caller's message is not modified"
    assert hub.sequence == 2
    assert len(hub.log) == 2


@pytest.mark.parametrize("mtype", ["heartbeat", "init", "pong", "subscribe", "bogus"])
def test_publish_refuses_non_stream_types(mtype: str) -> None:
    hub = MetricsHub()
    with pytest.raises(PublishError, match="cannot publish"):
        hub.publish(make_message(mtype, HeartbeatPayload()))
    assert hub.sequence == 0


def test_publish_converts_a_dict_payload_and_rejects_a_bad_one() -> None:
    hub = MetricsHub()
    fields = {"endpoint": "/v1/chat", "limit": 10, "remaining": 5, "reset_time": 0}
    published = hub.publish(
        make_message(MessageType.RATE_LIMIT_UPDATE, {**fields, "percentage_used": 50.0})
    )
    assert isinstance(published.data, RateLimitUpdatePayload)
    with pytest.raises(PublishError, match="invalid rate_limit_update payload"):
        hub.publish(make_message(MessageType.RATE_LIMIT_UPDATE, {**fields, "percentage_used": 500}))
    assert hub.sequence == 1


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("error_rate", 150.0, "error_rate"),  # a percentage above 100
        ("avg_latency_ms", float("nan"), "avg_latency_ms"),  # sent as null
        ("total_requests", -1, "total_requests"),
    ],
)
def test_publish_rejects_a_struct_payload_clients_would_reject(
    field: str, value: Any, expected: str
) -> None:
    # Structs built in Python are not validated; the hub checks what it sends.
    hub = MetricsHub()
    hub.publish(metrics(total=1))
    before = hub.snapshot()
    bad = msgspec.structs.replace(metrics(total=2).data, **{field: value})
    with pytest.raises(PublishError, match=expected):
        hub.publish(make_message(MessageType.METRICS_UPDATE, bad))
    assert hub.sequence == 1
    assert hub.snapshot() == before
    assert [e.sequence for e in hub.log.entries_after(0)] == [1]


def test_publish_rejects_a_message_larger_than_a_clients_buffer() -> None:
    hub = MetricsHub(max_buffer_bytes=4096)
    huge = msgspec.structs.replace(request("r1").data, error_message="x" * 10_000)
    with pytest.raises(PublishError, match="larger than the per-client buffer"):
        hub.publish(make_message(MessageType.REQUEST_UPDATE, huge))
    assert hub.sequence == 0
    hub.publish(request("r2"))
    assert hub.sequence == 1


def test_snapshot_keeps_the_newest_state_per_key_and_recent_events() -> None:
    hub = MetricsHub(recent_requests=3, recent_errors=2)
    hub.publish(metrics(total=1))
    hub.publish(metrics(total=2))
    hub.publish(model_update("a", 1))
    hub.publish(model_update("b", 1))
    hub.publish(model_update("a", 5))
    hub.publish(rate_limit("/x", 9))
    hub.publish(rate_limit("/x", 8))
    for i in range(5):
        hub.publish(request(f"r{i}"))
    for kind in ("e1", "e2", "e3"):
        hub.publish(error_event(kind))
    snap = hub.snapshot()
    assert snap.metrics is not None
    assert snap.metrics.total_requests == 2
    assert {k: v.request_count for k, v in snap.models.items()} == {"a": 5, "b": 1}
    assert snap.rate_limits["/x"].remaining == 8
    assert [r.id for r in snap.recent_requests] == ["r2", "r3", "r4"]
    assert [e.error_type for e in snap.recent_errors] == ["e2", "e3"]
    assert snap.system is None


def test_snapshot_filters_by_type_and_model() -> None:
    hub = MetricsHub()
    hub.publish(metrics())
    hub.publish(model_update("a"))
    hub.publish(model_update("b"))
    hub.publish(request("ra", model="a"))
    hub.publish(request("rb", model="b"))
    hub.publish(error_event("global", model=None))
    snap = hub.snapshot(types=["model_update", "error_update"], models=["a"])
    assert snap.metrics is None
    assert list(snap.models) == ["a"]
    assert snap.recent_requests == []
    assert [e.error_type for e in snap.recent_errors] == ["global"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"recent_requests": -1},
        {"max_buffer_bytes": 10},
        {"heartbeat_interval": 0.0},
    ],
)
def test_invalid_hub_settings_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        MetricsHub(**kwargs)


# -- subscribers -----------------------------------------------------------


async def test_init_comes_first_then_every_message_in_order() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    hub.publish(metrics())
    sink = Sink()
    sub = hub.attach(sink.send)
    for i in range(20):
        hub.publish(request(str(i)))
    await wait_until(lambda: len(sink.frames) == 21)
    init = json.loads(sink.frames[0])
    assert init["type"] == "init"
    assert init["sequence"] == 1
    assert init["metadata"] == {"epoch": hub.epoch, "resumed": False, "server_version": "0.1.0"}
    assert set(init["data"]) == {
        "metrics",
        "models",
        "rate_limits",
        "costs",
        "kv_cache",
        "system",
        "recent_requests",
        "recent_errors",
    }
    assert sink.sequences() == list(range(2, 22))
    assert hub.stats.messages_sent == 21
    hub.detach(sub)
    assert hub.connection_count == 0


async def test_a_held_send_moves_to_a_task_and_keeps_order() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    sink = Sink()
    hub.attach(sink.send)
    await wait_until(lambda: len(sink.frames) == 1)
    sink.gate = asyncio.Event()
    for i in range(5):
        hub.publish(request(str(i)))
    await asyncio.sleep(0)  # let the flush run: the first send suspends at the gate
    assert sink.frames[1:] == []
    hub.publish(request("5"))
    sink.gate.set()
    await wait_until(lambda: len(sink.frames) == 7)
    assert sink.sequences() == [1, 2, 3, 4, 5, 6]
    # Writable again: the next message is written without a task.
    sink.gate = None
    hub.publish(request("6"))
    await wait_until(lambda: len(sink.frames) == 8)
    assert sink.sequences()[-1] == 7


async def test_batch_subscriber_gets_one_array_per_flush() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    sink = Sink()
    hub.attach(sink.send, batch=True)
    for i in range(10):
        hub.publish(request(str(i)))
    await wait_until(lambda: len(sink.frames) == 1)
    frame = json.loads(sink.frames[0])
    assert isinstance(frame, list)
    assert [m["type"] for m in frame] == ["init"] + ["request_update"] * 10
    assert [m.sequence for m in decode_frame(sink.frames[0])[1:]] == list(range(1, 11))


async def test_stalled_subscriber_is_evicted_at_its_bound_and_others_continue() -> None:
    hub = MetricsHub(heartbeat_interval=None, max_buffer_bytes=4096)
    healthy, stalled = Sink(), Sink()
    hub.attach(healthy.send)
    slow = hub.attach(stalled.send)
    await wait_until(lambda: len(stalled.frames) == 1)
    stalled.gate = asyncio.Event()  # never set: the transport never drains
    published = 0
    while not slow.closed.done():
        hub.publish(request(str(published), note="x" * 200))
        published += 1
        assert slow.buffered_bytes <= 4096 + 600, "never past the bound by more than a message"
        await asyncio.sleep(0)
        assert published < 1000, "never evicted"
    assert slow.closed.result() == 4008
    assert hub.stats.evictions == 1
    assert slow.buffered_bytes == 0, "an evicted outbox is released"
    await wait_until(lambda: len(healthy.frames) == published + 1)
    assert healthy.sequences() == list(range(1, published + 1))


async def test_publish_off_the_loop_thread_fails_before_changing_anything() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    hub.attach(Sink().send)
    with pytest.raises(RuntimeError):
        await asyncio.to_thread(hub.publish, metrics())
    assert hub.sequence == 0
    assert len(hub.log) == 0


async def test_failing_send_detaches_quietly() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    sink = Sink()
    sink.fail = True
    sub = hub.attach(sink.send)
    assert await asyncio.wait_for(sub.closed, 5) is None


async def test_resume_replays_only_what_was_missed() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    for i in range(10):
        hub.publish(request(str(i)))
    sink = Sink()
    hub.attach(sink.send, since=7, epoch=hub.epoch)
    await wait_until(lambda: len(sink.frames) == 4)
    init = json.loads(sink.frames[0])
    assert init["metadata"]["resumed"] is True
    assert init["sequence"] == 10
    assert init["data"]["recent_requests"] == []
    assert sink.sequences() == [8, 9, 10]
    assert (hub.stats.replay_hits, hub.stats.replay_misses) == (1, 0)


@pytest.mark.parametrize(
    ("since", "epoch"),
    [(3, "other-epoch"), (1, None), (50, "same")],
    ids=["wrong-epoch", "no-epoch", "beyond-newest"],
)
async def test_impossible_resume_gets_a_full_snapshot(since: int, epoch: str | None) -> None:
    hub = MetricsHub(heartbeat_interval=None, log=MemoryReplayLog(epoch="same"))
    for i in range(10):
        hub.publish(request(str(i)))
    sink = Sink()
    hub.attach(sink.send, since=since, epoch=epoch)
    await wait_until(lambda: len(sink.frames) == 1)
    init = json.loads(sink.frames[0])
    assert init["metadata"]["resumed"] is False
    assert len(init["data"]["recent_requests"]) == 10
    assert hub.stats.replay_misses == 1


async def test_resume_from_before_the_log_gets_a_full_snapshot() -> None:
    hub = MetricsHub(heartbeat_interval=None, log=MemoryReplayLog(max_entries=5))
    for i in range(10):
        hub.publish(request(str(i)))
    sink = Sink()
    hub.attach(sink.send, since=4, epoch=hub.epoch)
    await wait_until(lambda: len(sink.frames) == 1)
    assert json.loads(sink.frames[0])["metadata"]["resumed"] is False


async def test_replay_larger_than_the_buffer_bound_falls_back_to_a_snapshot() -> None:
    hub = MetricsHub(heartbeat_interval=None, max_buffer_bytes=2048)
    for i in range(30):
        hub.publish(request(str(i)))
    sink = Sink()
    sub = hub.attach(sink.send, since=0, epoch=hub.epoch)
    await wait_until(lambda: len(sink.frames) == 1)
    assert json.loads(sink.frames[0])["metadata"]["resumed"] is False
    # The snapshot itself was larger than the bound and was still delivered.
    assert not sub.closed.done()


async def test_filters_apply_to_live_messages_and_can_be_replaced() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    sink = Sink()
    sub = hub.attach(sink.send, types=["request_update", "model_update"], models=["a"])
    hub.publish(metrics())
    hub.publish(request("ra", model="a"))
    hub.publish(request("rb", model="b"))
    hub.publish(model_update("a"))
    await wait_until(lambda: len(sink.frames) == 3)
    assert [m["type"] for m in sink.messages()[1:]] == ["request_update", "model_update"]
    sub.set_filter(Filter())
    hub.publish(metrics())
    await wait_until(lambda: len(sink.frames) == 4)
    assert sink.messages()[-1]["type"] == "metrics_update"


async def test_heartbeats_reach_every_subscriber_without_a_sequence() -> None:
    hub = MetricsHub(heartbeat_interval=0.02)
    sinks = [Sink(), Sink()]
    for sink in sinks:
        hub.attach(sink.send)
    await wait_until(lambda: all(len(s.frames) >= 3 for s in sinks))
    for sink in sinks:
        beat = sink.messages()[1]
        assert beat["type"] == "heartbeat"
        assert "sequence" not in beat
        assert beat["data"]["uptime_seconds"] >= 0
    await hub.close_all(grace=0.01)


async def test_close_all_asks_every_connection_to_go_away_and_waits() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    subs = [hub.attach(Sink().send) for _ in range(3)]

    async def owner(sub: Subscriber) -> None:
        code = await sub.closed
        assert code == 1001
        hub.detach(sub)

    owners = [asyncio.get_running_loop().create_task(owner(s)) for s in subs]
    await hub.close_all(grace=5)
    assert hub.connection_count == 0
    assert hub.closing
    await asyncio.gather(*owners)


# -- settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"token": " "},
        {"max_connections": 0},
        {"max_message_size": 1},
        {"inbound_rate": 0.0},
        {"inbound_rate": float("nan")},
        {"inbound_burst": 0},
        {"close_timeout": 0.0},
        {"path": "metrics"},
        {"allowed_origins": "https://a.example"},
        {"allowed_origins": ("a.example",)},
    ],
)
def test_invalid_server_settings_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ServerSettings(**kwargs)


def test_settings_repr_hides_the_token() -> None:
    text = repr(ServerSettings(token="s3cret"))
    assert "s3cret" not in text
    assert "***" in text


def test_origin_checks() -> None:
    anyone = ServerSettings()
    assert anyone.origin_allowed("https://evil.example")
    strict = ServerSettings(allowed_origins=["https://Dash.example/"], allow_missing_origin=False)
    assert strict.allowed_origins == ("https://Dash.example/",)
    assert strict.origin_allowed("https://dash.example")
    assert not strict.origin_allowed("https://evil.example")
    assert not strict.origin_allowed(None)
    assert ServerSettings(allowed_origins=["https://a.example"]).origin_allowed(None)
    assert ServerSettings(allowed_origins=["*"]).origin_allowed("http://x")


async def test_resume_replays_only_what_the_filter_accepts() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    hub.publish(metrics())
    hub.publish(request("ra", model="a"))
    hub.publish(request("rb", model="b"))
    hub.publish(model_update("a"))
    sink = Sink()
    hub.attach(
        sink.send,
        since=0,
        epoch=hub.epoch,
        types=["request_update", "metrics_update"],
        models=["a"],
    )
    await wait_until(lambda: len(sink.frames) == 3)
    assert sink.sequences() == [1, 2]


async def test_connection_local_frames_count_against_the_bound_too() -> None:
    hub = MetricsHub(heartbeat_interval=None, max_buffer_bytes=1024)
    sink = Sink()
    sub = hub.attach(sink.send)
    await wait_until(lambda: len(sink.frames) == 1)
    sink.gate = asyncio.Event()
    beats = 0
    while not sub.closed.done():
        hub.heartbeat()
        beats += 1
        await asyncio.sleep(0)
        assert beats < 100, "heartbeats piled up past the bound"
    assert sub.closed.result() == 4008


async def test_an_asgi_send_runs_in_a_real_task_and_is_cancelled_like_one() -> None:
    # A send that needs a task (current_task, a timeout) works, and a
    # subscriber detached mid-send cancels it: its cleanup runs.
    hub = MetricsHub(heartbeat_interval=None)
    tasks: list[asyncio.Task[Any] | None] = []
    cleaned = asyncio.Event()
    release = asyncio.Event()

    async def send(frame: str) -> None:
        tasks.append(asyncio.current_task())
        async with asyncio.timeout(scaled(30)):
            try:
                if len(tasks) > 1:
                    await release.wait()
            finally:
                if len(tasks) > 1:
                    cleaned.set()

    sub = hub.attach(send)
    await wait_until(lambda: len(tasks) == 1, what="the init written")
    hub.publish(metrics())
    await wait_until(lambda: len(tasks) == 2, what="the send started")
    assert all(task is not None for task in tasks)
    hub.publish(metrics())  # the writer is busy: counted, left to it
    await wait_until(lambda: hub.stats.send_suspensions >= 1, what="the busy writer counted")
    hub.detach(sub)
    async with asyncio.timeout(scaled(5)):
        await cleaned.wait()
    assert not release.is_set()
