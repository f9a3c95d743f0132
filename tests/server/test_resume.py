"""Resuming over a real connection: exact replay, or a full snapshot, never partial."""

from __future__ import annotations

from metricstream.server import MemoryReplayLog, MetricsHub
from tests.server.conftest import metrics, open_client, recv, request, running
from tests.support import free_port


async def test_resume_after_a_dropped_connection_replays_exactly_the_missed() -> None:
    async with running() as server:
        hub = server.hub
        hub.publish(metrics())
        async with open_client(server.url()) as ws:
            init = await recv(ws)
            for i in range(5):
                hub.publish(request(f"before-{i}"))
            seen = [await recv(ws) for _ in range(5)]
        last = seen[-1]["sequence"]
        assert last == 6
        # Published while the client was away.
        for i in range(7):
            hub.publish(request(f"missed-{i}"))
        query = f"since={last}&epoch={init['metadata']['epoch']}"
        async with open_client(server.url(query)) as ws:
            resumed = await recv(ws)
            assert resumed["metadata"]["resumed"] is True
            assert resumed["sequence"] == 13
            replay = [await recv(ws) for _ in range(7)]
            hub.publish(request("live"))
            live = await recv(ws)
        assert [m["sequence"] for m in replay] == list(range(7, 14))
        assert [m["data"]["id"] for m in replay] == [f"missed-{i}" for i in range(7)]
        assert (live["sequence"], live["data"]["id"]) == (14, "live")
        assert hub.stats.replay_hits == 1


async def test_resume_with_another_epoch_gets_a_full_snapshot() -> None:
    async with running() as server:
        hub = server.hub
        for i in range(3):
            hub.publish(request(str(i)))
        async with open_client(server.url("since=1&epoch=from-another-life")) as ws:
            init = await recv(ws)
            hub.publish(request("next"))
            nxt = await recv(ws)
        assert init["metadata"]["resumed"] is False
        assert [r["id"] for r in init["data"]["recent_requests"]] == ["0", "1", "2"]
        assert init["sequence"] == 3
        assert nxt["sequence"] == 4
        assert hub.stats.replay_misses == 1


async def test_resume_beyond_the_log_gets_a_full_snapshot() -> None:
    hub = MetricsHub(heartbeat_interval=None, log=MemoryReplayLog(max_entries=4))
    async with running(hub) as server:
        for i in range(10):
            hub.publish(request(str(i)))
        async with open_client(server.url(f"since=2&epoch={hub.epoch}")) as ws:
            init = await recv(ws)
        assert init["metadata"]["resumed"] is False
        assert len(init["data"]["recent_requests"]) == 10
        async with open_client(server.url(f"since=99&epoch={hub.epoch}")) as ws:
            assert (await recv(ws))["metadata"]["resumed"] is False
        assert hub.stats.replay_misses == 2


async def test_a_new_hub_is_a_new_epoch() -> None:
    first, second = MetricsHub(), MetricsHub()
    assert first.epoch != second.epoch


async def test_after_a_restart_the_old_offset_gets_a_fresh_snapshot_of_the_new_epoch() -> None:
    port = free_port()
    async with running(port=port) as first:
        for i in range(5):
            first.hub.publish(request(f"old-{i}"))
        async with open_client(first.url()) as ws:
            old_epoch = (await recv(ws))["metadata"]["epoch"]
    # A new process: a new hub, a new log, the same address.
    async with running(port=port) as second:
        second.hub.publish(request("new-0"))
        async with open_client(second.url(f"since=5&epoch={old_epoch}")) as ws:
            init = await recv(ws)
            second.hub.publish(request("new-1"))
            live = await recv(ws)
    assert init["metadata"]["epoch"] == second.hub.epoch != old_epoch
    assert init["metadata"]["resumed"] is False
    assert init["sequence"] == 1
    assert [r["id"] for r in init["data"]["recent_requests"]] == ["new-0"]
    assert (live["sequence"], live["data"]["id"]) == (2, "new-1")
