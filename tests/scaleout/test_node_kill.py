"""A ``metricstream serve --redis`` node SIGKILLed under load: its clients move on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from metricstream.server import RedisPublisher
from tests.server.conftest import open_client, request
from tests.support import free_port, scaled, wait_until

from .conftest import RedisProcess


class ServeProcess:
    """``metricstream serve --redis URL`` in a subprocess of its own session."""

    def __init__(self, redis_url: str) -> None:
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
            ],
            env={**os.environ, "METRICSTREAM_REDIS": redis_url},
            start_new_session=True,
        )

    def url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/metrics/stream" + (f"?{query}" if query else "")

    async def ready(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http, asyncio.timeout(scaled(30)):
            while True:
                assert self.process.poll() is None, "the node exited at startup"
                with contextlib.suppress(httpx.TransportError):
                    response = await http.get(f"http://127.0.0.1:{self.port}/healthz")
                    if response.status_code == 200:
                        body: dict[str, Any] = response.json()
                        return body
                # Polling: the node announces readiness only by answering.
                await asyncio.sleep(0.05)

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


class Follower:
    """A client that follows the stream on one node, then resumes on another."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.sequences: list[int] = []
        self.epoch: str | None = None
        self.resumes: list[bool] = []
        self.attached = asyncio.Event()

    async def run(self) -> None:
        for url in self.urls:
            query = ""
            if self.sequences:
                query = f"since={self.sequences[-1]}&epoch={self.epoch}"
            try:
                async with open_client(url + ("?" + query if query else "")) as ws:
                    async for frame in ws:
                        message = json.loads(frame)
                        if message["type"] == "init":
                            self.epoch = message["metadata"]["epoch"]
                            self.resumes.append(message["metadata"]["resumed"])
                            if not self.sequences:
                                self.sequences.append(message["sequence"])
                            self.attached.set()
                        elif message.get("sequence") is not None:
                            self.sequences.append(message["sequence"])
            except (ConnectionClosed, OSError):
                continue


async def test_clients_of_a_killed_node_resume_on_another_without_gaps_or_duplicates(
    redis_server: RedisProcess, two_nodes: tuple[ServeProcess, ServeProcess]
) -> None:
    doomed, survivor = two_nodes
    await doomed.ready()
    await survivor.ready()
    followers = [Follower([doomed.url(), survivor.url()]) for _ in range(10)]
    tasks = [asyncio.create_task(f.run()) for f in followers]
    async with RedisPublisher(redis_server.url) as publisher:
        async with asyncio.timeout(scaled(20)):
            for f in followers:
                await f.attached.wait()

        async def load(count: int, start: int) -> None:
            for i in range(count):
                publisher.publish(request(f"r{start + i}"))
                # Under load, not in one burst: about 500 messages a second.
                await asyncio.sleep(0.002)

        await load(300, 0)
        doomed.kill()
        await load(300, 300)
        async with asyncio.timeout(scaled(20)):
            await publisher.flush()
    final = (await survivor.ready())["sequence"]
    await wait_until(
        lambda: all(f.sequences and f.sequences[-1] >= final for f in followers),
        30,
        "every follower caught up",
    )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for f in followers:
        first = f.sequences[0]
        assert f.sequences == list(range(first, f.sequences[-1] + 1)), "a gap or a duplicate"
        assert f.resumes == [False, True], f.resumes
        assert f.sequences[-1] >= 600
