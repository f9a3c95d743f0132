"""The asyncio client against a real native-protocol server on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from metricstream.client import ConnectionState, WebSocketService
from metricstream.exceptions import (
    ConnectionRejectedError,
    QueueFullError,
    StreamConnectionError,
)
from metricstream.protocol import MessageType, WebSocketMessage, encode, make_message

from ..support import free_port, scaled, wait_until
from .conftest import fast_config
from .peers import StreamServer, TcpProxy, metrics, model, request


def _sequences(messages: list[WebSocketMessage[Any]]) -> list[int]:
    return [m.sequence for m in messages if m.sequence is not None and m.is_stream]


async def test_receives_init_then_stream_in_order(server: StreamServer) -> None:
    await server.publish(MessageType.METRICS_UPDATE, metrics(7))
    async with WebSocketService(fast_config(server.url)) as client:
        stream = client.messages()
        await client.wait_connected()
        for i in range(3):
            await server.publish(MessageType.REQUEST_UPDATE, request(f"r{i}"))
        got = [await anext(stream) for _ in range(4)]
    assert got[0].type is MessageType.INIT
    assert got[0].data.metrics == metrics(7)
    assert [m.data.id for m in got[1:]] == ["r0", "r1", "r2"]
    assert _sequences(got) == [2, 3, 4]
    info = client.connection_info()
    assert info.state is ConnectionState.CLOSED
    assert info.epoch == "epoch-1"
    assert info.last_sequence == 4
    assert info.dialect == "native"
    assert info.connections == 1
    assert info.bytes_received > 0


async def test_heartbeat_is_answered_and_latency_measured(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url)) as client:
        await client.wait_connected()
        await wait_until(lambda: client.latency is not None)
    heartbeats = [m for m in server.received if m["type"] == "heartbeat"]
    assert heartbeats
    assert isinstance(heartbeats[0]["data"]["client_time"], int)
    assert client.latency is not None
    assert client.latency >= 0
    assert client.connection_info().bytes_sent > 0


async def test_callbacks_run_in_order_and_a_failing_one_is_isolated(server: StreamServer) -> None:
    seen: list[str] = []
    async_seen: list[str] = []

    def broken(data: Any, message: WebSocketMessage[Any]) -> None:
        raise RuntimeError("callback bug")

    async def slow(data: Any, message: WebSocketMessage[Any]) -> None:
        await asyncio.sleep(0)
        async_seen.append(data.id)

    async with WebSocketService(fast_config(server.url)) as client:
        client.subscribe(MessageType.REQUEST_UPDATE, broken)
        sub = client.subscribe(MessageType.REQUEST_UPDATE, lambda data, _: seen.append(data.id))
        client.subscribe(MessageType.REQUEST_UPDATE, slow)
        await client.wait_connected()
        await server.publish(MessageType.REQUEST_UPDATE, request("a"))
        await server.publish(MessageType.REQUEST_UPDATE, request("b"))
        await wait_until(lambda: async_seen == ["a", "b"])
        sub.unsubscribe()
        sub.unsubscribe()  # harmless twice
        await server.publish(MessageType.REQUEST_UPDATE, request("c"))
        await wait_until(lambda: async_seen == ["a", "b", "c"])
        assert client.is_connected
    assert seen == ["a", "b"]


async def test_resumes_after_going_away_without_loss_or_duplicates(server: StreamServer) -> None:
    events: list[str] = []
    config = fast_config(server.url)
    client = WebSocketService(
        config,
        on_connect=lambda: events.append("connect"),
        on_disconnect=lambda reason: events.append(f"disconnect:{reason}"),
        on_reconnected=lambda: events.append("reconnected"),
    )
    async with client:
        stream = client.messages()
        await client.wait_connected()
        await server.publish(MessageType.REQUEST_UPDATE, request("before"))
        await wait_until(lambda: client.connection_info().last_sequence == 1)
        await server.close_all(1001, "deploy")
        # Published while the client is away: the replay must deliver them.
        server.record(MessageType.REQUEST_UPDATE, request("away-1"))
        server.record(MessageType.REQUEST_UPDATE, request("away-2"))
        await wait_until(lambda: client.connection_info().connections == 2)
        await server.publish(MessageType.REQUEST_UPDATE, request("after"))
        got = [await anext(stream) for _ in range(6)]
    ids = [m.data.id for m in got if m.type is MessageType.REQUEST_UPDATE]
    assert ids == ["before", "away-1", "away-2", "after"]
    assert [(m.metadata or {}).get("resumed") for m in got if m.type is MessageType.INIT] == [
        False,
        True,
    ]
    assert server.handshakes[1]["since"] == "1"
    assert server.handshakes[1]["epoch"] == "epoch-1"
    assert client.connection_info().resumes == 1
    assert client.connection_info().duplicates == 0
    assert events[:2] == ["connect", "disconnect:closed with code 1001 (deploy)"]
    assert events[2:4] == ["connect", "reconnected"]


async def test_new_epoch_gives_a_full_snapshot(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url)) as client:
        stream = client.messages()
        await client.wait_connected()
        await server.publish(MessageType.METRICS_UPDATE, metrics(1))
        await wait_until(lambda: client.connection_info().last_sequence == 1)
        server.new_epoch()
        server.record(MessageType.METRICS_UPDATE, metrics(99))
        await server.close_all(1001)
        inits = []
        async for message in stream:
            if message.type is MessageType.INIT:
                inits.append(message)
                if len(inits) == 2:
                    break
    assert inits[1].metadata == {"epoch": "epoch-2", "resumed": False}
    assert inits[1].data.metrics == metrics(99)
    assert client.connection_info().epoch == "epoch-2"
    assert client.connection_info().last_sequence == 1
    assert client.connection_info().resumes == 0


async def test_slow_consumer_close_reconnects_at_once(server: StreamServer) -> None:
    delays: list[float] = []
    config = fast_config(server.url, reconnect_interval=5.0, max_reconnect_interval=5.0)
    async with WebSocketService(config, on_reconnecting=lambda _, d: delays.append(d)) as client:
        await client.wait_connected()
        await server.close_all(4008, "slow consumer")
        await wait_until(lambda: client.connection_info().connections == 2)
    assert delays == [0.0]


async def test_server_1000_is_retried_with_backoff(server: StreamServer) -> None:
    delays: list[float] = []
    async with WebSocketService(
        fast_config(server.url), on_reconnecting=lambda _, d: delays.append(d)
    ) as client:
        await client.wait_connected()
        await server.close_all(1000)
        await wait_until(lambda: client.connection_info().connections == 2)
    assert len(delays) == 1
    assert 0 < delays[0] <= 0.02


@pytest.mark.parametrize("code", [4001, 1008])
async def test_rejection_close_is_fatal(server: StreamServer, code: int) -> None:
    errors: list[BaseException] = []
    client = WebSocketService(fast_config(server.url), on_error=errors.append)
    async with client:
        await client.wait_connected()
        await server.close_all(code, "go away")
        with pytest.raises(ConnectionRejectedError) as caught:
            await client.run()
    assert caught.value.code == code
    assert client.state is ConnectionState.CLOSED
    assert errors == [caught.value]
    assert len(server.handshakes) == 1


async def test_missing_token_is_fatal_and_token_is_sent() -> None:
    async with StreamServer(token="s3cret") as srv:
        bad = WebSocketService(fast_config(srv.url))
        with pytest.raises(ConnectionRejectedError) as caught:
            await bad.run()
        assert caught.value.code == 4001
        assert bad.state is ConnectionState.ERROR
        header = WebSocketService(fast_config(srv.url, token="s3cret"))
        query = WebSocketService(fast_config(srv.url, token="s3cret", token_in_query=True))
        async with header, query:
            await header.wait_connected()
            await query.wait_connected()
    assert [h.get("token") for h in srv.handshakes] == [None, None, "s3cret"]


@pytest.mark.parametrize(("status", "fatal"), [(401, True), (403, True), (503, False)])
async def test_rejected_handshake(server: StreamServer, status: int, fatal: bool) -> None:
    server.reject_status = status
    config = fast_config(server.url, max_reconnect_attempts=2)
    client = WebSocketService(config)
    with pytest.raises(ConnectionRejectedError if fatal else ConnectionError) as caught:
        await client.run()
    assert client.state is ConnectionState.ERROR
    assert f"HTTP {status}" in str(caught.value)


async def test_gives_up_after_max_attempts() -> None:
    calls: list[str] = []
    config = fast_config(f"ws://127.0.0.1:{free_port()}/metrics/stream", max_reconnect_attempts=3)
    client = WebSocketService(
        config,
        on_reconnecting=lambda attempt, _: calls.append(f"retry {attempt}"),
        on_max_reconnect_attempts_reached=lambda: calls.append("gave up"),
    )
    with pytest.raises(StreamConnectionError, match="gave up after 3 reconnect attempts"):
        await client.run()
    assert calls == ["retry 1", "retry 2", "retry 3", "gave up"]
    assert client.state is ConnectionState.ERROR
    with pytest.raises(ConnectionError):
        await client.wait_connected()


async def test_duplicates_and_stale_messages_are_dropped(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url)) as client:
        stream = client.messages()
        await client.wait_connected()
        first = await server.publish(MessageType.REQUEST_UPDATE, request("one"))
        await server.publish(MessageType.REQUEST_UPDATE, request("two"))
        await server.send_raw(encode(first))  # a duplicate
        await server.publish(MessageType.REQUEST_UPDATE, request("three"))
        got = [await anext(stream) for _ in range(4)]
    assert [m.data.id for m in got[1:]] == ["one", "two", "three"]
    assert client.connection_info().duplicates == 1


async def test_gap_on_unfiltered_stream_triggers_resume(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url)) as client:
        stream = client.messages()
        await client.wait_connected()
        await server.publish(MessageType.REQUEST_UPDATE, request("one"))
        server.record(MessageType.REQUEST_UPDATE, request("lost"))  # never sent live
        await server.publish(MessageType.REQUEST_UPDATE, request("three"))
        got: list[WebSocketMessage[Any]] = []
        while len([m for m in got if m.type is MessageType.REQUEST_UPDATE]) < 3:
            got.append(await anext(stream))
    ids = [m.data.id for m in got if m.type is MessageType.REQUEST_UPDATE]
    assert ids == ["one", "lost", "three"]
    assert server.handshakes[1]["since"] == "1"
    assert client.connection_info().gaps == 0


async def test_a_gap_the_server_cannot_fill_is_accepted_after_one_resync(
    server: StreamServer,
) -> None:
    async with WebSocketService(fast_config(server.url)) as client:
        stream = client.messages()
        await client.wait_connected()
        await server.publish(MessageType.REQUEST_UPDATE, request("one"))
        server.skip()
        await server.publish(MessageType.REQUEST_UPDATE, request("three"))
        await server.publish(MessageType.REQUEST_UPDATE, request("four"))
        ids: list[str] = []
        async for message in stream:
            if message.type is MessageType.REQUEST_UPDATE:
                ids.append(message.data.id)
                if len(ids) == 3:
                    break
    assert ids == ["one", "three", "four"]
    assert len(server.handshakes) == 2
    assert client.connection_info().gaps == 1
    assert client.connection_info().missed == 1


async def test_a_resume_the_client_never_asked_for_is_replaced_by_a_snapshot(
    server: StreamServer,
) -> None:
    server.claim_resume = True
    await server.publish(MessageType.METRICS_UPDATE, metrics(5))
    async with WebSocketService(fast_config(server.url)) as client:
        stream = client.messages()
        init = await anext(stream)
    # The bogus resume was not passed on: the first init seen is the snapshot.
    assert init.metadata == {"epoch": "epoch-1", "resumed": False}
    assert init.data.metrics == metrics(5)
    assert len(server.handshakes) == 2
    assert "since" not in server.handshakes[1]
    assert client.connection_info().resumes == 0


async def test_invalid_and_unknown_frames_are_skipped(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url)) as client:
        stream = client.messages()
        await client.wait_connected()
        await server.send_raw("not json at all")
        await server.send_raw('{"type":"metrics_update","timestamp":1,"sequence":1,"data":{}}')
        await server.send_raw('{"type":"from_the_future","timestamp":1,"data":{"x":1}}')
        await server.send_raw("[1, 2")
        await server.publish(MessageType.REQUEST_UPDATE, request("fine"))
        got = [await anext(stream) for _ in range(2)]
        assert client.is_connected
    assert got[1].data.id == "fine"
    assert client.connection_info().parse_errors == 3
    assert client.connection_info().unknown_messages == 1
    assert client.connection_info().connections == 1


async def test_batch_frames_and_a_bad_member_loses_only_itself(server: StreamServer) -> None:
    config = fast_config(server.url, batch=True)
    async with WebSocketService(config) as client:
        stream = client.messages()
        await client.wait_connected()
        one = server.record(MessageType.REQUEST_UPDATE, request("one"))
        two = server.record(MessageType.REQUEST_UPDATE, request("two"))
        await server.send_batch([one, two])
        bad = b'{"type":"request_update","timestamp":1,"sequence":3,"data":{"id":5}}'
        three = server.record(MessageType.REQUEST_UPDATE, request("three"))
        await server.send_raw(b"[" + bad + b"," + encode(three) + b"]")
        got = [await anext(stream) for _ in range(4)]
    assert server.handshakes[0]["batch"] == "1"
    assert [m.data.id for m in got[1:]] == ["one", "two", "three"]
    assert client.connection_info().parse_errors == 1


async def test_subscribe_filters_and_survives_reconnect(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url)) as client:
        stream = client.messages()
        await client.wait_connected()
        ack = await client.set_filter(types=["model_update"], models=["a"])
        assert ack is not None
        assert ack.types == ["model_update"]
        await server.publish(MessageType.MODEL_UPDATE, model("b"))
        await server.publish(MessageType.REQUEST_UPDATE, request("x", "a"))
        await server.publish(MessageType.MODEL_UPDATE, model("a"))
        got = [await anext(stream) for _ in range(3)]
        await server.close_all(1001)
        await wait_until(lambda: client.connection_info().connections == 2)
        assert client.filter.models == ["a"]
        cleared = await client.clear_filter()
        assert cleared is not None
        assert cleared.types is None
    assert [m.type for m in got] == [
        MessageType.INIT,
        MessageType.SUBSCRIBED,
        MessageType.MODEL_UPDATE,
    ]
    assert got[2].data.model == "a"
    assert server.handshakes[1]["types"] == "model_update"
    assert server.handshakes[1]["models"] == "a"
    assert any(m["type"] == "unsubscribe" for m in server.received)


async def test_offline_queue_is_flushed_after_connecting(server: StreamServer) -> None:
    client = WebSocketService(fast_config(server.url, max_queue_size=2))
    for i in range(3):
        sent = await client.send(make_message("custom", {"n": i}))
        assert sent is False
    assert client.connection_info().dropped == 1
    async with client:
        await client.wait_connected()
        await wait_until(lambda: any(m.get("type") == "custom" for m in server.received))
        assert await client.send(make_message("custom", {"n": 3}))
        await wait_until(lambda: len([m for m in server.received if m["type"] == "custom"]) == 3)
    assert [m["data"]["n"] for m in server.received if m["type"] == "custom"] == [1, 2, 3]


async def test_offline_queue_raise_policy() -> None:
    config = fast_config(
        "ws://127.0.0.1:9/metrics/stream", max_queue_size=1, queue_overflow="raise"
    )
    client = WebSocketService(config)
    await client.send(make_message("custom", {}))
    with pytest.raises(QueueFullError):
        await client.send(make_message("custom", {}))
    assert client.connection_info().dropped == 0


async def test_dead_peer_is_abandoned_and_the_client_resumes(server: StreamServer) -> None:
    reasons: list[str] = []
    async with TcpProxy(server.port) as proxy:
        config = fast_config(proxy.url(), heartbeat_interval=0.2, heartbeat_timeout=scaled(0.6))
        async with WebSocketService(config, on_disconnect=reasons.append) as client:
            stream = client.messages()
            await client.wait_connected()
            await server.publish(MessageType.REQUEST_UPDATE, request("one"))
            await wait_until(lambda: client.connection_info().last_sequence == 1)
            proxy.freeze()
            await wait_until(lambda: not client.is_connected)
            await server.publish(MessageType.REQUEST_UPDATE, request("two"))
            await wait_until(lambda: client.is_connected)
            ids = []
            async for message in stream:
                if message.type is MessageType.REQUEST_UPDATE:
                    ids.append(message.data.id)
                    if len(ids) == 2:
                        break
    assert ids == ["one", "two"]
    assert "after a heartbeat" in reasons[0]
    assert proxy.connections >= 2
    assert any(h.get("since") == "1" for h in server.handshakes[1:])


async def test_garbage_then_silence_is_abandoned_before_init(server: StreamServer) -> None:
    server.send_init = False
    config = fast_config(server.url, heartbeat_timeout=scaled(0.3), max_reconnect_attempts=0)
    client = WebSocketService(config)
    await client.start()
    await wait_until(lambda: bool(server.peers))
    await server.send_raw("garbage")
    with pytest.raises(ConnectionError, match="no first message"):
        await client.run()
    assert client.connection_info().parse_errors == 1
    assert client.connection_info().connections == 0


async def test_silent_server_is_abandoned_before_init(server: StreamServer) -> None:
    server.send_init = False
    config = fast_config(server.url, heartbeat_timeout=scaled(0.3), max_reconnect_attempts=1)
    client = WebSocketService(config)
    with pytest.raises(ConnectionError, match="no first message"):
        await client.run()
    assert client.connection_info().connections == 0
    assert len(server.handshakes) == 2


async def test_oversized_frame_is_skipped_and_the_connection_stays(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url, max_message_size=4096)) as client:
        stream = client.messages(types=["request_update"])
        await client.wait_connected()
        await server.send_raw('{"type":"x","timestamp":1,"data":"' + "a" * 10_000 + '"}')
        await server.publish(MessageType.REQUEST_UPDATE, request("after"))
        assert (await anext(stream)).data.id == "after"
        info = client.connection_info()
    assert (info.parse_errors, info.unknown_messages, info.connections) == (1, 0, 1)


async def test_huge_frame_closes_and_reconnects(server: StreamServer) -> None:
    # Beyond 4 times max_message_size the frame is not even buffered.
    async with WebSocketService(fast_config(server.url, max_message_size=4096)) as client:
        stream = client.messages()
        await client.wait_connected()
        await server.send_raw('{"type":"x","timestamp":1,"data":"' + "a" * 20_000 + '"}')
        await wait_until(lambda: client.connection_info().connections == 2)
        await server.publish(MessageType.REQUEST_UPDATE, request("after"))
        async for message in stream:
            if message.type is MessageType.REQUEST_UPDATE:
                break
    assert message.data.id == "after"
    assert "1009" in (client.connection_info().last_error or "")
    assert client.connection_info().parse_errors == 1


async def test_close_ends_iteration_and_stops_reconnecting(server: StreamServer) -> None:
    states: list[ConnectionState] = []
    client = WebSocketService(fast_config(server.url))
    client.watch_state(lambda old, new: states.append(new))
    await client.start()
    stream = client.messages()
    await client.wait_connected()
    await client.close()
    rest = [m async for m in stream]
    assert [m.type for m in rest] == [MessageType.INIT]
    assert states == [ConnectionState.CONNECTING, ConnectionState.CONNECTED, ConnectionState.CLOSED]
    await client.run()  # returns at once: closed on purpose
    assert len(server.handshakes) == 1


async def test_reconnect_cuts_the_backoff_short_and_drops_a_live_connection(
    server: StreamServer,
) -> None:
    config = fast_config(server.url, reconnect_interval=3600.0, max_reconnect_interval=3600.0)
    async with WebSocketService(config) as client:
        await client.wait_connected()
        await server.publish(MessageType.REQUEST_UPDATE, request("one"))
        await wait_until(lambda: client.connection_info().last_sequence == 1)
        await server.close_all(1011, "internal error")
        await wait_until(lambda: client.state is ConnectionState.RECONNECTING)
        await client.reconnect()  # instead of waiting an hour
        await wait_until(lambda: client.connection_info().connections == 2)
        await client.reconnect()  # a live connection: dropped and resumed
        await wait_until(lambda: client.connection_info().connections == 3)
    assert [h.get("since") for h in server.handshakes] == [None, "1", "1"]
    assert client.connection_info().resumes == 2


async def test_feeds_the_store(server: StreamServer) -> None:
    from metricstream.store import MetricsStore

    await server.publish(MessageType.METRICS_UPDATE, metrics(3))
    async with WebSocketService(fast_config(server.url)) as client:
        store = MetricsStore(client)
        await client.wait_connected()
        await server.publish(MessageType.MODEL_UPDATE, model("m", request_count=4))
        await server.publish(MessageType.REQUEST_UPDATE, request("r1", "m"))
        await wait_until(lambda: len(store.state.recent_requests) == 1)
        status = store.connection_status()
        state = store.state
        store.close()
    assert status.is_connected
    assert state.metrics == metrics(3)
    assert state.models["m"].request_count == 4
    assert state.recent_requests[0].id == "r1"


async def test_close_from_a_callback(server: StreamServer) -> None:
    # A long close timeout: a close() that waited for its own task would sit it out.
    client = WebSocketService(fast_config(server.url, close_timeout=60.0))
    seen: list[str] = []

    async def stop_after_first(data: Any, message: WebSocketMessage[Any]) -> None:
        seen.append(data.id)
        await client.close()

    client.subscribe(MessageType.REQUEST_UPDATE, stop_after_first)
    await client.start()
    await client.wait_connected()
    await server.publish(MessageType.REQUEST_UPDATE, request("one"))
    async with asyncio.timeout(scaled(5)):
        await client.run()
    await server.publish(MessageType.REQUEST_UPDATE, request("two"))
    assert seen == ["one"]
    assert client.state is ConnectionState.CLOSED
    assert len(server.handshakes) == 1
