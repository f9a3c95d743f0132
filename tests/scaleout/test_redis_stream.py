"""The stream shared through a real Redis: numbering, snapshot, trimming, epochs."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from metricstream.protocol import MessageType
from metricstream.server import MetricsHub, RedisPublisher
from tests.server.conftest import metrics, model_update, open_client, recv, recv_type, request
from tests.support import scaled, wait_until

from .conftest import RedisProcess, node


async def _log(redis_url: str) -> list[dict[bytes, bytes]]:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        entries: Any = await client.xrange("metricstream:log")
        return [fields for _id, fields in entries]
    finally:
        await client.aclose()


async def test_racing_publishers_share_one_contiguous_sequence(redis_server: RedisProcess) -> None:
    # Small batches, so that the two publishers' script calls interleave.
    count = 400
    async with (
        RedisPublisher(redis_server.url, batch=7) as one,
        RedisPublisher(redis_server.url, batch=5) as two,
    ):
        for i in range(count):
            one.publish(request(f"a{i}"))
            two.publish(request(f"b{i}"))
            if i % 50 == 0:
                await asyncio.sleep(0)
        async with asyncio.timeout(scaled(20)):
            await one.flush()
            await two.flush()
        assert one.sent == two.sent == count
        assert one.dropped == two.dropped == 0
    entries = await _log(redis_server.url)
    sequences = [int(e[b"s"]) for e in entries]
    assert sequences == list(range(1, 2 * count + 1))
    bodies = [e[b"b"] for e in entries]
    ids = [b.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode() for b in bodies]
    assert sorted(ids) == sorted([f"a{i}" for i in range(count)] + [f"b{i}" for i in range(count)])
    # Each publisher's own messages keep their order.
    assert [i for i in ids if i[0] == "a"] == [f"a{i}" for i in range(count)]


async def test_two_nodes_deliver_the_same_numbered_stream(redis_server: RedisProcess) -> None:
    async with node(redis_server.url) as first, node(redis_server.url) as second:
        # Published through one node's hub: it goes to Redis, both nodes read it.
        first.hub.publish(model_update("m1", 3))
        await wait_until(lambda: second.hub.sequence == 1, 10, "the second node reading")
        async with open_client(first.url()) as a, open_client(second.url()) as b:
            init_a, init_b = await recv(a), await recv(b)
            assert init_a["metadata"]["epoch"] == init_b["metadata"]["epoch"]
            assert init_a["sequence"] == init_b["sequence"] == 1
            assert init_b["data"]["models"]["m1"]["request_count"] == 3
            for i in range(20):
                second.hub.publish(request(f"r{i}"))
            got_a = [await recv_type(a, "request_update") for _ in range(20)]
            got_b = [await recv_type(b, "request_update") for _ in range(20)]
            assert [m["sequence"] for m in got_a] == list(range(2, 22))
            assert [m["sequence"] for m in got_b] == list(range(2, 22))
            assert [m["data"]["id"] for m in got_a] == [f"r{i}" for i in range(20)]


async def test_a_late_node_builds_init_from_redis_and_serves_resumes(
    redis_server: RedisProcess,
) -> None:
    async with RedisPublisher(redis_server.url) as publisher:
        publisher.publish(metrics(total=7))
        publisher.publish(model_update("m2", 5))
        for i in range(5):
            publisher.publish(request(f"q{i}", model="m2"))
        async with asyncio.timeout(scaled(10)):
            await publisher.flush()
    async with node(redis_server.url) as late:
        assert late.hub.sequence == 7
        async with open_client(late.url()) as ws:
            init = await recv(ws)
            assert init["data"]["metrics"]["total_requests"] == 7
            assert init["data"]["models"]["m2"]["request_count"] == 5
            assert [r["id"] for r in init["data"]["recent_requests"]] == [f"q{i}" for i in range(5)]
            epoch = init["metadata"]["epoch"]
        # The log it loaded serves a resume from before it started.
        async with open_client(late.url(f"since=3&epoch={epoch}")) as ws:
            init = await recv(ws)
            assert init["metadata"]["resumed"] is True
            replayed = [await recv(ws) for _ in range(4)]
            assert [m["sequence"] for m in replayed] == [4, 5, 6, 7]


async def test_a_resume_beyond_the_trimmed_log_gets_a_snapshot(redis_server: RedisProcess) -> None:
    async with node(redis_server.url, max_entries=5) as one:
        for i in range(12):
            one.hub.publish(request(f"t{i}"))
        await wait_until(lambda: one.hub.sequence == 12, 10, "the node reading")
        entries = await _log(redis_server.url)
        assert [int(e[b"s"]) for e in entries] == [8, 9, 10, 11, 12]
        async with open_client(one.url(f"since=2&epoch={one.hub.epoch}")) as ws:
            init = await recv(ws)
            assert init["metadata"]["resumed"] is False
            assert len(init["data"]["recent_requests"]) == 12
        async with open_client(one.url(f"since=9&epoch={one.hub.epoch}")) as ws:
            init = await recv(ws)
            assert init["metadata"]["resumed"] is True
            assert [(await recv(ws))["sequence"] for _ in range(3)] == [10, 11, 12]


async def test_publish_still_refuses_what_the_stream_refuses(redis_server: RedisProcess) -> None:
    import pytest

    from metricstream.exceptions import PublishError
    from metricstream.protocol import make_message

    async with RedisPublisher(redis_server.url) as publisher:
        with pytest.raises(PublishError):
            publisher.publish(make_message(MessageType.HEARTBEAT, {}))
        bad: Any = {"total_requests": -1}
        with pytest.raises(PublishError):
            publisher.publish(make_message(MessageType.METRICS_UPDATE, bad))
        assert publisher.pending == 0
    hub = MetricsHub()
    assert hub.degraded is None


async def test_bad_entries_in_redis_are_skipped_and_counted(redis_server: RedisProcess) -> None:
    from redis.asyncio import Redis

    async with node(redis_server.url) as one:
        one.hub.publish(request("good0"))
        await wait_until(lambda: one.hub.sequence == 1, 10, "the first message")
        client = Redis.from_url(redis_server.url)
        try:
            epoch = one.hub.epoch
            # Written by something that is not a publisher: not JSON, no
            # sequence, a payload the clients' decoder refuses.
            await client.xadd("metricstream:log", {"s": "2", "e": epoch, "b": "not json"})
            await client.xadd("metricstream:log", {"e": epoch, "b": "{}"})
            bad = b'{"type":"request_update","timestamp":1,"data":{"id":"x"}}'
            await client.xadd("metricstream:log", {"s": "2", "e": epoch, "b": bad})
        finally:
            await client.aclose()
        await wait_until(lambda: one.backend.bad_entries == 3, 10, "the bad entries read")
        async with open_client(one.url()) as ws:
            await recv(ws)
            one.hub.publish(request("good1"))
            message = await recv(ws)
            assert (message["sequence"], message["data"]["id"]) == (2, "good1")


def test_a_url_that_is_not_redis_is_a_config_error() -> None:
    import pytest

    from metricstream.exceptions import ConfigError
    from metricstream.server import RedisBackend

    with pytest.raises(ConfigError):
        RedisBackend("http://127.0.0.1:1/0")
    with pytest.raises(ConfigError):
        RedisPublisher("redis://127.0.0.1:1/0", max_pending=0)
    with pytest.raises(ConfigError):
        RedisPublisher("redis://127.0.0.1:1/0", timeout=0)


async def test_a_node_bounds_and_evicts_a_stalled_client_with_4008(
    redis_server: RedisProcess,
) -> None:
    from tests.server.test_slow_consumer import BOUND, raw_handshake, read_close_code

    hub = MetricsHub(heartbeat_interval=None, max_buffer_bytes=BOUND)
    async with node(redis_server.url, hub=hub) as one:
        stalled_sock = await asyncio.to_thread(raw_handshake, one.port)
        try:
            await wait_until(lambda: hub.connection_count == 1, 10, "the raw client attached")
            async with open_client(one.url()) as healthy:
                assert (await recv(healthy))["type"] == "init"
                received: list[int] = []

                async def read_healthy() -> None:
                    while True:
                        received.append((await recv(healthy, 30))["sequence"])

                reader = asyncio.get_running_loop().create_task(read_healthy())
                note = "x" * 2000
                sent = [0]
                while hub.stats.evictions == 0:
                    for _ in range(20):
                        hub.publish(request("r", note=note))
                    sent[0] += 20
                    # Through Redis and back: the healthy client gets them all.
                    await wait_until(lambda: len(received) >= sent[0], 10, "healthy delivery")
                    assert len(received) < 20_000, "the stalled client was never evicted"
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                assert received == list(range(1, len(received) + 1))
            assert await asyncio.to_thread(read_close_code, stalled_sock) == 4008
        finally:
            stalled_sock.close()


async def test_a_node_that_cannot_reach_redis_does_not_start() -> None:
    import pytest
    from redis.exceptions import ConnectionError as RedisConnectionError

    from metricstream.server import RedisBackend
    from tests.support import free_port

    hub = MetricsHub(heartbeat_interval=None)
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(RedisConnectionError):
        await backend.start(hub)
    # Nothing was wired: the hub still numbers in process.
    assert hub.publish(request("local")).sequence == 1
    assert backend.hub is None


async def test_another_node_takes_the_aggregators_lease_when_its_holder_dies(
    redis_server: RedisProcess,
) -> None:
    from metricstream.protocol import EVENT_TYPES
    from metricstream.server import RedisAggregator

    async with (
        node(redis_server.url) as one,
        node(redis_server.url) as two,
        RedisAggregator(one.backend, interval=0.05, lease=0.3, system_stats=False) as first,
        RedisAggregator(two.backend, interval=0.05, lease=0.3, system_stats=False) as second,
        RedisPublisher(redis_server.url, types=EVENT_TYPES) as workers,
    ):
        await wait_until(lambda: first.leader or second.leader, 10, "a leader")
        assert not (first.leader and second.leader)
        leader, other = (first, second) if first.leader else (second, first)
        watcher = two if leader is first else one
        for i in range(10):
            workers.publish(request(f"a{i}", model="m1"))
        # A state message from a worker's own collector is left out.
        workers.publish(metrics(total=999))
        assert workers.ignored == 1

        def total() -> int:
            state = watcher.hub.snapshot().metrics
            return -1 if state is None else state.total_requests

        await wait_until(lambda: total() == 10, 10, "the first total")
        # The holder dies without handing the lease back (its process is gone).
        task = leader._task
        assert task is not None
        task.cancel()
        await wait_until(lambda: other.leader, 10, "the lease taken over")
        for i in range(5):
            workers.publish(request(f"b{i}", model="m2"))
        await wait_until(lambda: total() == 15, 10, "the total after the takeover")
        models = watcher.hub.snapshot().models
        assert (models["m1"].request_count, models["m2"].request_count) == (10, 5)


async def test_stop_right_after_a_message_ends_the_reader(redis_server: RedisProcess) -> None:
    # The reader sends its next XREAD as soon as it has handed a message
    # over: a stop() landing then must end it, every time (a cancellation
    # swallowed on the way would leave stop() waiting forever).
    from metricstream.server import RedisBackend

    for i in range(40):
        hub = MetricsHub(heartbeat_interval=None)
        backend = RedisBackend(redis_server.url, prefix=f"stop{i}")
        await backend.start(hub)
        ingested = asyncio.Event()
        backend.add_listener(lambda _message, event=ingested: event.set())
        hub.publish(request(f"r{i}"))
        async with asyncio.timeout(scaled(10)):
            await ingested.wait()
        async with asyncio.timeout(scaled(10)):
            await backend.stop()


async def test_a_silent_redis_is_reported_as_no_answer_within_the_timeout(
    redis_server: RedisProcess,
) -> None:
    # Calls are bounded by asyncio.timeout, whose error says nothing: the
    # log and /healthz say which bound ran out.
    hub = MetricsHub(heartbeat_interval=None)
    async with node(redis_server.url, hub=hub) as one:
        publisher = one.backend.publisher
        assert publisher is not None
        hub.publish(request("before"))
        await wait_until(lambda: hub.sequence == 1, 10, "the stream before the pause")
        redis_server.pause()
        try:
            hub.publish(request("during"))
            await wait_until(lambda: publisher.error is not None, 10, "the publisher noticing")
            assert publisher.error == "no answer from Redis within 2 s"
            await wait_until(
                lambda: hub.degraded == "redis unreachable: no answer from Redis within 1.2 s",
                10,
                "the reader noticing",
            )
        finally:
            redis_server.resume()
        await wait_until(lambda: hub.degraded is None, 10, "healthy again")
        await wait_until(lambda: hub.sequence == 2, 10, "the message sent again")
