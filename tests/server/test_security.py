"""Tokens, origins, inbound size and rate limits, connection limits."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from metricstream.server import MetricsHub, ServerSettings
from tests.server.conftest import close_code, open_client, recv, recv_type, running
from tests.support import scaled, wait_until


async def closed_with(ws: ClientConnection, code: int) -> None:
    """Assert that the server closes ``ws`` with ``code``."""
    assert await close_code(ws) == code


async def still_serving(url: str, **kwargs: object) -> None:
    async with open_client(url, **kwargs) as ws:
        assert (await recv(ws))["type"] == "init"


async def test_token_is_required_by_header_or_query() -> None:
    settings = ServerSettings(token="s3cret")
    async with running(settings=settings) as server:
        for url, headers in [
            (server.url(), None),
            (server.url("token=wrong"), None),
            (server.url(), {"Authorization": "Bearer wrong"}),
            (server.url(), {"Authorization": "Basic s3cret"}),
        ]:
            async with open_client(url, additional_headers=headers) as ws:
                await closed_with(ws, 4001)
        await still_serving(server.url("token=s3cret"))
        await still_serving(server.url(), additional_headers={"Authorization": "Bearer s3cret"})
        assert server.hub.stats.rejections["token"] == 4


async def test_foreign_origin_is_refused_at_the_handshake() -> None:
    settings = ServerSettings(allowed_origins=("https://dash.example",))
    async with running(settings=settings) as server:
        with pytest.raises(InvalidStatus) as info:
            async with open_client(server.url(), origin="https://evil.example"):
                pass
        assert info.value.response.status_code == 403
        await still_serving(server.url(), origin="https://dash.example")
        await still_serving(server.url())  # no Origin: not a browser
        assert server.hub.stats.rejections == {"origin": 1}


async def test_oversized_frame_is_refused_by_uvicorn_with_1009() -> None:
    settings = ServerSettings(max_message_size=1024)
    async with running(settings=settings) as server:
        async with open_client(server.url()) as ws:
            await recv(ws)
            await ws.send("x" * 5000)
            await closed_with(ws, 1009)
        await still_serving(server.url())


async def test_oversized_message_is_refused_by_the_endpoint_with_1009() -> None:
    # uvicorn left at its own (larger) frame limit: the endpoint's check acts.
    settings = ServerSettings(max_message_size=1024)
    async with running(settings=settings, max_message_size=1 << 20) as server:
        async with open_client(server.url()) as ws:
            await recv(ws)
            await ws.send(json.dumps({"type": "ping", "pad": "é" * 600}))
            await closed_with(ws, 1009)
        assert server.hub.stats.rejections["message_too_big"] == 1
        await still_serving(server.url())


async def test_an_inbound_flood_is_answered_then_closed_with_4029() -> None:
    settings = ServerSettings(inbound_rate=5.0, inbound_burst=10)
    async with running(settings=settings) as server:
        async with open_client(server.url()) as ws:
            await recv(ws)
            # The server may close before all of these are sent.
            with contextlib.suppress(ConnectionClosed):
                for _ in range(200):
                    await ws.send('{"type":"ping"}')
            error = await recv_type(ws, "error")
            assert error["data"]["code"] == "rate_limited"
            await closed_with(ws, 4029)
        assert server.hub.stats.rejections["inbound_rate"] == 1
        await still_serving(server.url())


async def test_a_short_excess_is_only_answered_with_an_error() -> None:
    settings = ServerSettings(inbound_rate=50.0, inbound_burst=5)
    async with running(settings=settings) as server, open_client(server.url()) as ws:
        await recv(ws)
        for _ in range(7):
            await ws.send('{"type":"ping"}')
        await recv_type(ws, "error")
        # The bucket refills: a ping is answered again on the same connection.
        # (A dropped ping gets no answer, so each attempt waits briefly.)

        async def answered() -> bool:
            await ws.send('{"type":"ping"}')
            try:
                message = await asyncio.wait_for(ws.recv(), scaled(0.2))
            except TimeoutError:
                return False
            return bool(json.loads(message)["type"] == "pong")

        # Each attempt already waits for its answer: no pause between them.
        assert await wait_until(answered, 5, "a pong after the refill", interval=0)
        assert ws.close_code is None


async def test_connections_beyond_the_maximum_are_closed_with_4029() -> None:
    settings = ServerSettings(max_connections=2)
    async with running(settings=settings) as server:
        async with open_client(server.url()) as a, open_client(server.url()) as b:
            await recv(a)
            await recv(b)
            async with open_client(server.url()) as c:
                await closed_with(c, 4029)
        await still_serving(server.url())
        assert server.hub.stats.rejections["capacity"] == 1


async def test_new_connections_during_shutdown_are_told_to_go_away() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    async with running(hub) as server:
        await hub.close_all(grace=0.1)
        async with open_client(server.url()) as ws:
            await closed_with(ws, 1001)
