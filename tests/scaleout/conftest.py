"""Fixtures of the scale-out tests: one real ``redis-server`` per test session.

The server runs as a subprocess on a free loopback port, without
persistence (``--save "" --appendonly no``), and is flushed before every
test. A test may stop it (SIGSTOP), kill it or restart it empty on the same
port; the fixture puts it back in order for the next test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from metricstream.server import (
    LLMExporter,
    MetricsHub,
    RedisBackend,
    ServerSettings,
    StreamServer,
    create_app,
    uvicorn_config,
)
from tests.support import (
    free_port,
    require,
    require_executable,
    scaled,
    wait_until,
    wait_until_sync,
)


class RedisProcess:
    """A real ``redis-server`` on a loopback port, which a test may stop, kill or restart."""

    def __init__(self, executable: str, port: int) -> None:
        self.executable = executable
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (empty) and wait until it answers PING."""
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        process = self.process

        def answering() -> bool:
            if process.poll() is not None:
                require(False, f"redis-server exited at startup ({process.returncode})")
            return self.ping()

        # Polling: redis-server announces readiness only by answering.
        wait_until_sync(answering, 10, "redis-server to answer PING")

    def command(self, *words: str) -> bytes:
        """Send one inline command; its reply's first line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            return sock.recv(4096).split(b"\r\n", 1)[0]

    def ping(self) -> bool:
        try:
            return self.command("PING") == b"+PONG"
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP: the port stays open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.stopped = False

    def kill(self) -> None:
        """SIGKILL and reap it (its data is gone: no persistence)."""
        process = self.process
        if process is None:
            return
        if self.stopped:
            self.resume()
        process.kill()
        process.wait()
        self.process = None


@pytest.fixture(scope="session")
def redis_process() -> Iterator[RedisProcess]:
    """The session's ``redis-server`` (Debian's package; ``.ci/run`` installs it)."""
    executable = require_executable(
        os.environ.get("METRICSTREAM_REDIS_SERVER", "redis-server"),
        "install Debian's redis-server package",
    )
    server = RedisProcess(executable, free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_server(redis_process: RedisProcess) -> Iterator[RedisProcess]:
    """The session's Redis, running and empty."""
    if redis_process.stopped:
        redis_process.resume()
    if redis_process.process is None:
        redis_process.start()
    assert redis_process.command("FLUSHALL") == b"+OK"
    yield redis_process
    if redis_process.stopped:
        redis_process.resume()
    if redis_process.process is None:
        redis_process.start()


@dataclass
class Node:
    """A node of the shared stream: a hub, its backend and uvicorn, in this event loop."""

    hub: MetricsHub
    backend: RedisBackend
    server: StreamServer
    port: int

    def url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/metrics/stream" + (f"?{query}" if query else "")


@asynccontextmanager
async def node(
    redis_url: str,
    *,
    hub: MetricsHub | None = None,
    exporter: LLMExporter | None = None,
    **backend_options: Any,
) -> AsyncIterator[Node]:
    """Serve a hub backed by the shared stream on an ephemeral port; with an
    ``exporter``, ``/metrics`` serves it, following the node's stream."""
    hub = hub if hub is not None else MetricsHub(heartbeat_interval=None)
    backend_options.setdefault("block", 0.2)
    backend_options.setdefault("retry_interval", 0.1)
    backend = RedisBackend(redis_url, **backend_options)
    settings = ServerSettings()
    registry = None
    if exporter is not None:
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=True)
        registry.register(exporter)
        exporter.follow(backend)
    app = create_app(hub, settings, backend=backend, dashboard=False, registry=registry)
    server = StreamServer(
        uvicorn_config(app, host="127.0.0.1", port=0, log_level="warning"),
        hub,
        close_timeout=settings.close_timeout,
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), 10, "node start")
    if task.done():
        task.result()
    assert server.bound_port is not None
    try:
        yield Node(hub, backend, server, server.bound_port)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, scaled(30))


class ServeProcess:
    """``metricstream serve --redis URL`` in a subprocess of its own session
    (``extra``: more options, e.g. ``--demo``)."""

    def __init__(self, redis_url: str, *extra: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metricstream",
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--interval",
                "0.5",
                *extra,
            ],
            env={**os.environ, "METRICSTREAM_REDIS": redis_url},
            start_new_session=True,
        )

    def url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/metrics/stream" + (f"?{query}" if query else "")

    async def ready(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:

            async def answered() -> dict[str, Any] | None:
                assert self.process.poll() is None, "the node exited at startup"
                with contextlib.suppress(httpx.TransportError):
                    response = await http.get(f"http://127.0.0.1:{self.port}/healthz")
                    if response.status_code == 200:
                        body: dict[str, Any] = response.json()
                        return body
                return None

            # Polling: the node announces readiness only by answering.
            health: dict[str, Any] | None = await wait_until(
                answered, 30, "the node to answer", interval=0.05
            )
            assert health is not None
            return health

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def two_nodes(redis_server: RedisProcess) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    nodes = (ServeProcess(redis_server.url), ServeProcess(redis_server.url))
    try:
        yield nodes
    finally:
        for one in nodes:
            one.kill()
