"""SyncWebSocketService: the asyncio client behind a blocking facade, on its own thread."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from metricstream.client import ConnectionState
from metricstream.exceptions import ClientClosedError
from metricstream.protocol import MessageType, WebSocketMessage, make_message
from metricstream.sync import EventHandlers, SyncWebSocketService

from ..support import free_port, scaled
from .conftest import fast_config
from .peers import StreamServer, request


def test_blocking_use(server_thread: tuple[StreamServer, asyncio.AbstractEventLoop]) -> None:
    server, loop = server_thread

    def publish(request_id: str) -> None:
        coroutine = server.publish(MessageType.REQUEST_UPDATE, request(request_id))
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(scaled(10))

    seen: list[Any] = []
    with SyncWebSocketService(fast_config(server.url)) as client:
        client.subscribe(MessageType.REQUEST_UPDATE, lambda data, _: seen.append(data.id))
        messages = client.messages(timeout=scaled(10))
        client.wait_connected(timeout=scaled(10))
        assert client.connection_info().state is ConnectionState.CONNECTED
        publish("a")
        publish("b")
        # The client connects on construction: the init may come before
        # messages() was called, so only the published ones are counted.
        got: list[WebSocketMessage[Any]] = []
        while len(got) < 2:
            message = next(messages)
            if message.is_stream:
                got.append(message)
        assert client.send(make_message("custom", {"n": 1}))
        ack = client.set_filter(types=["request_update"])
        assert ack is not None
        assert ack.types == ["request_update"]
        info = client.connection_info()
        messages.close()
    assert [m.data.id for m in got] == ["a", "b"]
    assert seen == ["a", "b"]
    assert info.last_sequence == 2
    assert client.state is ConnectionState.CLOSED
    client.close()  # harmless twice


def test_timeouts_raise_and_iteration_ends_on_close() -> None:
    client = SyncWebSocketService(fast_config(f"ws://127.0.0.1:{free_port()}/metrics/stream"))
    try:
        with pytest.raises(TimeoutError):
            client.wait_connected(timeout=0.05)
        with pytest.raises(TimeoutError):
            next(client.messages(timeout=0.05))
        messages = client.messages()
    finally:
        client.close()
    assert list(messages) == []


def test_the_sync_module_has_the_async_api_minus_await(
    server_thread: tuple[StreamServer, asyncio.AbstractEventLoop],
) -> None:
    server, loop = server_thread

    def publish(request_id: str) -> None:
        coroutine = server.publish(MessageType.REQUEST_UPDATE, request(request_id))
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(scaled(10))

    changes: list[tuple[ConnectionState, ConnectionState]] = []
    handlers = EventHandlers(on_state_change=lambda old, new: changes.append((old, new)))
    config = fast_config(server.url, auto_connect=False)
    with SyncWebSocketService(config, handlers) as client:
        assert client.connection_info().state is ConnectionState.DISCONNECTED
        assert not client.is_connected
        seen: list[str] = []
        sub = client.subscribe("request_update", lambda data, _: seen.append(data.id))
        messages = client.messages(types=["request_update"], timeout=scaled(10))
        client.connect()
        client.connect()  # idempotent
        client.wait_connected(timeout=scaled(10))
        assert client.connection_info().state is ConnectionState.CONNECTED
        publish("a")
        assert next(messages).data.id == "a"
        assert client.unsubscribe(sub.id) is True
        assert client.unsubscribe(sub.id) is False
        client.disconnect()
        assert client.connection_info().state is ConnectionState.DISCONNECTED
        assert client.send(make_message("custom", {"queued": True})) is False
        assert client.connection_info().queued == 1
        publish("b")
        client.connect()
        client.wait_connected(timeout=scaled(10))
        assert next(messages).data.id == "b"
        assert client.connection_info().queued == 0
    assert seen == ["a"]
    assert client.state is ConnectionState.CLOSED
    assert changes[-1] == (ConnectionState.CONNECTED, ConnectionState.CLOSED)
    assert list(messages) == []
    with pytest.raises(ClientClosedError):
        client.connect()
