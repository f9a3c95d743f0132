"""A minimal WebSocket client protocol for load generation.

A load generator must never be the bottleneck, so the receive path here is a
plain ``asyncio.Protocol`` that splits frames with a few slicing operations
and hands each payload to a callback: no tasks, no queues, no per-frame
objects. It speaks only what the benchmarks need: the opening handshake,
unfragmented text/binary frames from the server, close frames, and pongs to
the server's pings (so keepalive never drops a benchmark client).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable
from typing import cast

__all__ = ["WSConnection", "connect"]

#: ``on_message(connection, payload, received_at)``; ``received_at`` is ``time.time()``.
OnMessage = Callable[["WSConnection", bytes, float], None]


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask), for the rare control frames we send."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    if len(payload) >= 126:
        raise ValueError("control frame payload too long")
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


class WSConnection(asyncio.Protocol):
    """One client connection; frames arrive through ``on_message``."""

    def __init__(self, on_message: OnMessage, *, tag: object = None) -> None:
        self.on_message = on_message
        self.tag = tag
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.frames = 0
        self._buffer = bytearray()
        self._open = False

    # asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; the handshake request is written by :func:`connect`."""
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Parse the handshake answer, then every complete frame in the buffer."""
        buffer = self._buffer
        buffer += data
        if not self._open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            del buffer[: end + 4]
            if b" 101 " not in status + b" ":
                if not self.handshake.done():
                    self.handshake.set_exception(ConnectionError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.abort()
                return
            self._open = True
            if not self.handshake.done():
                self.handshake.set_result(None)
        self._parse(time.time())

    def connection_lost(self, exc: Exception | None) -> None:
        """Resolve the waiters."""
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # frames -------------------------------------------------------------------

    def _parse(self, now: float) -> None:
        buffer = self._buffer
        size = len(buffer)
        pos = 0
        while size - pos >= 2:
            first = buffer[pos]
            length = buffer[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                header = 10
            end = pos + header + length
            if end > size:
                break
            payload = bytes(buffer[pos + header : end])
            pos = end
            opcode = first & 0x0F
            if opcode in (1, 2):
                self.frames += 1
                self.on_message(self, payload, now)
            elif opcode == 9:
                self._send(_masked_frame(0xA, payload))
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._send(_masked_frame(0x8, payload[:2]))
                if self.transport is not None:
                    self.transport.close()
        if pos:
            del buffer[:pos]

    def _send(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        """Stop reading from the socket (a stalled consumer)."""
        if self.transport is not None:
            self.transport.pause_reading()


async def connect(
    host: str,
    port: int,
    path: str,
    on_message: OnMessage,
    *,
    rcvbuf: int | None = None,
    tag: object = None,
    open_timeout: float = 10.0,
) -> WSConnection:
    """Open a WebSocket to ``ws://host:port{path}`` (no extensions offered)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    protocol: WSConnection | None = None
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf is not None:
            # Before connect, so the advertised window starts small too.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        async with asyncio.timeout(open_timeout):
            await loop.sock_connect(sock, (host, port))
            transport, protocol = await loop.create_connection(
                lambda: WSConnection(on_message, tag=tag), sock=sock
            )
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            )
            transport.write(request.encode())
            await protocol.handshake
    except BaseException:
        if protocol is not None:
            protocol.abort()
        sock.close()
        raise
    return protocol
