"""The parts together: ``metricstream serve --demo`` read by the project's own client."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from metricstream.client import WebSocketConfig, WebSocketService
from metricstream.protocol import STREAM_TYPES, MessageType, WebSocketMessage
from metricstream.store import MetricsStore

from .support import free_port, scaled


@pytest.fixture
def demo_port() -> Iterator[int]:
    """A ``metricstream serve --demo`` subprocess; yields its port."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metricstream",
            "serve",
            "--demo",
            "--seed",
            "11",
            "--port",
            str(port),
            "--interval",
            "0.2",
            "--log-level",
            "warning",
        ],
        start_new_session=True,
    )
    try:
        yield port
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


async def test_demo_server_streams_every_message_type_with_valid_payloads(demo_port: int) -> None:
    seen: Counter[str] = Counter()
    every_type = asyncio.Event()
    sequences: list[int] = []

    def record(data: Any, message: WebSocketMessage[Any]) -> None:
        seen[message.type] += 1
        if set(seen) >= STREAM_TYPES:
            every_type.set()
        if message.sequence is not None and message.type != MessageType.INIT:
            sequences.append(message.sequence)

    config = WebSocketConfig(
        url=f"ws://127.0.0.1:{demo_port}/metrics/stream", reconnect_interval=0.1, dialect="native"
    )
    async with WebSocketService(config) as client:
        store = MetricsStore(client)
        client.subscribe("*", record)
        await asyncio.wait_for(every_type.wait(), scaled(60))
        info = client.connection_info()
        state = store.state

    # Every payload decoded into its typed Struct: nothing was rejected.
    assert info.parse_errors == 0
    assert info.duplicates == info.gaps == info.out_of_order == 0
    assert seen[MessageType.INIT] == 1
    # One stream, in order, without holes.
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    # And the store made a dashboard's worth of state out of it.
    assert state.metrics is not None
    assert state.models
    assert state.recent_requests
    assert state.system_stats is not None
    assert state.kv_cache is not None
    assert state.costs is not None
    assert state.rate_limits
