"""What a client sends, on real connections: a request's answer, a lost connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from metricstream.client._config import OverflowPolicy
from metricstream.client._outbox import Outbox
from metricstream.protocol import FilterRequest, SubscribePayload

from ..support import scaled, wait_until


@pytest.fixture
async def connection() -> AsyncIterator[tuple[ClientConnection, list[bytes]]]:
    """A client connection to a loopback server that records what it receives."""
    received: list[bytes] = []

    async def record(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                received.append(await ws.recv(decode=False))

    async with serve(record, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            yield ws, received


async def test_an_answered_request_returns_the_answer(
    connection: tuple[ClientConnection, list[bytes]],
) -> None:
    ws, received = connection
    outbox = Outbox(10, OverflowPolicy.DROP_OLDEST)
    answer = SubscribePayload(types=["model_update"], models=None)
    request = FilterRequest((b'{"type":"subscribe"}',), answered=True)
    pending = asyncio.create_task(outbox.request(ws, request, scaled(5)))
    await wait_until(lambda: received, what="the request on the server")
    outbox.answered(answer)
    assert await pending == answer
    assert outbox.bytes_sent == len(request.frames[0])


async def test_an_unanswered_request_is_sent_and_gives_none(
    connection: tuple[ClientConnection, list[bytes]],
) -> None:
    ws, received = connection
    outbox = Outbox(10, OverflowPolicy.DROP_OLDEST)
    frames = (b'{"type":"unsubscribe"}', b'{"type":"subscribe"}')
    assert await outbox.request(ws, FilterRequest(frames, answered=False), scaled(5)) is None
    assert outbox.bytes_sent == sum(map(len, frames))
    await wait_until(lambda: len(received) == 2, what="both frames on the server")
    assert received == list(frames)


async def test_a_lost_connection_gives_none_not_an_error(
    connection: tuple[ClientConnection, list[bytes]],
) -> None:
    ws, _ = connection
    await ws.close()
    outbox = Outbox(10, OverflowPolicy.DROP_OLDEST)
    for answered in (True, False):
        request = FilterRequest((b'{"type":"unsubscribe"}',), answered=answered)
        assert await outbox.request(ws, request, scaled(5)) is None
    assert outbox.bytes_sent == 0


async def test_a_connection_that_ends_releases_a_waiting_request(
    connection: tuple[ClientConnection, list[bytes]],
) -> None:
    ws, received = connection
    outbox = Outbox(10, OverflowPolicy.DROP_OLDEST)
    request = FilterRequest((b'{"type":"subscribe"}',), answered=True)
    pending = asyncio.create_task(outbox.request(ws, request, scaled(60)))
    await wait_until(lambda: received, what="the request on the server")
    outbox.release()
    assert await pending is None
