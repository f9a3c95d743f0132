"""Faults of the shared stream, against a real Redis: outages, a wiped Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from metricstream.protocol import CloseCode
from metricstream.server import MetricsHub, RedisPublisher
from tests.server.conftest import close_code, open_client, recv, recv_type, request
from tests.support import scaled, wait_until

from .conftest import RedisProcess, node


async def _health(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body


async def _status_is(port: int, status: str) -> bool:
    return bool((await _health(port))["status"] == status)


#: How long Redis stays away: the outage the behaviour is promised for
#: (docs/scale-out.md, "Faults"). Not scaled: its length is under test.
OUTAGE = 10.0


async def test_redis_unreachable_degrades_buffers_counts_and_never_loses_silently(
    redis_server: RedisProcess,
) -> None:
    hub = MetricsHub(heartbeat_interval=0.2)
    async with node(redis_server.url, hub=hub, max_pending=5) as one:
        for i in range(3):
            hub.publish(request(f"before{i}"))
        await wait_until(lambda: hub.sequence == 3, 10, "the stream before the outage")
        epoch = hub.epoch
        async with open_client(one.url(f"since=0&epoch={epoch}")) as ws:
            assert (await recv(ws))["metadata"]["resumed"] is True
            assert [(await recv(ws))["sequence"] for _ in range(3)] == [1, 2, 3]
            loop = asyncio.get_running_loop()
            redis_server.pause()
            back_at = loop.time() + OUTAGE
            try:
                assert one.backend.publisher is not None
                publisher = one.backend.publisher
                for i in range(8):
                    hub.publish(request(f"during{i}"))
                # Five buffered, three dropped and counted.
                assert publisher.pending == 5
                assert publisher.dropped == 3
                await wait_until(
                    lambda: _status_is(one.port, "degraded"), 10, "degraded", interval=0.1
                )
                # The client stays connected and heartbeats go on, each
                # within its deadline, for the whole outage.
                heartbeats = 0
                while loop.time() < back_at:
                    await recv_type(ws, "heartbeat", 5)
                    heartbeats += 1
                assert heartbeats >= 3
                # Still degraded at its end, and still saying why.
                health = await _health(one.port)
                assert health["status"] == "degraded"
                assert health["reason"].startswith("redis unreachable")
                # The buffer stays bounded however long it lasts; every
                # message past it is counted.
                for i in range(4):
                    hub.publish(request(f"late{i}"))
                assert publisher.pending == 5
                assert publisher.dropped == 3 + 4
            finally:
                redis_server.resume()
            # The buffered five go out after a hole for the drops: it closes
            # the connection (1012) rather than pass unnoticed.
            assert await close_code(ws) == CloseCode.SERVICE_RESTART
        await wait_until(lambda: hub.sequence >= 3 + 3 + 5, 15, "the stream after the outage")
        assert hub.epoch == epoch
        await wait_until(lambda: _status_is(one.port, "ok"), 10, "ok again", interval=0.05)
        # Drops counted while the batch was already on its way (retried
        # under one batch number) open their hole with the next batch: the
        # sequence accounts for every one of the seven.
        hub.publish(request("next"))
        after = 3 + 7 + 5 + 1
        await wait_until(lambda: hub.sequence == after, 15, "every drop accounted for")
        # Resuming across the hole is refused: a full snapshot instead.
        async with open_client(one.url(f"since=3&epoch={epoch}")) as ws:
            init = await recv(ws)
            assert init["metadata"]["resumed"] is False
            assert init["sequence"] == after
            ids = [r["id"] for r in init["data"]["recent_requests"]]
            before = [f"before{i}" for i in range(3)]
            assert ids == [*before, *(f"during{i}" for i in range(5)), "next"]
        # The stream goes on, contiguous, from there.
        async with open_client(one.url(f"since={after}&epoch={epoch}")) as ws:
            assert (await recv(ws))["metadata"]["resumed"] is True
            hub.publish(request("after"))
            message = await recv(ws)
            assert (message["sequence"], message["data"]["id"]) == (after + 1, "after")


async def test_redis_restarted_empty_starts_a_new_epoch_and_every_client_a_snapshot(
    redis_server: RedisProcess,
) -> None:
    async with node(redis_server.url) as one, node(redis_server.url) as two:
        for i in range(4):
            one.hub.publish(request(f"old{i}"))
        await wait_until(lambda: two.hub.sequence == 4, 10, "both nodes reading")
        old_epoch = one.hub.epoch
        async with open_client(one.url()) as a, open_client(two.url()) as b:
            await recv(a)
            await recv(b)
            redis_server.kill()
            redis_server.start()
            # Both nodes find a wiped Redis: new epoch, clients sent away.
            assert await close_code(a) == CloseCode.SERVICE_RESTART
            assert await close_code(b) == CloseCode.SERVICE_RESTART
        await wait_until(lambda: one.hub.epoch != old_epoch, 10, "node one reloading")
        await wait_until(lambda: two.hub.epoch == one.hub.epoch, 10, "node two reloading")
        assert one.hub.sequence == two.hub.sequence == 0
        for hub_node in (one, two):
            async with open_client(hub_node.url(f"since=4&epoch={old_epoch}")) as ws:
                init = await recv(ws)
                assert init["metadata"]["resumed"] is False
                assert init["metadata"]["epoch"] == one.hub.epoch
                assert init["sequence"] == 0
                assert init["data"]["recent_requests"] == []
        async with open_client(two.url()) as ws:
            await recv(ws)
            one.hub.publish(request("new"))
            message = await recv(ws)
            assert (message["sequence"], message["data"]["id"]) == (1, "new")


async def test_a_publisher_waits_out_a_restart_and_stays_exactly_once(
    redis_server: RedisProcess,
) -> None:
    async with RedisPublisher(redis_server.url, retry_interval=0.05, timeout=0.5) as publisher:
        publisher.publish(request("one"))
        async with asyncio.timeout(scaled(10)):
            await publisher.flush()
        redis_server.pause()
        try:
            publisher.publish(request("two"))
            await wait_until(lambda: publisher.error is not None, 10, "the publisher noticing")
        finally:
            redis_server.resume()
        async with asyncio.timeout(scaled(10)):
            await publisher.flush()
        assert publisher.error is None
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        # The batch sent before the stop and re-sent after it is applied once.
        entries: Any = client.xrange("metricstream:log")
        assert [int(fields[b"s"]) for _id, fields in entries] == [1, 2]
        seq: Any = client.get("metricstream:seq")
        assert int(seq) == 2
    finally:
        client.close()
