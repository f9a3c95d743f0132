"""Hostile clients, each bounded in time and count, and one healthy client.

Used by the security tests (``tests/security``) and by the ``attacks``
benchmark. Every attacker talks raw TCP, so it can do what a WebSocket
library never would: never read, trickle a request line, flood control
frames. Attackers bind a source address of their own (``127.0.0.2`` and up:
all of ``127.0.0.0/8`` is loopback on Linux), so a per-address limit they hit
does not hit the healthy client on ``127.0.0.1``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ATTACKS",
    "Healthy",
    "RawSocket",
    "big_subscribe",
    "control_frame",
    "header_flood",
    "ping_flood",
    "slowloris",
    "token_guessing",
    "url_trickle",
]

ATTACKER = "127.0.0.2"


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A masked (client) frame with ``opcode``; ``payload`` up to 125 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        header = bytes((0x80 | opcode, 0x80 | len(payload)))
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    return header + mask + masked


def upgrade_request(port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of a WebSocket handshake request."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawSocket:
    """A non-blocking TCP socket from ``source``, with a small receive buffer
    when asked (so that a peer that does not read stops taking data soon)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(
        cls, port: int, *, source: str = ATTACKER, rcvbuf: int | None = None
    ) -> RawSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((source, 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    def try_send(self, data: bytes) -> int:
        """Send what the kernel takes now (never waits); -1 once the peer is gone."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            return -1

    async def recv(self, size: int = 65536) -> bytes:
        """Up to ``size`` bytes; ``b""`` at EOF or when the connection was reset."""
        try:
            return await self.loop.sock_recv(self.sock, size)
        except OSError:
            return b""

    async def read_response(self, wait: float) -> tuple[int, bytes]:
        """The HTTP status and head of the answer (0 when none came)."""
        data = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while b"\r\n\r\n" not in data:
                    chunk = await self.recv()
                    if not chunk:
                        break
                    data += chunk
        if not data.startswith(b"HTTP/1.1 "):
            return 0, data
        return int(data[9:12]), data

    async def closed_within(self, wait: float) -> bool:
        """Whether the server closes (EOF or reset) within ``wait``, reading
        and discarding what it sends meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while await self.recv():
                    pass
                return True
        return False

    def close(self) -> None:
        self.sock.close()


async def ping_flood(
    port: int, path: str, *, sockets: int, seconds: float, source: str = ATTACKER
) -> list[float | None]:
    """Sockets that complete a handshake, then send PINGs and never read.

    Returns, per socket, the seconds until the server cut it (``None``: not cut
    within ``seconds``).
    """

    async def one() -> float | None:
        raw = await RawSocket.open(port, source=source, rcvbuf=4096)
        try:
            await raw.send(upgrade_request(port, path))
            ping = control_frame(0x9, b"x" * 125) * 64
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                if raw.try_send(ping) < 0:
                    return time.monotonic() - started
                await asyncio.sleep(0.001)
            return None
        finally:
            raw.close()

    return list(await asyncio.gather(*(one() for _ in range(sockets))))


async def url_trickle(port: int, *, seconds: float, chunk: int = 16384) -> tuple[int, int]:
    """Send an endless request line; returns (status answered, bytes sent)."""
    raw = await RawSocket.open(port)
    sent = 0
    try:
        await raw.send(b"GET /metrics/stream?models=")
        reader = asyncio.ensure_future(raw.read_response(seconds))
        started = time.monotonic()
        while not reader.done() and time.monotonic() - started < seconds:
            n = raw.try_send(b"a" * chunk)
            if n < 0:
                break
            sent += n
            await asyncio.sleep(0.001)
        status, _ = await reader
        return status, sent
    finally:
        raw.close()


async def header_flood(port: int, *, headers: int, wait: float) -> int:
    """A request with ``headers`` headers; the status answered."""
    raw = await RawSocket.open(port)
    try:
        extra = {f"X-Filler-{i}": "y" * 40 for i in range(headers)}
        with contextlib.suppress(OSError):
            await raw.send(upgrade_request(port, "/metrics/stream", extra))
        status, _ = await raw.read_response(wait)
        return status
    finally:
        raw.close()


async def slowloris(
    port: int, *, sockets: int, seconds: float, source: str = ATTACKER
) -> list[RawSocket]:
    """Open ``sockets`` sockets that start a request and never finish it.

    The caller closes them; ``seconds`` bounds only the opening.
    """
    opened: list[RawSocket] = []
    deadline = time.monotonic() + seconds
    for _ in range(sockets):
        if time.monotonic() > deadline:
            break
        try:
            raw = await asyncio.wait_for(RawSocket.open(port, source=source), 2.0)
        except (OSError, TimeoutError):
            continue
        raw.try_send(b"GET /metrics/stream HTTP/1.1\r\nHost: x\r\n")
        opened.append(raw)
    return opened


async def big_subscribe(
    port: int, path: str, *, models: int, seconds: float, rate: float = 10.0
) -> list[str]:
    """Send a ``subscribe`` with ``models`` model names ``rate`` times a second
    (under the default message rate) for ``seconds``, or until the server
    closes the connection; the ``type`` of each answer, in order."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    answers: list[str] = []
    message = json.dumps(
        {"type": "subscribe", "data": {"models": [f"model-{i:06d}" for i in range(models)]}}
    )

    async def read(ws: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                answers.append(json.loads(frame)["type"])  # noqa: PERF401 - kept as they arrive

    async with connect(
        f"ws://127.0.0.1:{port}{path}", compression=None, local_addr=(ATTACKER, 0)
    ) as ws:
        reader = asyncio.ensure_future(read(ws))
        deadline = time.monotonic() + seconds
        with contextlib.suppress(ConnectionClosed):
            while time.monotonic() < deadline and not reader.done():
                await ws.send(message)
                await asyncio.sleep(1 / rate)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return answers


async def token_guessing(port: int, path: str, *, attempts: int, wait: float) -> list[int]:
    """Handshakes with a wrong token; the HTTP status of each (101 or a refusal)."""
    statuses: list[int] = []
    for i in range(attempts):
        raw = await RawSocket.open(port)
        try:
            await raw.send(upgrade_request(port, f"{path}?token=guess-{i}"))
            status, _ = await raw.read_response(wait)
            statuses.append(status)
        finally:
            raw.close()
    return statuses


@dataclass
class Healthy:
    """A well-behaved stream client: sequence continuity and latency.

    Latency is the receive time minus the message's ``timestamp`` (both on
    this machine's clock).
    """

    url: str
    sequences: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    close_code: int | None = None
    error: str | None = None
    #: Set once the first stream message arrived.
    receiving: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        try:
            async with connect(self.url, compression=None, open_timeout=10) as ws:
                reader = asyncio.ensure_future(self._read(ws))
                waiter = asyncio.ensure_future(stop.wait())
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await reader
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
        except Exception as exc:  # reported, asserted on by the caller
            self.error = repr(exc)
        finally:
            self.receiving.set()

    async def _read(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for frame in ws:
                now = time.time() * 1000
                message = json.loads(frame)
                sequence = message.get("sequence")
                if sequence is None:
                    continue
                self.sequences.append(sequence)
                self.receiving.set()
                self.latencies_ms.append(now - message.get("timestamp", now))
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None

    @property
    def gaps(self) -> int:
        """Missing sequence numbers between the first and the last received."""
        seqs = self.sequences
        return sum(b - a - 1 for a, b in itertools.pairwise(seqs) if b > a + 1)

    @property
    def p99_ms(self) -> float:
        values = sorted(self.latencies_ms)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(len(values) * 0.99))]


ATTACKS = ("ping_flood", "url_trickle", "slowloris", "big_subscribe", "token_guessing")
