"""Liveness under a stalled event loop, on asyncio's own loop and on uvloop.

A frame that arrived while the loop was blocked is in the socket, merely
unread; the silence timer must not count it as silence on either loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Any

import pytest

from metricstream.client import ConnectionState, WebSocketService
from metricstream.protocol import MessageType, WebSocketMessage

from ..support import require, scaled, wait_until
from .conftest import fast_config
from .peers import StreamServer, TcpProxy, request


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "asyncio":
        return asyncio.new_event_loop
    require(
        importlib.util.find_spec("uvloop") is not None,
        "uvloop is not installed; pip install 'metricstream[server]'",
    )
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_blocked_event_loop_is_not_taken_for_a_dead_peer(loop: str) -> None:
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        runner.run(_blocked_event_loop())


async def _blocked_event_loop() -> None:
    timeout = 0.4
    server = StreamServer()
    # The server blocks the whole event loop (its own and the client's: they
    # share it) right after the client's heartbeat went out and before the
    # pong: exactly what a stalled process or a suspended laptop looks like to
    # the client's timers. The pong is then in the socket, merely unread.
    server.stall_on_heartbeat = timeout * 3
    pongs: list[WebSocketMessage[Any]] = []
    async with server:
        config = fast_config(server.url, heartbeat_interval=0.1, heartbeat_timeout=timeout)
        client = WebSocketService(config)
        client.subscribe(MessageType.PONG, lambda _, message: pongs.append(message))
        async with client:
            await client.wait_connected()
            await wait_until(lambda: server.stall_on_heartbeat == 0 and len(pongs) >= 3)
            assert client.connection_info().connections == 1


async def test_a_reader_held_up_by_its_consumer_is_not_a_dead_peer(server: StreamServer) -> None:
    timeout = 0.3
    config = fast_config(server.url, heartbeat_interval=0.1, heartbeat_timeout=timeout)
    release = asyncio.Event()

    async def slow_consumer(data: Any, message: WebSocketMessage[Any]) -> None:
        await release.wait()

    def heartbeats() -> int:
        return sum(1 for m in server.received if m["type"] == "heartbeat")

    async with WebSocketService(config) as client:
        client.subscribe(MessageType.REQUEST_UPDATE, slow_consumer)
        await client.wait_connected()
        await server.publish(MessageType.REQUEST_UPDATE, request("held"))
        before = heartbeats()
        # Heartbeats keep going out for many timeouts while the reader waits
        # for the handler; pongs pile up unread, and that is not silence.
        await wait_until(lambda: heartbeats() >= before + 3 * round(timeout / 0.1))
        release.set()
        await wait_until(lambda: client.connection_info().message_count >= 2)
        assert client.connection_info().connections == 1
        assert client.is_connected


@pytest.mark.parametrize(("interval", "silence"), [(1.0, 0.3), (0.3, 1.0)])
async def test_half_open_peer_is_detected_within_interval_plus_timeout(
    server: StreamServer, interval: float, silence: float
) -> None:
    # A link that stops forwarding without closing (a dead host, a pulled
    # cable): no FIN, no RST, only silence. The protocol promises detection
    # within heartbeat_interval + heartbeat_timeout of the last frame.
    async with TcpProxy(server.port) as proxy:
        config = fast_config(proxy.url(), heartbeat_interval=interval, heartbeat_timeout=silence)
        left: list[float] = []
        async with WebSocketService(config) as client:
            await client.wait_connected()
            loop = asyncio.get_running_loop()
            client.watch_state(lambda old, new: left.append(loop.time()))
            await server.publish(MessageType.REQUEST_UPDATE, request("last"))
            await wait_until(lambda: client.connection_info().last_sequence == 1)
            frozen_at = loop.time()
            proxy.freeze()
            await wait_until(lambda: bool(left), within=scaled(10))
            elapsed = left[0] - frozen_at
            assert client.state is not ConnectionState.CONNECTED
            # The bound, plus a scheduling allowance for a loaded machine.
            assert elapsed <= interval + silence + scaled(0.25), elapsed
            await wait_until(lambda: client.is_connected, within=scaled(10))
