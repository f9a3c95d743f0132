"""The client fails over between servers of one stream and resumes on whichever answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from metricstream.client import Dialect, WebSocketConfig, WebSocketService
from metricstream.exceptions import ConfigError, StreamConnectionError
from metricstream.protocol import Backoff, ClientSession, CloseAction, MessageType, WebSocketMessage
from metricstream.server import RedisPublisher
from tests.server.conftest import request
from tests.support import scaled, wait_until

from .conftest import RedisProcess, ServeProcess

_INIT = json.dumps(
    {"type": "init", "timestamp": 1, "data": {}, "sequence": 5, "metadata": {"epoch": "e1"}}
).encode()


def _refused() -> StreamConnectionError:
    return StreamConnectionError("refused")


def test_the_session_tries_every_server_at_once_then_backs_off() -> None:
    session = ClientSession(backoff=Backoff(initial=1.0, jitter=0.0), endpoints=3)
    session.start()
    assert session.endpoint == 0
    session.connect()
    first = session.connect_failed(_refused(), CloseAction.RETRY)
    assert (session.endpoint, first.delay) == (1, 0.0)
    session.connect()
    second = session.connect_failed(_refused(), CloseAction.RETRY)
    assert (session.endpoint, second.delay) == (2, 0.0)
    session.connect()
    # A whole round failed: the backoff decides the next round's delay.
    third = session.connect_failed(_refused(), CloseAction.RETRY)
    assert session.endpoint == 0
    assert third.delay == 1.0


def test_a_lost_connection_moves_on_and_resumes_from_its_position() -> None:
    session = ClientSession(backoff=Backoff(initial=1.0, jitter=0.0), endpoints=2)
    session.start()
    session.connect()
    session.opened()
    session.receive(_INIT, 0.0)
    decision = session.closed(None)
    # The node went away: the other one, at once, resuming where we were.
    assert (session.endpoint, decision.delay) == (1, 0.0)
    params = session.connect()
    assert (params["since"], params["epoch"]) == ("5", "e1")
    session.opened()
    session.receive(_INIT, 1.0)
    # Up again: the next loss again tries the other server at once.
    assert session.closed(None).delay == 0.0
    assert session.endpoint == 0


def test_one_server_keeps_the_plain_backoff() -> None:
    session = ClientSession(backoff=Backoff(initial=1.0, jitter=0.0))
    session.start()
    session.connect()
    assert session.connect_failed(_refused(), CloseAction.RETRY).delay == 1.0
    assert session.endpoint == 0
    with pytest.raises(ConfigError):
        ClientSession(endpoints=0)


def test_the_config_takes_several_urls_and_checks_each() -> None:
    config = WebSocketConfig(url="ws://a:1/s", urls=["ws://b:2/s"])
    assert config.endpoints == ("ws://a:1/s", "ws://b:2/s")
    assert WebSocketConfig(url="ws://a:1/s").endpoints == ("ws://a:1/s",)
    with pytest.raises(ConfigError):
        WebSocketConfig(url="ws://a:1/s", urls=["http://b/s"])
    with pytest.raises(ConfigError):
        WebSocketConfig(url="ws://a:1/s", urls="ws://b:2/s")
    assert "token=***" in repr(WebSocketConfig(url="ws://a/s", urls=("ws://b/s?token=x",)))


async def test_the_client_fails_over_to_another_node_and_resumes(
    redis_server: RedisProcess, two_nodes: tuple[ServeProcess, ServeProcess]
) -> None:
    doomed, survivor = two_nodes
    await doomed.ready()
    await survivor.ready()
    sequences: list[int] = []
    inits: list[bool] = []

    def record(data: Any, message: WebSocketMessage[Any]) -> None:
        if message.type == MessageType.INIT:
            inits.append(bool((message.metadata or {}).get("resumed")))
        elif message.sequence is not None:
            sequences.append(message.sequence)

    config = WebSocketConfig(
        url=doomed.url(), urls=(survivor.url(),), reconnect_interval=0.1, dialect=Dialect.NATIVE
    )
    async with (
        RedisPublisher(redis_server.url) as publisher,
        WebSocketService(config) as client,
    ):
        client.subscribe("*", record)
        await wait_until(lambda: bool(inits), 20, "the first init")
        for i in range(100):
            publisher.publish(request(f"a{i}"))
            # Paced, not one burst: the failover happens under a live stream.
            await asyncio.sleep(0.002)
        await wait_until(lambda: len(sequences) >= 100, 20, "the first messages")
        doomed.kill()
        for i in range(100):
            publisher.publish(request(f"b{i}"))
            await asyncio.sleep(0.002)
        async with asyncio.timeout(scaled(20)):
            await publisher.flush()
        final = (await survivor.ready())["sequence"]
        await wait_until(lambda: bool(sequences) and sequences[-1] >= final, 20, "catching up")
        info = client.connection_info()
    assert inits == [False, True], "the second node resumed the stream"
    assert sequences == list(range(sequences[0], sequences[-1] + 1))
    assert info.gaps == info.duplicates == 0
    assert info.resumes == 1
