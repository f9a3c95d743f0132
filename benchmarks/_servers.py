"""The servers under test, each run as ``python -m benchmarks._servers KIND``.

- ``metricstream``: the real stream server — a :class:`MetricsHub`,
  :func:`create_app` and :class:`StreamServer` on :func:`uvicorn_config`,
  exactly what ``metricstream serve`` runs, with a publisher task (with
  ``--redis URL``, a node of a stream shared through Redis);
- ``broadcast``: a plain ``websockets`` server calling ``broadcast()``;
- ``fastapi``: a FastAPI endpoint on uvicorn's defaults whose publisher
  awaits ``websocket.send_text`` for each client in turn (the FakeAI pattern);
- ``feed``: a raw sender of pre-framed messages, as fast as the client reads,
  for the client benchmark.

Every publisher sends the same ~230-byte ``request_update`` whose
``data.created`` is the publisher's ``time.time()``, taken just before
``publish()`` (so before any Redis round trip), so receivers measure
end-to-end latency on the same clock. Messages go out in bursts of ``--burst`` at ``--rate``
messages per second. Each server prints ``{"event": "ready", "port": P}`` on
stdout once it listens, and exits by itself after ``--lifetime`` seconds, so
nothing outlives a benchmark even if the runner dies.

With ``--trace`` a ``metricstream`` server also times each message at the
stages of its way to the clients (:class:`_Stages`) and answers ``stages``
on stdin with their percentiles since the previous ``stages``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

# At module level: FastAPI resolves the endpoint's annotations from globals.
from fastapi import WebSocket, WebSocketDisconnect

from metricstream.protocol import (
    MessageType,
    RequestUpdatePayload,
    WebSocketMessage,
    encode,
    make_message,
)

__all__ = ["main", "sample_message"]

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def sample_message(index: int, sequence: int | None = None, pad: int = 0) -> WebSocketMessage[Any]:
    """The benchmark message: a ``request_update`` stamped with ``time.time()``.

    ``pad`` adds that many bytes (in ``organization_id``), for the benchmarks
    that need volume rather than message count.
    """
    payload = RequestUpdatePayload(
        id=f"req-{index:010d}",
        model="openai/gpt-oss-120b",
        created=time.time(),
        prompt_tokens=120,
        completion_tokens=340,
        total_tokens=460,
        latency_ms=812.5,
        streaming=True,
        status="success",
        cost=0.00123,
        organization_id="x" * pad if pad else None,
    )
    return make_message(MessageType.REQUEST_UPDATE, payload, sequence=sequence)


def _ready(port: int, **extra: object) -> None:
    print(json.dumps({"event": "ready", "port": port, "pid": os.getpid(), **extra}), flush=True)


def _stop_before_lifetime(server: Any, lifetime: float) -> None:
    """Ask a uvicorn server to shut down gracefully a little before ``lifetime``."""

    def stop() -> None:
        server.should_exit = True

    asyncio.get_running_loop().call_later(max(0.0, lifetime - 5.0), stop)


async def _publish_forever(rate: float, burst: int, publish: Callable[[int], object]) -> None:
    """Call ``publish(i)`` ``burst`` times per tick, ``rate`` messages per second.

    Ticks are scheduled on absolute times so the rate does not drift; a
    publisher that falls behind by more than a second (a stalled naive loop)
    restarts its schedule instead of bursting to catch up.
    """
    if rate <= 0:
        return
    interval = burst / rate
    index = 0
    next_tick = time.monotonic()
    while True:
        next_tick += interval
        delay = next_tick - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            next_tick = time.monotonic()
        for _ in range(burst):
            result = publish(index)
            if asyncio.iscoroutine(result):
                await result
            index += 1


def _percentiles(values: array[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "count": 0}
    ordered = sorted(values)
    last = len(ordered) - 1
    return {
        "p50": ordered[round(0.5 * last)] * 1000,
        "p99": ordered[round(0.99 * last)] * 1000,
        "count": len(ordered),
    }


class _Stages:
    """Seconds from ``data.created`` to each stage a message reaches in this node.

    - ``script_start`` / ``script_done``: the publisher's script call for the
      batch holding the message began / its reply was read (the publishing
      node of a shared stream only);
    - ``ingested``: the node's reader handed it to the hub (the ``XREAD``
      reply parsed, the entry decoded, logged and queued for every client);
    - ``flushed``: the hub's flush after it ran, the frame written to every
      client's socket (in process: right after ``publish()``).

    The client side (socket to the load generator's callback) is the load
    generator's latency minus ``flushed``.
    """

    def __init__(self) -> None:
        self.samples: dict[str, array[float]] = {}
        # ``data.created`` of messages published but not yet sent to Redis.
        self.unsent: deque[float] = deque()

    def add(self, stage: str, seconds: float) -> None:
        """Record one message's time to ``stage``."""
        samples = self.samples.get(stage)
        if samples is None:
            samples = self.samples[stage] = array("d")
        samples.append(seconds)

    def flushed_later(self, created: float) -> None:
        """Record ``flushed`` once the callbacks already queued (the hub's flush) have run."""
        asyncio.get_running_loop().call_soon(lambda: self.add("flushed", time.time() - created))

    def mark(self) -> dict[str, Any]:
        """Percentiles (ms) of every stage since the last mark, then start afresh."""
        report = {stage: _percentiles(values) for stage, values in self.samples.items()}
        self.samples = {}
        return {"event": "stages", "stages": report}

    def time_script(self, publisher: Any) -> None:
        """Time the publisher's script calls (benchmark instrumentation of a
        private attribute: the public API has no per-batch hook)."""
        script = publisher._script

        async def timed(*, keys: list[str], args: list[Any]) -> Any:
            start = time.time()
            reply = await script(keys=keys, args=args)
            done = time.time()
            # args: epoch, skip, 4 limits, batch number, message count, ...
            for _ in range(min(int(args[7]), len(self.unsent))):
                created = self.unsent.popleft()
                self.add("script_start", start - created)
                self.add("script_done", done - created)
            return reply

        publisher._script = timed

    async def answer(self) -> None:
        """Answer ``stages`` commands on stdin until it closes."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            if line.strip() == b"stages":
                print(json.dumps(self.mark()), flush=True)


async def _serve_metricstream(args: argparse.Namespace) -> None:
    from metricstream.server import (
        MetricsHub,
        ServerSettings,
        StreamServer,
        create_app,
        uvicorn_config,
    )

    hub = MetricsHub(heartbeat_interval=args.heartbeat, max_buffer_bytes=args.max_buffer_bytes)
    backend = None
    if args.redis:
        # A node of a stream shared through Redis: publish() goes to Redis
        # and every message comes back through the node's one reader.
        from metricstream.server import RedisBackend

        backend = RedisBackend(args.redis)
    hardened = args.kind == "serve"
    # A long-running server's replay log is full; start there, so that RSS
    # measured over a run is not the log filling up.
    for index in range(args.prefill):
        hub.publish(sample_message(-1 - index, pad=args.pad))
    options: dict[str, Any] = {}
    if hardened:
        # What ``metricstream serve`` runs: default settings, guarded protocols.
        from metricstream.server import guarded_uvicorn_options

        settings = ServerSettings()
        options = guarded_uvicorn_options(hub, settings)
    else:
        settings = ServerSettings(max_connections=100_000)
    app = create_app(hub, settings, dashboard=False, backend=backend)
    server = StreamServer(
        uvicorn_config(app, host="127.0.0.1", port=0, log_level="warning", backlog=4096, **options),
        hub,
    )
    serving = asyncio.create_task(server.serve())
    _stop_before_lifetime(server, args.lifetime)
    while not server.started:
        if serving.done():
            serving.result()
            return
        await asyncio.sleep(0.01)
    assert server.bound_port is not None
    stages = _Stages() if args.trace else None
    tasks: list[asyncio.Task[None]] = []
    if stages is not None:
        tasks.append(asyncio.create_task(stages.answer()))
        if backend is not None:
            assert backend.publisher is not None
            stages.time_script(backend.publisher)

            def ingested(message: WebSocketMessage[Any]) -> None:
                created = getattr(message.data, "created", None)
                if created is not None and message.type == MessageType.REQUEST_UPDATE:
                    stages.add("ingested", time.time() - created)
                    stages.flushed_later(created)

            backend.add_listener(ingested)
    _ready(server.bound_port)

    def publish(index: int) -> None:
        message = sample_message(index, pad=args.pad)
        if stages is None:
            hub.publish(message)
            return
        created = message.data.created
        if backend is not None:
            stages.unsent.append(created)
        hub.publish(message)
        if backend is None:
            stages.flushed_later(created)

    tasks.append(asyncio.create_task(_publish_forever(args.rate, args.burst, publish)))
    try:
        await serving
    finally:
        for task in tasks:
            task.cancel()


async def _serve_broadcast(args: argparse.Namespace) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    # Its keepalive (a ping every ``ping_interval``) is what metricstream's
    # heartbeat is compared with; 20 s is websockets' own default.
    keepalive = args.heartbeat if args.heartbeat is not None else 20.0
    async with serve(
        handler, "127.0.0.1", 0, compression=None, backlog=4096, ping_interval=keepalive
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        _ready(port)

        def publish(index: int) -> None:
            message = sample_message(index, sequence=index + 1, pad=args.pad)
            broadcast(clients, encode(message).decode())

        await _publish_forever(args.rate, args.burst, publish)
        await asyncio.Future()


async def _serve_fastapi(args: argparse.Namespace) -> None:
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    clients: list[WebSocket] = []

    @app.websocket("/metrics/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        clients.append(websocket)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            with contextlib.suppress(ValueError):
                clients.remove(websocket)

    async def publish(index: int) -> None:
        # The naive pattern: encode once, then await every client in turn.
        text = encode(sample_message(index, sequence=index + 1, pad=args.pad)).decode()
        for websocket in list(clients):
            try:
                await websocket.send_text(text)
            except Exception:
                with contextlib.suppress(ValueError):
                    clients.remove(websocket)

    # uvicorn's defaults otherwise (ws="auto", permessage-deflate offered, but
    # the load generator does not ask for it), as a typical FastAPI app runs.
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", backlog=4096)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    _stop_before_lifetime(server, args.lifetime)
    while not server.started:
        if serving.done():
            serving.result()
            return
        await asyncio.sleep(0.01)
    port = next(iter(server.servers[0].sockets)).getsockname()[1]
    _ready(port, ws=str(config.ws))
    publisher = asyncio.create_task(_publish_forever(args.rate, args.burst, publish))
    try:
        await serving
    finally:
        publisher.cancel()


def _text_frame(payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 65536:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + payload


async def _serve_feed(args: argparse.Namespace) -> None:
    """Send the native stream (``init``, then numbered messages) as fast as read."""
    encoder = msgspec.json.Encoder()
    epoch = "bench0"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            key = b""
            for line in request.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            init = {
                "type": "init",
                "timestamp": int(time.time() * 1000),
                "sequence": 0,
                "data": {
                    "metrics": None,
                    "models": {},
                    "rate_limits": {},
                    "costs": None,
                    "kv_cache": None,
                    "system": None,
                    "recent_requests": [],
                    "recent_errors": [],
                },
                "metadata": {"epoch": epoch, "resumed": False, "server_version": "bench"},
            }
            writer.write(_text_frame(encoder.encode(init)))
            # The client's own frames (heartbeats) are read and dropped.
            drain_inbound = asyncio.create_task(_discard(reader))
            sequence = 0
            try:
                while not drain_inbound.done():
                    chunk = []
                    for _ in range(256 // args.batch):
                        messages = []
                        for _ in range(args.batch):
                            sequence += 1
                            messages.append(encode(sample_message(sequence, sequence=sequence)))
                        if args.batch == 1:
                            chunk.append(_text_frame(messages[0]))
                        else:
                            chunk.append(_text_frame(b"[" + b",".join(messages) + b"]"))
                    writer.write(b"".join(chunk))
                    await writer.drain()
            finally:
                drain_inbound.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        _ready(server.sockets[0].getsockname()[1])
        await server.serve_forever()


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


_KINDS = {
    "metricstream": _serve_metricstream,
    # metricstream as ``metricstream serve`` runs it (the attack benchmark)
    "serve": _serve_metricstream,
    "broadcast": _serve_broadcast,
    "fastapi": _serve_fastapi,
    "feed": _serve_feed,
}


def main(argv: list[str] | None = None) -> int:
    """Run one server until killed or until ``--lifetime`` runs out."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._servers")
    parser.add_argument("kind", choices=sorted(_KINDS))
    parser.add_argument("--rate", type=float, default=0.0, help="messages per second")
    parser.add_argument("--burst", type=int, default=1, help="messages per tick")
    parser.add_argument("--batch", type=int, default=1, help="feed: messages per frame")
    parser.add_argument("--pad", type=int, default=0, help="extra bytes per message")
    parser.add_argument("--prefill", type=int, default=0, help="messages logged at start")
    parser.add_argument("--max-buffer-bytes", type=int, default=512 * 1024)
    parser.add_argument("--lifetime", type=float, default=600.0)
    parser.add_argument("--redis", default=None, help="metricstream: share the stream via Redis")
    parser.add_argument(
        "--trace", action="store_true", help="metricstream: time each stage, answer `stages`"
    )
    parser.add_argument(
        "--heartbeat", type=float, default=None, help="heartbeat / ping interval (seconds)"
    )
    args = parser.parse_args(argv)

    async def run() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.lifetime):
                await _KINDS[args.kind](args)

    import uvloop

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
