"""The client benchmark's consumers: ``python -m benchmarks._clientbench KIND --port P``.

- ``metricstream``: :class:`metricstream.client.WebSocketService` with one
  ``subscribe("*", ...)`` callback — decode, dispatch and sequence tracking,
  everything the client does per message;
- ``raw``: a plain ``websockets`` receive loop calling ``json.loads`` on each
  frame (the baseline).

Both read from the ``feed`` server, which sends as fast as they read, so the
consumer is the bottleneck. After ``--warmup`` messages each measures its own
CPU time (``time.process_time``) and wall time over ``--count`` messages and
prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

__all__ = ["main"]


class _Meter:
    def __init__(self, warmup: int, count: int) -> None:
        self.warmup = warmup
        self.total = warmup + count
        self.seen = 0
        self.cpu0 = self.wall0 = 0.0
        self.result: dict[str, Any] | None = None
        self.error = "did not finish"
        self.done = asyncio.Event()

    def tick(self, n: int = 1) -> None:
        seen = self.seen
        self.seen = seen + n
        if seen < self.warmup <= self.seen:
            self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        elif seen < self.total <= self.seen:
            cpu = time.process_time() - self.cpu0
            wall = time.perf_counter() - self.wall0
            measured = self.seen - self.warmup
            self.result = {
                "event": "result",
                "messages": measured,
                "cpu_us_per_message": cpu / measured * 1e6,
                "messages_per_s": measured / wall,
                "cpu_share": cpu / wall if wall else 0.0,
            }
            self.done.set()


async def _metricstream(url: str, meter: _Meter, batch: bool) -> None:
    from metricstream.client import WebSocketConfig, WebSocketService

    config = WebSocketConfig(
        url=url, batch=batch, heartbeat_interval=60.0, heartbeat_timeout=60.0, reconnect=False
    )
    client = WebSocketService(config)
    tick = meter.tick
    client.subscribe("*", lambda data, message: tick())
    await client.start()
    running = asyncio.create_task(client.run())
    finished = asyncio.create_task(meter.done.wait())
    try:
        await asyncio.wait({running, finished}, return_when=asyncio.FIRST_COMPLETED)
        if running.done() and not finished.done():
            meter.error = f"client stopped: {running.exception()!r} {client.connection_info()}"
    finally:
        # No closing handshake: the process exits right after printing.
        finished.cancel()
        running.cancel()


async def _raw(url: str, meter: _Meter, batch: bool) -> None:
    from websockets.asyncio.client import connect

    loads = json.loads
    tick = meter.tick
    ws = await connect(url, compression=None, max_size=None)
    try:
        async for frame in ws:
            decoded = loads(frame)
            tick(len(decoded) if batch and isinstance(decoded, list) else 1)
            if meter.done.is_set():
                break
    finally:
        # No closing handshake: the feed never answers one.
        ws.transport.abort()


def main(argv: list[str] | None = None) -> int:
    """Consume ``--count`` messages and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._clientbench")
    parser.add_argument("kind", choices=["metricstream", "raw"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--batch", action="store_true")
    parser.add_argument("--lifetime", type=float, default=120.0)
    args = parser.parse_args(argv)
    url = f"ws://127.0.0.1:{args.port}/metrics/stream" + ("?batch=1" if args.batch else "")
    run = _metricstream if args.kind == "metricstream" else _raw

    async def go() -> dict[str, Any]:
        meter = _Meter(args.warmup, args.count)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.lifetime):
                await run(url, meter, args.batch)
        return meter.result or {"event": "error", "message": meter.error, "seen": meter.seen}

    import uvloop

    result = uvloop.run(go())
    print(json.dumps(result), flush=True)
    sys.stdout.flush()
    # Skip interpreter teardown: the figures are out, and the feed does not care.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
