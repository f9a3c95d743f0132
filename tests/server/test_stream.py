"""The stream over a real uvicorn and real websockets clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from metricstream.protocol import decode_frame
from metricstream.server import MetricsHub, ServerSettings
from tests.server.conftest import (
    metrics,
    model_update,
    open_client,
    recv,
    recv_type,
    request,
    running,
)
from tests.support import scaled, wait_until


@pytest.mark.parametrize("direct", [True, False], ids=["direct-write", "asgi-task"])
async def test_init_first_then_contiguous_sequences_shared_by_all(direct: bool) -> None:
    hub = MetricsHub(heartbeat_interval=None)
    settings = ServerSettings(direct_write=direct)
    async with running(hub, settings) as server:
        hub.publish(metrics(total=7))
        hub.publish(model_update("m1"))
        async with open_client(server.url()) as a, open_client(server.url()) as b:
            inits = [await recv(a), await recv(b)]
            assert all((sub.direct is not None) == direct for sub in hub.subscribers)
            for init in inits:
                assert init["type"] == "init"
                assert init["sequence"] == 2
                assert init["metadata"]["resumed"] is False
                assert init["metadata"]["epoch"] == hub.epoch
                assert init["data"]["metrics"]["total_requests"] == 7
                assert list(init["data"]["models"]) == ["m1"]
            for i in range(50):
                hub.publish(request(str(i)))
            got_a = [await recv(a) for _ in range(50)]
            got_b = [await recv(b) for _ in range(50)]
        # Clients that keep up never find their writer behind or paused.
        assert hub.stats.send_suspensions == 0
        assert hub.stats.direct_write_fallbacks == 0
        assert [m["sequence"] for m in got_a] == list(range(3, 53))
        assert got_a == got_b
        assert [m["data"]["id"] for m in got_a] == [str(i) for i in range(50)]


@pytest.mark.parametrize("direct", [True, False], ids=["direct-write", "asgi"])
async def test_plain_client_gets_one_object_per_frame_and_batch_client_arrays(
    direct: bool,
) -> None:
    async with running(settings=ServerSettings(direct_write=direct)) as server:
        hub = server.hub
        async with open_client(server.url()) as plain, open_client(server.url("batch=1")) as batch:
            assert (await recv(plain))["type"] == "init"
            first = await recv(batch)
            assert isinstance(first, list)
            assert first[0]["type"] == "init"
            for i in range(10):
                hub.publish(request(str(i)))
            frame = await asyncio.wait_for(batch.recv(), scaled(5))
            assert isinstance(frame, str)
            messages = decode_frame(frame)
            assert [m.sequence for m in messages] == list(range(1, 11)), "one frame per flush"
            singles = [await recv(plain) for _ in range(10)]
            assert all(isinstance(m, dict) for m in singles)


async def test_heartbeat_and_ping_are_answered_with_pong() -> None:
    async with running() as server, open_client(server.url()) as ws:
        await recv(ws)
        await ws.send(
            json.dumps(
                {
                    "type": "heartbeat",
                    "timestamp": 1732780800000,
                    "data": {"client_time": 1732780800000},
                }
            )
        )
        pong = await recv(ws)
        assert pong["type"] == "pong"
        assert pong["data"]["client_time"] == 1732780800000
        assert pong["data"]["server_time"] >= 1732780800000
        assert "sequence" not in pong
        await ws.send('{"type":"ping"}')
        pong = await recv(ws)
        assert pong["type"] == "pong"
        assert "server_time" in pong["data"]


async def test_server_sends_heartbeats_on_its_interval() -> None:
    hub = MetricsHub(heartbeat_interval=0.05)
    async with running(hub) as server, open_client(server.url()) as ws:
        await recv(ws)
        beats = [await recv_type(ws, "heartbeat") for _ in range(2)]
        for beat in beats:
            assert set(beat["data"]) == {"server_time", "uptime_seconds"}
            assert "sequence" not in beat
        assert beats[1]["data"]["uptime_seconds"] > beats[0]["data"]["uptime_seconds"]


async def test_query_filters_select_types_and_models() -> None:
    async with running() as server:
        hub = server.hub
        url = server.url("types=request_update,model_update&models=a")
        async with open_client(url) as ws:
            init = await recv(ws)
            assert init["data"]["metrics"] is None
            hub.publish(metrics())
            hub.publish(request("for-b", model="b"))
            hub.publish(model_update("b"))
            hub.publish(request("for-a", model="a"))
            hub.publish(model_update("a"))
            got = [await recv(ws), await recv(ws)]
        assert [(m["type"], m["sequence"]) for m in got] == [
            ("request_update", 4),
            ("model_update", 5),
        ]


async def test_subscribe_replaces_the_filter_and_unsubscribe_clears_it() -> None:
    async with running() as server, open_client(server.url()) as ws:
        hub = server.hub
        await recv(ws)
        await ws.send(json.dumps({"type": "subscribe", "data": {"types": ["metrics_update"]}}))
        answer = await recv(ws)
        assert answer == {
            "type": "subscribed",
            "timestamp": answer["timestamp"],
            "data": {"types": ["metrics_update"]},
        }
        hub.publish(request("skipped"))
        hub.publish(metrics())
        assert (await recv(ws))["type"] == "metrics_update"
        await ws.send('{"type":"unsubscribe"}')
        answer = await recv(ws)
        assert answer["type"] == "subscribed"
        assert answer["data"] == {}
        hub.publish(request("seen"))
        assert (await recv(ws))["data"]["id"] == "seen"
        # An empty list is no filter, as an empty query parameter is.
        await ws.send(json.dumps({"type": "subscribe", "data": {"types": []}}))
        assert (await recv(ws))["data"] == {}
        hub.publish(request("still seen"))
        assert (await recv(ws))["data"]["id"] == "still seen"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_message"),
        ("[1, 2]", "invalid_message"),
        ('{"type": "heartbeat", "data": {"client_time": "soon"}}', "invalid_message"),
        ('{"type": "subscribe", "data": {"types": "metrics_update"}}', "invalid_message"),
        ('{"type": "no_such_type"}', "unknown_type"),
        ('{"type": "subscribe", "data": {"types": ["metric_update"]}}', "invalid_filter"),
        (
            '{"type": "metrics_update", "data": {"total_requests": 1}}',
            "invalid_message",
        ),
        ('{"type": "pong"}', "unsupported_type"),
    ],
)
async def test_bad_client_messages_get_an_error_and_the_connection_stays(
    frame: str, code: str
) -> None:
    async with running() as server, open_client(server.url()) as ws:
        await recv(ws)
        await ws.send(frame)
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["data"]["code"] == code
        assert "Traceback" not in error["data"]["message"]
        assert "sequence" not in error
        await ws.send('{"type":"ping"}')
        assert (await recv(ws))["type"] == "pong"


async def test_binary_frames_are_read_as_json_too() -> None:
    async with running() as server, open_client(server.url()) as ws:
        await recv(ws)
        await ws.send(b'{"type":"ping"}')
        assert (await recv(ws))["type"] == "pong"


async def test_invalid_since_is_reported_after_a_full_snapshot() -> None:
    async with running() as server, open_client(server.url("since=abc&epoch=x")) as ws:
        init = await recv(ws)
        assert init["metadata"]["resumed"] is False
        error: dict[str, Any] = await recv(ws)
        assert error["data"]["code"] == "invalid_query"


async def test_compressed_connections_fall_back_to_asgi_writes() -> None:
    # With permessage-deflate negotiated, frames must be compressed per
    # connection: the shared pre-framed bytes are not used.
    async with running(ws_per_message_deflate=True) as server:
        hub = server.hub
        async with open_client(server.url(), compression="deflate") as ws:
            assert (await recv(ws))["type"] == "init"
            (sub,) = hub.subscribers
            assert sub.direct is None
            for i in range(3):
                hub.publish(request(str(i)))
            assert [(await recv(ws))["sequence"] for _ in range(3)] == [1, 2, 3]


async def test_empty_filter_parameters_mean_no_filter() -> None:
    async with running() as server, open_client(server.url("types=&models=")) as ws:
        await recv(ws)
        server.hub.publish(metrics())
        server.hub.publish(request("r", model="any"))
        assert [(await recv(ws))["type"] for _ in range(2)] == ["metrics_update", "request_update"]


@pytest.mark.parametrize("direct", [True, False], ids=["direct-write", "asgi"])
async def test_clients_flushed_together_each_get_their_own_frames(direct: bool) -> None:
    # A flush builds the bytes once for every client holding the same
    # messages; a filtered client, and a plain one next to batch ones, must
    # still get exactly their own.
    async with running(settings=ServerSettings(direct_write=direct)) as server:
        hub = server.hub
        async with (
            open_client(server.url("batch=1")) as batch_a,
            open_client(server.url("batch=1")) as batch_b,
            open_client(server.url("batch=1&models=m2")) as batch_m2,
            open_client(server.url()) as plain_a,
            open_client(server.url()) as plain_b,
        ):
            for ws in (batch_a, batch_b, batch_m2, plain_a, plain_b):
                first = await recv(ws)
                assert (first[0] if isinstance(first, list) else first)["type"] == "init"
            await wait_until(lambda: hub.connection_count == 5, what="five subscribers")
            for i in range(10):
                hub.publish(request(str(i), model=f"m{1 + i % 2}"))
            ids = [str(i) for i in range(10)]
            for ws in (batch_a, batch_b):
                array = await recv(ws)
                assert [m["data"]["id"] for m in array] == ids
                assert [m["sequence"] for m in array] == list(range(1, 11))
            assert [m["data"]["id"] for m in await recv(batch_m2)] == ids[1::2]
            for ws in (plain_a, plain_b):
                assert [(await recv(ws))["data"]["id"] for _ in ids] == ids
            # One message alone: a one-element array, and the plain frame.
            hub.publish(request("last"))
            for ws in (batch_a, batch_b):
                assert [m["data"]["id"] for m in await recv(ws)] == ["last"]
            for ws in (plain_a, plain_b):
                assert (await recv(ws))["data"]["id"] == "last"


async def test_a_query_filter_naming_no_stream_type_is_refused_not_installed() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    async with running(hub) as server:
        hub.publish(metrics(total=3))
        url = server.url("types=metric_update,model_update")
        async with open_client(url) as ws:
            init = await recv(ws)
            assert init["type"] == "init"
            # Unfiltered snapshot: the bad filter was not installed.
            assert init["data"]["metrics"]["total_requests"] == 3
            error = await recv(ws)
            assert error["type"] == "error"
            assert error["data"]["code"] == "invalid_filter"
            assert "metric_update" in error["data"]["message"]
            hub.publish(request("r1"))
            assert (await recv(ws))["data"]["id"] == "r1"
