"""A peer that completes the handshake and never reads.

It must not delay anyone else, must not make the server hold more than its
per-client bound, and must end up closed with 4008 (slow consumer).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct

import pytest

from metricstream.server import MetricsHub, ServerSettings
from tests.server.conftest import open_client, recv, request, running
from tests.support import scaled, wait_until

BOUND = 64 * 1024
# asyncio's (and uvloop's) default high-water mark of a transport's write buffer.
TRANSPORT_HIGH_WATER = 64 * 1024


def raw_handshake(port: int) -> socket.socket:
    """Open a WebSocket by hand on a socket with a tiny receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(scaled(10))
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /metrics/stream HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_close_code(sock: socket.socket) -> int:
    """Read everything the server sent until its close frame; return the code."""
    buf = b""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def need(n: int) -> None:
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(1 << 16)
            assert chunk, "connection ended without a close frame"
            buf += chunk

    while True:
        need(2)
        opcode = buf[0] & 0x0F
        length = buf[1] & 0x7F
        offset = 2
        if length == 126:
            need(4)
            length = struct.unpack("!H", buf[2:4])[0]
            offset = 4
        elif length == 127:
            need(10)
            length = struct.unpack("!Q", buf[2:10])[0]
            offset = 10
        need(offset + length)
        payload = buf[offset : offset + length]
        buf = buf[offset + length :]
        if opcode == 0x8:
            code: int = struct.unpack("!H", payload[:2])[0]
            return code


@pytest.mark.parametrize("direct", [True, False], ids=["direct-write", "asgi"])
async def test_stalled_reader_is_isolated_bounded_and_closed_with_4008(direct: bool) -> None:
    hub = MetricsHub(heartbeat_interval=None, max_buffer_bytes=BOUND)
    settings = ServerSettings(close_timeout=scaled(30), direct_write=direct)
    async with running(hub, settings) as server:
        stalled_sock = await asyncio.to_thread(raw_handshake, server.port)
        try:
            await wait_until(lambda: hub.connection_count == 1, what="the raw client attached")
            (stalled,) = hub.subscribers
            assert stalled.transport is not None, "uvicorn's transport was found"
            assert (stalled.direct is not None) == direct
            async with open_client(server.url()) as healthy:
                assert (await recv(healthy))["type"] == "init"
                received: list[int] = []

                async def read_healthy() -> None:
                    while True:
                        received.append((await recv(healthy, 30))["sequence"])

                reader = asyncio.get_running_loop().create_task(read_healthy())
                step = 20
                note = "x" * 2000
                highest = 0
                while hub.stats.evictions == 0:
                    for _ in range(step):
                        hub.publish(request(str(hub.sequence), note=note))
                    # The healthy client gets every message while the other is stuck.
                    await wait_until(lambda: len(received) == hub.sequence, 10, "healthy delivery")
                    highest = max(highest, stalled.buffered_bytes)
                    assert highest <= BOUND + TRANSPORT_HIGH_WATER + step * 2300
                    assert hub.sequence < 20_000, "the stalled client was never evicted"
                assert received == list(range(1, hub.sequence + 1))
                assert not stalled.open
                assert stalled.buffered_bytes <= TRANSPORT_HIGH_WATER + step * 2300
                # Still serving: more messages reach the healthy client.
                hub.publish(request("after"))
                await wait_until(lambda: len(received) == hub.sequence, 10, "delivery after")
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            code = await asyncio.to_thread(read_close_code, stalled_sock)
            assert code == 4008
            assert hub.stats.evictions == 1
            if not direct:
                # Through ASGI the stalled client's send suspended and was
                # parked; direct writes count the transport's buffer against
                # the bound and may hit it before the transport even pauses.
                assert hub.stats.send_suspensions >= 1
            await wait_until(lambda: hub.connection_count == 0, 10, "the stalled client detached")
        finally:
            stalled_sock.close()


async def test_a_peer_that_never_reads_is_cut_off_after_the_close_timeout() -> None:
    hub = MetricsHub(heartbeat_interval=None, max_buffer_bytes=BOUND)
    settings = ServerSettings(close_timeout=0.2)
    async with running(hub, settings) as server:
        sock = await asyncio.to_thread(raw_handshake, server.port)
        try:
            await wait_until(lambda: hub.connection_count == 1, what="the raw client attached")
            (stalled,) = hub.subscribers
            while hub.stats.evictions == 0:
                for _ in range(20):
                    hub.publish(request(str(hub.sequence), note="x" * 2000))
                await asyncio.sleep(0)
                assert hub.sequence < 20_000, "the stalled client was never evicted"
            # Not even the close frame can be written: the server lets go of
            # the connection (and everything buffered for it) by itself.
            await wait_until(lambda: hub.connection_count == 0, 10, "the stalled client dropped")
            transport = stalled.transport
            assert transport is not None
            await wait_until(transport.is_closing, 10, "the transport closed")
        finally:
            sock.close()


def read_stream(sock: socket.socket, last: int) -> list[dict[str, object]]:
    """Read frames until the message with sequence ``last``; return them all."""
    import json

    buf = b""
    out: list[dict[str, object]] = []

    def need(n: int) -> None:
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(1 << 16)
            assert chunk, "connection ended early"
            buf += chunk

    while not out or out[-1].get("sequence") != last:
        need(2)
        opcode, length, offset = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if length == 126:
            need(4)
            length, offset = struct.unpack("!H", buf[2:4])[0], 4
        elif length == 127:
            need(10)
            length, offset = struct.unpack("!Q", buf[2:10])[0], 10
        need(offset + length)
        payload, buf = buf[offset : offset + length], buf[offset + length :]
        assert opcode == 0x1, f"unexpected opcode {opcode}"
        out.append(json.loads(payload))
    return out


@pytest.mark.parametrize("direct", [True, False], ids=["direct-write", "asgi"])
async def test_a_reader_that_pauses_then_catches_up_loses_nothing(direct: bool) -> None:
    hub = MetricsHub(heartbeat_interval=None, max_buffer_bytes=16 * 1024 * 1024)
    settings = ServerSettings(direct_write=direct)
    async with running(hub, settings) as server:
        sock = await asyncio.to_thread(raw_handshake, server.port)
        try:
            await wait_until(lambda: hub.connection_count == 1, what="the raw client attached")
            (sub,) = hub.subscribers
            while hub.stats.send_suspensions == 0:
                for _ in range(20):
                    hub.publish(request(str(hub.sequence), note="y" * 2000))
                await asyncio.sleep(0)
                assert hub.sequence < 20_000, "the transport never paused"
            # Paused, not evicted: more keeps arriving in the outbox.
            for _ in range(50):
                hub.publish(request(str(hub.sequence), note="y" * 2000))
            assert sub.open
            messages = await asyncio.to_thread(read_stream, sock, hub.sequence)
            assert messages[0]["type"] == "init"
            assert [m["sequence"] for m in messages[1:]] == list(range(1, hub.sequence + 1))
            # Drained: back to writing at once.
            await wait_until(lambda: sub.buffered_bytes == 0, 10, "the outbox drained")
            hub.publish(request("after"))
            (after,) = await asyncio.to_thread(read_stream, sock, hub.sequence)
            assert after["sequence"] == hub.sequence
            assert hub.stats.evictions == 0
        finally:
            sock.close()
