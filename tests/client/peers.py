"""Real peers for the client tests: a small native-protocol server and a TCP proxy.

The server speaks protocol v1 as ``docs/protocol.md`` states it (init first,
sequences, resume from ``since``/``epoch``, heartbeat → pong, subscribe,
errors) over a real ``websockets`` server on loopback, with knobs to misbehave
on purpose. The proxy sits between client and server to freeze or cut the
link, which is how a dead peer looks from the client's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from metricstream.protocol import (
    InitPayload,
    MessageType,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    PongPayload,
    RequestUpdatePayload,
    SubscribePayload,
    WebSocketMessage,
    encode,
    encode_batch,
    make_message,
    now_ms,
)

__all__ = ["StreamServer", "TcpProxy", "metrics", "model", "request"]


def metrics(total_requests: int = 1) -> MetricsUpdatePayload:
    """A valid ``metrics_update`` payload."""
    return MetricsUpdatePayload(
        total_requests=total_requests,
        total_tokens=10 * total_requests,
        total_cost=0.5,
        avg_latency_ms=12.5,
        error_rate=1.0,
        streaming_percentage=50.0,
        requests_per_second=3.0,
        tokens_per_second=30.0,
        active_connections=1,
    )


def model(name: str, request_count: int = 1) -> ModelUpdatePayload:
    """A valid ``model_update`` payload for ``name``."""
    return ModelUpdatePayload(
        model=name,
        request_count=request_count,
        total_prompt_tokens=5,
        total_completion_tokens=5,
        total_tokens=10,
        total_latency_ms=20.0,
        error_count=0,
        avg_latency_ms=20.0,
        error_rate=0.0,
        total_cost=0.1,
        tokens_per_second=4.0,
    )


def request(request_id: str, model_name: str = "m") -> RequestUpdatePayload:
    """A valid ``request_update`` payload."""
    return RequestUpdatePayload(
        id=request_id,
        model=model_name,
        created=1.0,
        prompt_tokens=1,
        completion_tokens=2,
        total_tokens=3,
        latency_ms=4.0,
        streaming=False,
        status="success",
        cost=0.01,
    )


class _Peer:
    def __init__(self, ws: ServerConnection, types: set[str] | None, models: set[str] | None):
        self.ws = ws
        self.types = types
        self.models = models

    def wants(self, message: WebSocketMessage[Any]) -> bool:
        if self.types is not None and message.type not in self.types:
            return False
        model_name = getattr(message.data, "model", None)
        return self.models is None or model_name is None or model_name in self.models


def _names(value: str | None) -> set[str] | None:
    return None if value is None else {v for v in value.split(",") if v}


class StreamServer:
    """A native-protocol stream server on ``127.0.0.1`` (use ``async with``)."""

    def __init__(
        self,
        *,
        token: str | None = None,
        replay_limit: int = 1000,
        subprotocols: list[str] | None = None,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.token = token
        self.subprotocols = subprotocols
        self._port = port
        self.replay_limit = replay_limit
        self.epoch = "epoch-1"
        self.sequence = 0
        self.log: list[WebSocketMessage[Any]] = []
        #: Query parameters of every accepted handshake, in order.
        self.handshakes: list[dict[str, str]] = []
        #: Request headers of every accepted handshake, in order.
        self.request_headers: list[dict[str, str]] = []
        #: The subprotocol negotiated by every accepted handshake, in order.
        self.negotiated: list[str | None] = []
        #: Every frame the clients sent, as parsed JSON.
        self.received: list[Any] = []
        #: Misbehaviour knobs.
        self.send_init = True
        self.answer_heartbeats = True
        self.reject_status: int | None = None
        #: Claim ``resumed: true`` on the next init, whatever the client asked (once).
        self.claim_resume = False
        #: Block the event loop this long on the next heartbeat (once).
        self.stall_on_heartbeat = 0.0
        self.peers: set[_Peer] = set()
        self._lock = asyncio.Lock()
        self._server: Server | None = None
        self._epochs = itertools.count(2)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/metrics/stream"

    async def __aenter__(self) -> StreamServer:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            self._port,
            process_request=self._process_request,
            subprotocols=self.subprotocols,  # type: ignore[arg-type]
            ssl=self.ssl_context,
            compression=None,
            ping_interval=None,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.reject_status is not None:
            status = HTTPStatus(self.reject_status)
            return connection.respond(status, f"{status.phrase}\n")
        return None

    def new_epoch(self) -> None:
        """Start a new stream epoch: sequences restart, the replay log is emptied."""
        self.epoch = f"epoch-{next(self._epochs)}"
        self.sequence = 0
        self.log.clear()

    def record(self, mtype: MessageType, data: Any) -> WebSocketMessage[Any]:
        """Append a stream message to the log without sending it to anyone."""
        self.sequence += 1
        message = make_message(mtype, data, sequence=self.sequence)
        self.log.append(message)
        del self.log[: -self.replay_limit]
        return message

    def skip(self) -> None:
        """Burn one sequence number without logging a message (a server bug)."""
        self.sequence += 1

    async def publish(self, mtype: MessageType, data: Any) -> WebSocketMessage[Any]:
        """Publish one stream message to every connected peer that wants it."""
        async with self._lock:
            message = self.record(mtype, data)
            frame = encode(message)
            for peer in list(self.peers):
                if peer.wants(message):
                    with contextlib.suppress(ConnectionClosed):
                        await peer.ws.send(frame, text=True)
        return message

    async def send_raw(self, frame: bytes | str) -> None:
        """Send ``frame`` as a text frame to every connected peer, as is."""
        async with self._lock:
            for peer in list(self.peers):
                with contextlib.suppress(ConnectionClosed):
                    await peer.ws.send(frame, text=True)

    async def close_all(self, code: int, reason: str = "") -> None:
        """Close every connection with ``code``."""
        async with self._lock:
            peers = list(self.peers)
            self.peers.clear()
        for peer in peers:
            with contextlib.suppress(ConnectionClosed):
                await peer.ws.close(code, reason)

    def _authorized(self, ws: ServerConnection, query: dict[str, str]) -> bool:
        if self.token is None:
            return True
        header = ws.request.headers.get("Authorization") if ws.request else None
        return query.get("token") == self.token or header == f"Bearer {self.token}"

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = dict(parse_qsl(urlsplit(ws.request.path).query))
        self.handshakes.append(query)
        self.request_headers.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        self.negotiated.append(ws.subprotocol)
        if not self._authorized(ws, query):
            await ws.close(4001, "invalid token")
            return
        peer = _Peer(ws, _names(query.get("types")), _names(query.get("models")))
        async with self._lock:
            if self.send_init:
                await self._greet(peer, query)
            self.peers.add(peer)
        try:
            async for frame in ws:
                await self._answer(peer, frame)
        except ConnectionClosed:
            pass
        finally:
            self.peers.discard(peer)

    async def _greet(self, peer: _Peer, query: dict[str, str]) -> None:
        since = int(query["since"]) if query.get("since", "").isdigit() else None
        first = self.log[0].sequence if self.log else self.sequence + 1
        assert first is not None
        claimed, self.claim_resume = self.claim_resume, False
        if claimed:
            since = self.sequence if since is None else since
        resumable = (
            since is not None
            and (claimed or query.get("epoch") == self.epoch)
            and first - 1 <= since <= self.sequence
        )
        if resumable:
            assert since is not None
            init = make_message(
                MessageType.INIT,
                InitPayload(),
                sequence=since,
                metadata={"epoch": self.epoch, "resumed": True},
            )
            backlog = [m for m in self.log if m.sequence is not None and m.sequence > since]
        else:
            latest = next(
                (m.data for m in reversed(self.log) if m.type is MessageType.METRICS_UPDATE), None
            )
            init = make_message(
                MessageType.INIT,
                InitPayload(metrics=latest),
                sequence=self.sequence,
                metadata={"epoch": self.epoch, "resumed": False},
            )
            backlog = []
        await peer.ws.send(encode(init), text=True)
        for message in backlog:
            if peer.wants(message):
                await peer.ws.send(encode(message), text=True)

    async def _answer(self, peer: _Peer, frame: str | bytes) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            message = None
        self.received.append(message)
        kind = message.get("type") if isinstance(message, dict) else None
        data = message.get("data") if isinstance(message, dict) else None
        data = data if isinstance(data, dict) else {}
        reply: WebSocketMessage[Any] | None
        if kind in ("heartbeat", "ping"):
            if self.stall_on_heartbeat:
                stall, self.stall_on_heartbeat = self.stall_on_heartbeat, 0.0
                time.sleep(stall)  # noqa: ASYNC251 - blocking the loop is the point
            if not self.answer_heartbeats:
                return
            reply = make_message(
                MessageType.PONG,
                PongPayload(client_time=data.get("client_time"), server_time=now_ms()),
            )
        elif kind == "subscribe":
            types, models = data.get("types"), data.get("models")
            peer.types = set(types) if types is not None else None
            peer.models = set(models) if models is not None else None
            reply = make_message(
                MessageType.SUBSCRIBED, SubscribePayload(types=types, models=models)
            )
        elif kind == "unsubscribe":
            peer.types = peer.models = None
            reply = make_message(MessageType.SUBSCRIBED, SubscribePayload())
        else:
            reply = make_message(
                MessageType.ERROR, {"code": "unknown_type", "message": f"unknown type {kind!r}"}
            )
        with contextlib.suppress(ConnectionClosed):
            await peer.ws.send(encode(reply), text=True)

    async def send_batch(self, messages: list[WebSocketMessage[Any]]) -> None:
        """Send ``messages`` as one JSON-array frame to every peer."""
        await self.send_raw(encode_batch(messages))


class TcpProxy:
    """A loopback TCP proxy whose links can be frozen (a dead peer) or cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Event]] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, path: str = "/metrics/stream") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def freeze(self) -> None:
        """Stop forwarding on every current link, both ways, without closing it."""
        for _, _, flowing in self._links:
            flowing.clear()

    def cut(self) -> None:
        """Abort every current link (both sockets)."""
        for client, upstream, flowing in self._links:
            flowing.set()
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        flowing = asyncio.Event()
        flowing.set()
        self._links.append((writer, up_writer, flowing))
        await asyncio.gather(
            self._pump(reader, up_writer, flowing),
            self._pump(up_reader, writer, flowing),
            return_exceptions=True,
        )
        writer.transport.abort()
        up_writer.transport.abort()

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.transport.abort()
