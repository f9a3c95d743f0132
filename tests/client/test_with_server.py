"""The client against metricstream's own server, run as `metricstream serve`."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from metricstream.client import EventHandlers, WebSocketService
from metricstream.exceptions import ConnectionRejectedError
from metricstream.protocol import MessageType, WebSocketMessage

from ..support import answers, free_port, wait_until
from .conftest import fast_config
from .peers import TcpProxy

TOKEN = "integration-token"


async def _start_server(port: int) -> asyncio.subprocess.Process:
    """``metricstream serve --demo`` on ``port``, once it answers /healthz."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "metricstream",
        "serve",
        "--port",
        str(port),
        "--demo",
        "--seed",
        "7",
        "--interval",
        "0.1",
        "--token",
        TOKEN,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient() as http:

            async def started() -> bool:
                assert process.returncode is None, "metricstream serve exited at startup"
                return await answers(http, f"http://127.0.0.1:{port}/healthz")

            # Polling: the server announces readiness only by answering.
            await wait_until(started, 30, "metricstream serve to answer", interval=0.05)
    except BaseException:
        await _kill(process)
        raise
    return process


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    await process.wait()


@pytest.fixture
async def serve() -> AsyncIterator[int]:
    port = free_port()
    process = await _start_server(port)
    try:
        yield port
    finally:
        await _kill(process)


async def test_stream_is_contiguous_across_a_cut_connection(serve: int) -> None:
    async with TcpProxy(serve) as proxy:
        config = fast_config(proxy.url(), token=TOKEN)
        received: list[WebSocketMessage[Any]] = []
        async with WebSocketService(config) as client:
            client.subscribe("*", lambda _, message: received.append(message))
            await client.wait_connected()
            await wait_until(lambda: len(received) > 10)
            proxy.cut()
            await wait_until(lambda: client.connection_info().connections == 2)
            cut_at = len(received)
            await wait_until(lambda: len(received) > cut_at + 10)
    inits = [m for m in received if m.type is MessageType.INIT]
    assert len(inits) == 2
    assert inits[0].metadata is not None
    assert inits[1].metadata is not None
    assert inits[1].metadata["epoch"] == inits[0].metadata["epoch"]
    assert inits[1].metadata["resumed"] is True
    sequences = [m.sequence for m in received if m.is_stream and m.sequence is not None]
    first = inits[0].sequence
    assert first is not None
    assert sequences == list(range(first + 1, first + 1 + len(sequences)))
    assert client.connection_info().duplicates == 0
    assert client.connection_info().gaps == 0
    assert client.connection_info().parse_errors == 0
    assert client.connection_info().resumes == 1
    assert client.latency is not None


async def test_wrong_token_is_rejected_for_good(serve: int) -> None:
    client = WebSocketService(fast_config(f"ws://127.0.0.1:{serve}/metrics/stream", token="no"))
    with pytest.raises(ConnectionRejectedError) as caught:
        await client.run()
    assert caught.value.code in (401, 4001)


async def test_server_killed_and_restarted() -> None:
    port = free_port()
    events: list[str] = []
    handlers = EventHandlers(
        on_disconnect=lambda reason: events.append("disconnect"),
        on_reconnected=lambda: events.append("reconnected"),
    )
    config = fast_config(f"ws://127.0.0.1:{port}/metrics/stream", token=TOKEN)
    first = await _start_server(port)
    try:
        async with WebSocketService(config, handlers) as client:
            await client.wait_connected()
            await wait_until(lambda: (client.connection_info().last_sequence or 0) > 3)
            old_epoch = client.connection_info().epoch
            await _kill(first)  # SIGKILL: no close frame, no goodbye
            await wait_until(lambda: not client.is_connected, within=10)
            second = await _start_server(port)
            try:
                await wait_until(lambda: client.connection_info().connections == 2, within=30)
                info = client.connection_info()
                assert info.epoch != old_epoch
                assert info.resumed is False  # a new process: a fresh snapshot
                stream = client.messages(types=["metrics_update"])
                assert (await anext(stream)).type == "metrics_update"
            finally:
                await _kill(second)
    finally:
        await _kill(first)
    assert events[:2] == ["disconnect", "reconnected"]
