"""The client against the real FakeAI server (its own dialect), as a subprocess."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from metricstream.client import Dialect, EventHandlers, WebSocketService
from metricstream.protocol import MessageType, WebSocketMessage

from ..conftest import FakeAI
from ..support import fakeai_chat, scaled, wait_until
from .conftest import fast_config

pytestmark = [pytest.mark.fakeai, pytest.mark.slow]


async def test_speaks_the_fakeai_dialect(fakeai: int) -> None:
    url = f"ws://127.0.0.1:{fakeai}/metrics/stream"
    config = fast_config(url, dialect="auto", heartbeat_interval=0.2, heartbeat_timeout=scaled(5))
    errors: list[WebSocketMessage[Any]] = []
    async with WebSocketService(config) as client:
        client.subscribe(MessageType.ERROR, lambda _, message: errors.append(message))
        stream = client.messages()
        await client.wait_connected()
        first = await anext(stream)
        await fakeai_chat(fakeai, 3)
        totals: list[int] = []
        async with asyncio.timeout(scaled(30)):
            async for message in stream:
                if message.type is not MessageType.METRICS_UPDATE:
                    continue
                totals.append(message.data.total_requests)
                if message.data.requests_per_second > 0 and message.data.total_requests > 0:
                    break
        # The seed client's heartbeat is answered with an error by FakeAI;
        # ours is a ping, answered with a pong that measures the latency.
        await wait_until(lambda: client.latency is not None, within=10)
        await client.set_filter(models=["openai/gpt-oss-120b"])
        await wait_until(lambda: client.connection_info().message_count > 6, within=10)
    assert first.type is MessageType.INIT
    assert first.data.metrics is not None
    assert message.metadata is not None
    assert "throughput" in message.metadata["fakeai"]
    assert message.data.tokens_per_second > 0
    # Derived from the rates FakeAI reports (it sends no totals), not a zero.
    assert totals[-1] > 0
    assert totals == sorted(totals)
    assert message.metadata["estimated"] == ["total_requests", "total_tokens"]
    assert client.connection_info().dialect == Dialect.FAKEAI
    assert client.connection_info().connections == 1
    assert client.connection_info().parse_errors == 0
    assert errors == []


async def test_reconnects_after_fakeai_is_killed_and_restarted(fakeai_server: FakeAI) -> None:
    url = f"ws://127.0.0.1:{fakeai_server.port}/metrics/stream"
    config = fast_config(url, dialect="fakeai", heartbeat_interval=0.5)
    events: list[str] = []
    handlers = EventHandlers(
        on_disconnect=lambda reason: events.append("disconnect"),
        on_reconnected=lambda: events.append("reconnected"),
    )
    async with WebSocketService(config, handlers) as client:
        await client.wait_connected()
        await fakeai_server.kill()
        await wait_until(lambda: not client.is_connected, within=scaled(10))
        await fakeai_server.start()
        await wait_until(lambda: client.connection_info().connections == 2, within=scaled(30))
        # And the stream flows again.
        updates = client.messages(types=["metrics_update"])
        async with asyncio.timeout(scaled(15)):
            assert (await anext(updates)).type is MessageType.METRICS_UPDATE
        assert client.connection_info().parse_errors == 0
    assert events[:2] == ["disconnect", "reconnected"]
