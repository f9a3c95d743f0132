"""The seed client's own scenarios: lifecycle, queueing, backoff, heartbeat, statistics."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from metricstream.client import (
    ConnectionState,
    EventHandlers,
    Subscription,
    WebSocketService,
    create_websocket_service,
)
from metricstream.exceptions import ClientClosedError, ConfigError, ConnectionRejectedError
from metricstream.protocol import MessageType, WebSocketMessage, make_message

from ..support import free_port, scaled, wait_until
from .conftest import fast_config
from .peers import StreamServer, metrics, request

S = ConnectionState


def _state(client: WebSocketService) -> S:
    # A call, not the property: mypy would keep an earlier check's narrowing.
    return client.state


def _active(subscription: Subscription) -> bool:
    return subscription.active


def _refused_url() -> str:
    return f"ws://127.0.0.1:{free_port()}/metrics/stream"


async def _round_trip(server: StreamServer) -> None:
    """Let the event loop run a full connection of another client (a causal barrier)."""
    async with WebSocketService(fast_config(server.url)) as other:
        await other.wait_connected()


async def test_async_with_connects_when_auto_connect(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url)) as client:
        await wait_until(lambda: client.is_connected)
        assert client.is_connected
    assert len(server.handshakes) == 1
    assert client.state is S.CLOSED


async def test_auto_connect_off_waits_for_connect(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url, auto_connect=False)) as client:
        await _round_trip(server)
        assert client.state is S.DISCONNECTED
        assert len(server.handshakes) == 1  # the other client's only
        await client.connect()
        await client.wait_connected()
        assert len(server.handshakes) == 2


async def test_create_websocket_service_connects_per_auto_connect(server: StreamServer) -> None:
    eager = create_websocket_service(server.url)  # a URL string is a config
    lazy = create_websocket_service(fast_config(server.url, auto_connect=False), EventHandlers())
    try:
        await wait_until(lambda: eager.is_connected)
        await _round_trip(server)
        assert lazy.state is S.DISCONNECTED
        assert len(server.handshakes) == 2  # eager and the barrier
    finally:
        await eager.aclose()
        await lazy.aclose()


def test_create_websocket_service_outside_a_loop_does_not_connect() -> None:
    service = create_websocket_service(_refused_url())
    assert service.state is S.DISCONNECTED
    assert service.connection_info().connected_at is None


async def test_state_transitions_and_lifecycle_handlers(server: StreamServer) -> None:
    changes: list[tuple[S, S]] = []
    watched: list[tuple[S, S]] = []
    events: list[str] = []
    handlers = EventHandlers(
        on_state_change=lambda old, new: changes.append((old, new)),
        on_connect=lambda: events.append("connect"),
        on_reconnected=lambda: events.append("reconnected"),
        on_disconnect=lambda reason: events.append(f"disconnect: {reason}"),
        on_reconnecting=lambda attempt, delay: events.append(f"reconnecting {attempt}"),
    )
    client = WebSocketService(fast_config(server.url), handlers)
    client.watch_state(lambda old, new: watched.append((old, new)))
    assert client.state is S.DISCONNECTED
    await client.connect()
    await client.wait_connected()
    await server.close_all(1001, "going away")
    await wait_until(lambda: client.connection_info().connections == 2 and client.is_connected)
    await client.disconnect()
    await client.connect()
    await client.wait_connected()
    await client.aclose()
    assert changes == [
        (S.DISCONNECTED, S.CONNECTING),
        (S.CONNECTING, S.CONNECTED),
        (S.CONNECTED, S.RECONNECTING),
        (S.RECONNECTING, S.CONNECTED),
        (S.CONNECTED, S.DISCONNECTED),
        (S.DISCONNECTED, S.CONNECTING),
        (S.CONNECTING, S.CONNECTED),
        (S.CONNECTED, S.CLOSED),
    ]
    assert watched == changes
    assert events == [
        "connect",
        "disconnect: closed with code 1001 (going away)",
        "reconnecting 1",
        "connect",
        "reconnected",
        "disconnect: disconnected by the client",
        "connect",
        "reconnected",
        "disconnect: closed by the client",
    ]


async def test_manual_connect_never_raises_for_a_refused_connection() -> None:
    errors: list[BaseException] = []
    client = WebSocketService(fast_config(_refused_url()), on_error=errors.append)
    await client.connect()  # returns at once, the failure is reported
    await wait_until(lambda: len(errors) >= 2)
    assert all(isinstance(e, ConnectionError) for e in errors)
    assert "cannot connect" in str(errors[0])
    assert client.state is S.RECONNECTING
    info = client.connection_info()
    assert info.last_error is not None
    assert "cannot connect" in info.last_error
    assert info.reconnect_attempts >= 1
    await client.disconnect()
    assert _state(client) is S.DISCONNECTED
    await client.aclose()


async def test_no_duplicate_simultaneous_connections(server: StreamServer) -> None:
    client = WebSocketService(fast_config(server.url))
    try:
        await asyncio.gather(client.connect(), client.connect(), client.connect())
        await client.wait_connected()
        await client.connect()
        stream = client.messages()
        await server.publish(MessageType.REQUEST_UPDATE, request("one"))
        assert (await anext(stream)).data.id == "one"
        assert len(server.handshakes) == 1
        assert len(server.peers) == 1
        assert client.connection_info().connections == 1
    finally:
        await client.aclose()


async def test_disconnect_is_intentional_and_connect_starts_anew(server: StreamServer) -> None:
    reasons: list[str] = []
    client = WebSocketService(fast_config(server.url), on_disconnect=reasons.append)
    stream = client.messages(types=[MessageType.REQUEST_UPDATE])
    await client.connect()
    await client.wait_connected()
    await server.publish(MessageType.REQUEST_UPDATE, request("before"))
    assert (await anext(stream)).data.id == "before"
    await client.disconnect()
    assert client.state is S.DISCONNECTED
    assert reasons == ["disconnected by the client"]
    await wait_until(lambda: not server.peers)
    await _round_trip(server)
    # No reconnect after an intentional disconnect.
    assert client.state is S.DISCONNECTED
    assert len(server.handshakes) == 2  # the client's first, then the barrier's
    assert client.connection_info().reconnect_attempts == 0
    await client.disconnect()  # harmless twice
    await server.publish(MessageType.REQUEST_UPDATE, request("while away"))
    await client.connect()
    await client.wait_connected()
    # The iterator survived the disconnect, and the new connection resumed.
    assert (await anext(stream)).data.id == "while away"
    assert server.handshakes[-1].get("since") == "1"
    assert client.connection_info().resumed is True
    await client.aclose()
    # The project's error, and still a RuntimeError for older callers.
    with pytest.raises(ClientClosedError, match="cannot be connected again"):
        await client.connect()
    with pytest.raises(RuntimeError):
        client.connect_nowait()


async def test_send_when_connected(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url)) as client:
        await client.wait_connected()
        before = client.connection_info().bytes_sent
        assert await client.send(make_message("custom", {"n": 1})) is True
        await wait_until(lambda: any(m["type"] == "custom" for m in server.received))
        assert client.connection_info().bytes_sent > before
        assert client.connection_info().queued == 0


async def test_queue_when_disconnected_and_flush_after_reconnect(server: StreamServer) -> None:
    errors: list[BaseException] = []
    async with WebSocketService(fast_config(server.url), on_error=errors.append) as client:
        await client.wait_connected()
        server.reject_status = 503  # every reconnect fails until cleared
        await server.close_all(1011, "restarting")
        await wait_until(lambda: not client.is_connected)
        for n in range(3):
            assert await client.send(make_message("custom", {"n": n})) is False
        assert client.connection_info().queued == 3
        await wait_until(lambda: bool(errors))
        assert isinstance(errors[0], ConnectionRejectedError)
        server.reject_status = None
        await wait_until(lambda: client.is_connected)
        await wait_until(lambda: sum(m["type"] == "custom" for m in server.received) == 3)
        assert [m["data"]["n"] for m in server.received if m["type"] == "custom"] == [0, 1, 2]
        assert client.connection_info().queued == 0
        assert client.connection_info().dropped == 0


async def test_subscribe_and_unsubscribe(server: StreamServer) -> None:
    typed: list[str] = []
    everything: list[str] = []
    async with WebSocketService(fast_config(server.url)) as client:
        sub = client.subscribe(MessageType.REQUEST_UPDATE, lambda d, _: typed.append(d.id))
        star = client.subscribe("*", lambda _, m: everything.append(m.type))
        state = client.watch_state(lambda old, new: None)
        assert sub.type == "request_update"
        assert star.type == "*"
        assert state.type == "state"
        assert len({sub.id, star.id, state.id}) == 3
        assert sub.active
        stream = client.messages(types=[MessageType.REQUEST_UPDATE])
        await client.wait_connected()
        await server.publish(MessageType.REQUEST_UPDATE, request("one"))
        await anext(stream)
        assert client.unsubscribe(sub.id) is True
        assert client.unsubscribe(sub.id) is False
        assert not _active(sub)
        star.unsubscribe()
        star.unsubscribe()  # harmless twice
        assert client.unsubscribe(star) is False
        await server.publish(MessageType.REQUEST_UPDATE, request("two"))
        # Callbacks run before iterators are fed: once "two" is iterated,
        # any callback still subscribed would have seen it.
        assert (await anext(stream)).data.id == "two"
    assert typed == ["one"]
    assert everything == ["init", "request_update"]


async def test_exponential_backoff_and_stop_after_max_attempts() -> None:
    delays: list[tuple[int, float]] = []
    gave_up: list[bool] = []
    config = fast_config(
        _refused_url(),
        reconnect_interval=0.01,
        reconnect_decay=2.0,
        max_reconnect_interval=0.05,
        jitter=0.0,
        max_reconnect_attempts=5,
    )
    handlers = EventHandlers(
        on_reconnecting=lambda attempt, delay: delays.append((attempt, delay)),
        on_max_reconnect_attempts_reached=lambda: gave_up.append(True),
    )
    client = WebSocketService(config, handlers)
    with pytest.raises(ConnectionError, match="gave up after 5"):
        await client.run()
    assert [a for a, _ in delays] == [1, 2, 3, 4, 5]
    assert [d for _, d in delays] == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])
    assert gave_up == [True]
    assert client.state is S.ERROR
    assert client.connection_info().reconnect_attempts == 5
    # connect() after giving up starts anew, with a fresh backoff.
    await client.connect()
    await wait_until(lambda: len(delays) >= 6)
    assert delays[5][0] == 1
    assert delays[5][1] == pytest.approx(0.01)
    await client.aclose()


async def test_jittered_delays_stay_within_the_band() -> None:
    delays: list[float] = []
    config = fast_config(
        _refused_url(),
        reconnect_interval=0.01,
        reconnect_decay=1.0,
        max_reconnect_interval=0.01,
        jitter=0.5,
        max_reconnect_attempts=8,
    )
    client = WebSocketService(config, on_reconnecting=lambda _, delay: delays.append(delay))
    with pytest.raises(ConnectionError):
        await client.run()
    assert len(delays) == 8
    assert all(0.005 <= d <= 0.01 for d in delays)


async def test_periodic_heartbeat(server: StreamServer) -> None:
    config = fast_config(server.url, heartbeat_interval=0.05)
    async with WebSocketService(config) as client:
        await client.wait_connected()
        await wait_until(lambda: sum(m["type"] == "heartbeat" for m in server.received) >= 4)
    beats = [m["data"]["client_time"] for m in server.received if m["type"] == "heartbeat"]
    assert beats == sorted(beats)


async def test_heartbeat_timeout_closes_and_reconnects(server: StreamServer) -> None:
    server.answer_heartbeats = False
    reasons: list[str] = []
    config = fast_config(server.url, heartbeat_interval=0.1, heartbeat_timeout=scaled(0.3))
    async with WebSocketService(config, on_disconnect=reasons.append) as client:
        await client.wait_connected()
        await wait_until(lambda: len(server.handshakes) >= 2)
        await wait_until(lambda: client.is_connected)
    assert "no frame for" in reasons[0]
    assert "after a heartbeat" in reasons[0]
    assert client.latency is None


async def test_connection_statistics_and_message_counts(server: StreamServer) -> None:
    delivered: list[WebSocketMessage[Any]] = []
    pongs: list[WebSocketMessage[Any]] = []
    started = time.time()
    config = fast_config(server.url, heartbeat_interval=60.0)
    async with WebSocketService(config, on_message=delivered.append) as client:
        client.subscribe(MessageType.PONG, lambda _, m: pongs.append(m))
        info = client.connection_info()
        assert (info.message_count, info.bytes_received, info.connected_at) == (0, 0, None)
        await client.wait_connected()
        await server.publish(MessageType.METRICS_UPDATE, metrics(1))
        await server.publish(MessageType.REQUEST_UPDATE, request("a"))
        await server.publish(MessageType.REQUEST_UPDATE, request("b"))
        await wait_until(lambda: len(delivered) == 4 and len(pongs) == 1)
        info = client.connection_info()
        assert info.state is S.CONNECTED
        assert info.message_count == len(delivered) + len(pongs) == 5
        assert [m.type for m in delivered] == [
            "init",
            "metrics_update",
            "request_update",
            "request_update",
        ]
        assert info.bytes_received > 0
        assert info.bytes_sent > 0
        assert info.connected_at is not None
        assert started <= info.connected_at <= time.time()
        assert info.disconnected_at is None
        assert (info.epoch, info.last_sequence) == ("epoch-1", 3)
        assert (info.duplicates, info.out_of_order, info.gaps, info.parse_errors) == (0, 0, 0, 0)
        assert (info.queued, info.dropped, info.resumed) == (0, 0, False)
        assert info.latency is not None
        await server.close_all(1012)
        await wait_until(lambda: client.connection_info().disconnected_at is not None)
        await wait_until(lambda: client.connection_info().connections == 2)
        assert client.connection_info().resumed is True
        assert client.connection_info().resumes == 1


async def test_cleanup_on_close(server: StreamServer) -> None:
    finished: list[str] = []
    release = asyncio.Event()

    async def slow_disconnect(reason: str) -> None:
        await release.wait()
        finished.append(reason)

    client = WebSocketService(fast_config(server.url), on_disconnect=slow_disconnect)
    sub = client.subscribe("*", lambda _, __: None)
    watcher = client.watch_state(lambda old, new: None)
    stream = client.messages()
    await client.connect()
    await client.wait_connected()
    closing = asyncio.create_task(client.aclose())
    await wait_until(lambda: client.state is S.CLOSED)
    release.set()  # aclose waits for the handler still running
    await closing
    assert finished == ["closed by the client"]
    assert not sub.active
    assert not watcher.active
    assert client.unsubscribe(sub.id) is False
    assert [m.type async for m in stream] == ["init"]
    assert [m async for m in client.messages()] == []
    await wait_until(lambda: not server.peers)
    with pytest.raises(RuntimeError):
        await client.connect()
    await client.aclose()  # idempotent
    assert client.state is S.CLOSED


async def test_failing_handlers_never_stop_the_connection(
    server: StreamServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_connect() -> None:
        raise ValueError("sync handler broke")

    async def broken_message(message: WebSocketMessage[Any]) -> None:
        raise ValueError("async handler broke")

    def broken_state(old: S, new: S) -> None:
        raise ValueError("state handler broke")

    handlers = EventHandlers(
        on_connect=broken_connect, on_message=broken_message, on_state_change=broken_state
    )
    with caplog.at_level(logging.ERROR, logger="metricstream.client"):
        async with WebSocketService(fast_config(server.url), handlers) as client:
            stream = client.messages(types=["request_update"])
            await client.wait_connected()
            await server.publish(MessageType.REQUEST_UPDATE, request("still here"))
            assert (await anext(stream)).data.id == "still here"
            await wait_until(
                lambda: (
                    sum(
                        "async handler broke" in r.getMessage()
                        or (r.exc_info is not None and "async handler broke" in str(r.exc_info[1]))
                        for r in caplog.records
                    )
                    >= 2
                )
            )
            assert client.is_connected
    texts = [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert "sync handler broke" in texts
    assert "state handler broke" in texts
    assert "async handler broke" in texts


def test_handlers_are_validated() -> None:
    with pytest.raises(ConfigError):
        EventHandlers(on_connect="not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        WebSocketService(_refused_url(), on_conect=lambda: None)
    with pytest.raises(ConfigError):
        WebSocketService(_refused_url(), handlers=object())  # type: ignore[arg-type]


async def test_run_returns_when_disconnected_or_closed_while_dialling() -> None:
    errors: list[BaseException] = []
    client = WebSocketService(fast_config(_refused_url()), on_error=errors.append)
    runner = asyncio.create_task(client.run())
    await wait_until(lambda: bool(errors))
    await client.disconnect()
    async with asyncio.timeout(scaled(10)):
        await runner  # returns, no exception
    runner = asyncio.create_task(client.run())
    await wait_until(lambda: len(errors) >= 2)
    await client.aclose()
    async with asyncio.timeout(scaled(10)):
        await runner
    assert client.state is S.CLOSED


async def test_disconnect_from_a_callback_then_connect_again(server: StreamServer) -> None:
    # A long close timeout: a disconnect() that waited for its own task would sit it out.
    client = WebSocketService(fast_config(server.url, close_timeout=60.0))
    seen: list[str] = []

    async def disconnect_on_first(data: Any, message: WebSocketMessage[Any]) -> None:
        seen.append(data.id)
        if data.id == "one":
            await client.disconnect()

    client.subscribe(MessageType.REQUEST_UPDATE, disconnect_on_first)
    await client.connect()
    await client.wait_connected()
    await server.publish(MessageType.REQUEST_UPDATE, request("one"))
    async with asyncio.timeout(scaled(5)):
        await client.run()
    assert client.state is S.DISCONNECTED
    await wait_until(lambda: not server.peers)
    await server.publish(MessageType.REQUEST_UPDATE, request("two"))
    await client.connect()
    await wait_until(lambda: seen == ["one", "two"])  # resumed from "one"
    assert len(server.handshakes) == 2
    await client.aclose()


async def test_aclose_from_an_async_handler(server: StreamServer) -> None:
    client = WebSocketService(fast_config(server.url, close_timeout=60.0))
    done = asyncio.Event()

    async def close_on_connect() -> None:
        await client.aclose()  # must not wait for itself
        done.set()

    client.handlers.on_connect = close_on_connect
    await client.connect()
    async with asyncio.timeout(scaled(5)):
        await done.wait()
    assert client.state is S.CLOSED
    await wait_until(lambda: not server.peers)
