"""MessageStream: bounded, ordered, back-pressured, closable."""

from __future__ import annotations

import asyncio

from metricstream.client import MessageStream
from metricstream.protocol import make_message


async def test_order_and_back_pressure() -> None:
    stream = MessageStream(2)
    assert stream.offer(make_message("custom", 1))
    assert stream.offer(make_message("custom", 2))
    assert not stream.offer(make_message("custom", 3))
    blocked = asyncio.create_task(stream.put(make_message("custom", 3)))
    await asyncio.sleep(0)
    assert not blocked.done()
    assert (await anext(stream)).data == 1
    await blocked
    assert [(await anext(stream)).data for _ in range(2)] == [2, 3]
    assert len(stream) == 0


async def test_close_drains_then_stops_and_releases_a_waiting_put() -> None:
    stream = MessageStream(1)
    stream.offer(make_message("custom", 1))
    blocked = asyncio.create_task(stream.put(make_message("custom", 2)))
    await asyncio.sleep(0)
    stream.close()
    await blocked  # a closed stream discards instead of blocking the reader
    assert stream.closed
    assert [m.data async for m in stream] == [1]


async def test_context_manager_closes_and_discards() -> None:
    async with MessageStream(4) as stream:
        stream.offer(make_message("custom", 1))
    assert stream.closed
    assert [m async for m in stream] == []
