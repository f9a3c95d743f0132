"""The client against the real FakeAI server (its own dialect), as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from metricstream.client import Dialect, WebSocketService
from metricstream.protocol import MessageType, WebSocketMessage

from ..support import free_port, require, require_executable, scaled
from .conftest import fast_config
from .peers import wait_until

pytestmark = [pytest.mark.fakeai, pytest.mark.slow]

_DEFAULT = Path(__file__).resolve().parents[2] / ".venv-fakeai" / "bin" / "fakeai"


@pytest.fixture
async def fakeai() -> AsyncIterator[int]:
    executable = require_executable(
        os.environ.get("METRICSTREAM_FAKEAI", str(_DEFAULT)), "run `make fakeai`"
    )
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        executable,
        "server",
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient() as http:
            async with asyncio.timeout(scaled(60)):
                while True:
                    if process.returncode is not None:
                        assert process.stderr is not None
                        tail = (await process.stderr.read()).decode(errors="replace")[-400:]
                        require(False, f"the FakeAI server exited at startup: {tail}")
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/health")).is_success:
                            break
                    except httpx.TransportError:
                        pass
                    # Polling: the server announces readiness only by answering.
                    await asyncio.sleep(0.1)
        yield port
    finally:
        # FakeAI ignores SIGTERM.
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
        if process.stderr is not None:
            await process.stderr.read()


async def _chat(port: int, count: int) -> None:
    body = {"model": "openai/gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=scaled(30)) as http:
        for _ in range(count):
            response = await http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
            response.raise_for_status()


async def test_speaks_the_fakeai_dialect(fakeai: int) -> None:
    url = f"ws://127.0.0.1:{fakeai}/metrics/stream"
    config = fast_config(url, dialect="auto", heartbeat_interval=0.2, heartbeat_timeout=scaled(5))
    errors: list[WebSocketMessage[Any]] = []
    async with WebSocketService(config) as client:
        client.subscribe(MessageType.ERROR, lambda _, message: errors.append(message))
        stream = client.messages()
        await client.wait_connected()
        first = await anext(stream)
        await _chat(fakeai, 3)
        async with asyncio.timeout(scaled(30)):
            async for message in stream:
                if (
                    message.type is MessageType.METRICS_UPDATE
                    and message.data.requests_per_second > 0
                ):
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
    assert client.connection_info().dialect == Dialect.FAKEAI
    assert client.connection_info().connections == 1
    assert client.connection_info().parse_errors == 0
    assert errors == []
