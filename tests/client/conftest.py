"""Fixtures of the client tests: a real stream server on a loopback port."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from metricstream.client import WebSocketConfig

from ..support import scaled
from .peers import StreamServer


@pytest.fixture
async def server() -> AsyncIterator[StreamServer]:
    async with StreamServer() as srv:
        yield srv


def fast_config(url: str, **changes: Any) -> WebSocketConfig:
    """A config with short reconnect delays and a generous heartbeat timeout.

    The timeout stays well above any scheduling hiccup of a loaded machine;
    tests of the timeout itself set their own.
    """
    settings: dict[str, Any] = {
        "url": url,
        "dialect": "native",
        "reconnect_interval": 0.02,
        "max_reconnect_interval": 0.1,
        "heartbeat_interval": 1.0,
        "heartbeat_timeout": scaled(5.0),
        "close_timeout": scaled(2.0),
    }
    settings.update(changes)
    return WebSocketConfig(**settings)


@pytest.fixture
def server_thread() -> Iterator[tuple[StreamServer, asyncio.AbstractEventLoop]]:
    """A StreamServer on its own loop and thread, as a blocking program would meet one."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = StreamServer()
    asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(scaled(10))
    try:
        yield server, loop
    finally:
        asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(
            scaled(10)
        )
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
