"""Fixtures of the proxy tests: a scripted stand-in upstream on a raw socket
that records every byte it sent, and the proxy itself on a real uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from metricstream.collector import MetricsCollector
from metricstream.proxy import create_proxy_app, upstream_client
from metricstream.server import MetricsHub, StreamServer, uvicorn_config
from tests.support import scaled, wait_until


@dataclass
class Exchange:
    """One request the stand-in received, and everything it sent back."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    sent_body: bytearray = field(default_factory=bytearray)
    sent_digest: Any = field(default_factory=hashlib.sha256)
    sent_length: int = 0
    first_sent: asyncio.Event = field(default_factory=asyncio.Event)
    last_sent: asyncio.Event = field(default_factory=asyncio.Event)
    closed_by_peer: asyncio.Event = field(default_factory=asyncio.Event)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Reply:
    """What the stand-in answers: status, headers, and the body in pieces.

    ``pieces`` may hold awaitables (for example ``event.wait()``): the
    stand-in waits on them between pieces, which lets a test hold the rest of
    a stream back. ``chunked`` frames the body with Transfer-Encoding:
    chunked; otherwise Content-Length is sent.
    """

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    pieces: list[bytes | Callable[[], Awaitable[Any]]] = field(default_factory=list)
    chunked: bool = False
    length: int | None = None  # Content-Length, when the pieces are produced lazily
    hang_up_after: bool = False  # close the connection before the body is complete
    keep_body: bool = True  # keep a copy of what was sent (else only its digest and length)


Handler = Callable[[Exchange], Awaitable[Reply]]


class StandIn:
    """An HTTP/1.1 upstream on loopback answering from ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.exchanges: list[Exchange] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.received = asyncio.Event()
        self.writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> StandIn:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(scaled(5)):
                await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        first = b""
        try:
            while True:
                try:
                    head = first + await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [
                    (k, v.strip())
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                ]
                length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
                body = await reader.readexactly(length) if length else b""
                exchange = Exchange(method, target, headers, body)
                self.exchanges.append(exchange)
                self.received.set()
                reply = await self.handler(exchange)
                watch = await self._answer(reader, writer, exchange, reply)
                if watch is None:
                    return
                # The watch read the next request's first byte, or the end.
                first = await watch
                if not first:
                    return
        except ConnectionError:
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        exchange: Exchange,
        reply: Reply,
    ) -> asyncio.Future[bytes] | None:
        """Send ``reply``; the watch on the connection, or None once it is closed."""
        head = [f"HTTP/1.1 {reply.status} X"]
        head += [f"{k}: {v}" for k, v in reply.headers]
        if reply.chunked:
            head.append("Transfer-Encoding: chunked")
        else:
            length = reply.length
            if length is None:
                length = sum(len(p) for p in reply.pieces if isinstance(p, bytes))
            head.append(f"Content-Length: {length}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        watch = asyncio.ensure_future(reader.read(1))

        def peer_gone(task: asyncio.Future[bytes]) -> None:
            if not task.cancelled() and not task.exception() and task.result() == b"":
                exchange.closed_by_peer.set()

        watch.add_done_callback(peer_gone)
        try:
            for piece in reply.pieces:
                if not isinstance(piece, bytes):
                    await piece()
                    continue
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if reply.chunked else piece)
                await writer.drain()
                if reply.keep_body:
                    exchange.sent_body += piece
                exchange.sent_digest.update(piece)
                exchange.sent_length += len(piece)
                exchange.first_sent.set()
            if reply.hang_up_after:
                watch.cancel()
                return None
            if reply.chunked:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            exchange.closed_by_peer.set()
            watch.cancel()
            return None
        finally:
            exchange.last_sent.set()
        return watch


@dataclass
class Proxy:
    """The proxy running in the test's loop."""

    port: int
    hub: MetricsHub
    collector: MetricsCollector

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/metrics/stream"


@asynccontextmanager
async def running_proxy(
    upstream: str | None, *, routes: dict[str, str] | None = None, **client_options: Any
) -> AsyncIterator[Proxy]:
    """The proxy in front of ``upstream`` on an ephemeral port, until the block ends."""
    hub = MetricsHub(heartbeat_interval=None)
    collector = MetricsCollector(hub, interval=0.1, system_stats=False)
    client = upstream_client(**client_options)
    app = create_proxy_app(upstream, hub=hub, collector=collector, client=client, routes=routes)
    server = StreamServer(
        uvicorn_config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="critical",
            server_header=False,
            date_header=False,
        ),
        hub,
    )
    async with client, collector:
        task = asyncio.get_running_loop().create_task(server.serve())
        # uvicorn offers a flag, not an event, for "listening".
        await wait_until(lambda: server.started or task.done(), 10, "uvicorn to listen")
        if task.done():
            task.result()
        port = server.bound_port
        assert port is not None
        try:
            yield Proxy(port, hub, collector)
        finally:
            server.should_exit = True
            async with asyncio.timeout(scaled(30)):
                await task


class StreamReader:
    """A WebSocket client on the proxy's metrics stream, keeping its messages."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []

    def of_type(self, mtype: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == mtype]

    async def until(self, mtype: str, count: int, seconds: float = 10.0) -> list[dict[str, Any]]:
        """Read until ``count`` messages of ``mtype`` arrived; return them."""
        async with asyncio.timeout(scaled(seconds)):
            while len(self.of_type(mtype)) < count:
                frame = await self.ws.recv()
                self.messages.append(json.loads(frame))
        return self.of_type(mtype)


@asynccontextmanager
async def watching(proxy: Proxy) -> AsyncIterator[StreamReader]:
    async with connect(proxy.stream_url(), compression=None, open_timeout=scaled(10)) as ws:
        yield StreamReader(ws)


@pytest.fixture
def sse() -> Callable[..., bytes]:
    return sse_event


def sse_event(
    content: str | None = None,
    *,
    usage: dict[str, int] | None = None,
    finish: str | None = None,
    model: str = "stand-in-model",
) -> bytes:
    """One ``chat.completion.chunk`` event as an OpenAI server writes it."""
    choices = (
        []
        if content is None
        else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    )
    chunk: dict[str, Any] = {
        "id": "chatcmpl-standin",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"
