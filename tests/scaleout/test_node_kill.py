"""A ``metricstream serve --redis`` node SIGKILLed under load: its clients move on."""

from __future__ import annotations

import asyncio
import json

from websockets.exceptions import ConnectionClosed

from metricstream.server import RedisPublisher
from tests.server.conftest import open_client, request
from tests.support import scaled, wait_until

from .conftest import RedisProcess, ServeProcess


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
