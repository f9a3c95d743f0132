"""Fixtures of the server tests: a real uvicorn on an ephemeral loopback port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from metricstream.protocol import (
    ErrorUpdatePayload,
    MessageType,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    RequestUpdatePayload,
    WebSocketMessage,
    make_message,
)
from metricstream.server import (
    MetricsHub,
    ServerSettings,
    StreamServer,
    create_app,
    uvicorn_config,
)
from tests.support import scaled, wait_until


@dataclass
class Running:
    """A server running in the test's event loop."""

    hub: MetricsHub
    server: StreamServer
    port: int

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, query: str = "") -> str:
        return f"ws://{self.base}/metrics/stream" + (f"?{query}" if query else "")


@asynccontextmanager
async def running(
    hub: MetricsHub | None = None,
    settings: ServerSettings | None = None,
    *,
    port: int = 0,
    **config: Any,
) -> AsyncIterator[Running]:
    """Serve ``hub`` on uvicorn (by default on an ephemeral port) in this
    event loop until the block ends."""
    hub = hub if hub is not None else MetricsHub(heartbeat_interval=None)
    settings = settings if settings is not None else ServerSettings()
    app = create_app(hub, settings)
    options: dict[str, Any] = {"max_message_size": settings.max_message_size}
    options.update(config)
    server = StreamServer(
        uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning", **options),
        hub,
        close_timeout=settings.close_timeout,
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), 10, "server start")
    if task.done():
        task.result()
    bound = server.bound_port
    assert bound is not None
    try:
        yield Running(hub, server, bound)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, scaled(30))


async def recv(ws: ClientConnection, seconds: float = 5.0) -> Any:
    """The next frame, JSON-decoded."""
    frame = await asyncio.wait_for(ws.recv(), scaled(seconds))
    assert isinstance(frame, str), "the server sends text frames"
    return json.loads(frame)


async def recv_type(ws: ClientConnection, mtype: str, seconds: float = 5.0) -> Any:
    """Skip frames until one of type ``mtype`` arrives."""
    deadline = asyncio.get_running_loop().time() + scaled(seconds)
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            pytest.fail(f"no {mtype} frame arrived")
        message = await recv(ws, remaining)
        if message["type"] == mtype:
            return message


async def close_code(ws: ClientConnection, seconds: float = 15.0) -> int | None:
    """Read until the connection closes; the server's close code (None: no close frame)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), scaled(seconds))
    except ConnectionClosed as exc:
        return None if exc.rcvd is None else exc.rcvd.code


def open_client(url: str, **kwargs: Any) -> Any:
    """A real websockets client, without compression (as the server defaults)."""
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", scaled(10))
    return connect(url, **kwargs)


def metrics(total: int = 1, active: int = 0) -> WebSocketMessage[Any]:
    return make_message(
        MessageType.METRICS_UPDATE,
        MetricsUpdatePayload(
            total_requests=total,
            total_tokens=total * 10,
            total_cost=0.5,
            avg_latency_ms=12.5,
            error_rate=1.0,
            streaming_percentage=50.0,
            requests_per_second=2.0,
            tokens_per_second=20.0,
            active_connections=active,
        ),
    )


def model_update(model: str, count: int = 1) -> WebSocketMessage[Any]:
    return make_message(
        MessageType.MODEL_UPDATE,
        ModelUpdatePayload(
            model=model,
            request_count=count,
            total_prompt_tokens=count,
            total_completion_tokens=count,
            total_tokens=2 * count,
            total_latency_ms=10.0 * count,
            error_count=0,
            avg_latency_ms=10.0,
            error_rate=0.0,
            total_cost=0.01 * count,
            tokens_per_second=5.0,
        ),
    )


def request(rid: str, model: str = "m1", note: str = "") -> WebSocketMessage[Any]:
    return make_message(
        MessageType.REQUEST_UPDATE,
        RequestUpdatePayload(
            id=rid,
            model=model,
            created=1_700_000_000.0,
            prompt_tokens=3,
            completion_tokens=4,
            total_tokens=7,
            latency_ms=12.0,
            streaming=False,
            status="success" if not note else "error",
            error_message=note or None,
            cost=0.001,
        ),
    )


def error_event(kind: str, model: str | None = "m1") -> WebSocketMessage[Any]:
    return make_message(
        MessageType.ERROR_UPDATE,
        ErrorUpdatePayload(
            error_type=kind, error_message="boom", model=model, timestamp=1, severity="low"
        ),
    )
