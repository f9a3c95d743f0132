"""The proxy's upstream client against raw sockets that answer in every
framing HTTP/1.1 allows, reuse or drop connections, and misbehave."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from metricstream.proxy import UpstreamClient
from metricstream.proxy._upstream import (
    UpstreamBrokenError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from tests.support import scaled, wait_until

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class RawUpstream:
    """A loopback server: each request head goes to ``handler``, which writes
    the answer itself and says whether to keep the connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                head += await reader.readexactly(length)
                self.heads.append(head)
                if not await self.handler(head, reader, writer):
                    return
        finally:
            writer.close()


@asynccontextmanager
async def raw_upstream(
    handler: Handler, tls: ssl.SSLContext | None = None
) -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream(handler)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0, ssl=tls)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()


async def fetch(
    client: UpstreamClient, port: int, method: bytes = b"POST", body: bytes = b"{}"
) -> tuple[int, bytes]:
    response = await client.send(
        method, f"http://127.0.0.1:{port}/v1", b"/x", [(b"X-A", b"1")], body
    )
    try:
        data = b"".join([piece async for piece in response.aiter_raw()])
    finally:
        await response.aclose()
    return response.status_code, data


async def test_keep_alive_reuses_one_connection_and_writes_only_given_headers() -> None:
    async def answer(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    async with raw_upstream(answer) as upstream, UpstreamClient() as client:
        for _ in range(3):
            assert await fetch(client, upstream.port) == (200, b"ok")
        assert upstream.connections == 1
        assert await fetch(client, upstream.port, b"POST", b"") == (200, b"ok")
    # The base URL's /v1 prefix is kept (the proxy strips it beforehand).
    assert upstream.heads[0] == (
        b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n{}"
        % upstream.port
    )
    assert b"Content-Length: 0\r\n" in upstream.heads[3]


async def test_an_idle_connection_the_upstream_closed_is_not_reused() -> None:
    served = asyncio.Event()

    async def answer(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        served.set()
        return False  # close after each answer, without saying so

    async with raw_upstream(answer) as upstream, UpstreamClient() as client:
        assert await fetch(client, upstream.port) == (200, b"ok")
        async with asyncio.timeout(scaled(5)):
            await served.wait()
        # The close reaches the client's loop as a callback: let it run.
        await wait_until(
            lambda: not client._idle.get(next(iter(client._idle))), 5, "the idle connection to drop"
        )
        assert await fetch(client, upstream.port) == (200, b"ok")
        assert upstream.connections == 2


@pytest.mark.parametrize(
    ("answer", "method", "expected"),
    [
        # Delimited by the close of the connection.
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", b"POST", b"until the end"),
        # Chunked, with an interim answer first.
        (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"POST",
            b"abcde",
        ),
        # An answer to HEAD has no body, whatever Content-Length says.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"HEAD", b""),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"POST", b""),
    ],
)
async def test_every_framing_ends_where_it_should(
    answer: bytes, method: bytes, expected: bytes
) -> None:
    async def handler(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer)
        await writer.drain()
        return b"Connection: close" not in answer

    async with raw_upstream(handler) as upstream, UpstreamClient() as client:
        async with asyncio.timeout(scaled(5)):
            status, body = await fetch(client, upstream.port, method)
    assert body == expected
    assert status in (200, 204)


async def test_failures_before_and_after_the_head() -> None:
    hold = asyncio.Event()

    async def handler(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        kind = head.split(b" ")[1]
        if kind == b"/v1/garbage":
            w.write(b"SMTP ready\r\n\r\n")
        elif kind == b"/v1/hangup":
            pass  # closes without a word
        elif kind == b"/v1/cut":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        elif kind == b"/v1/silent":
            await hold.wait()
        await w.drain()
        return False

    async with raw_upstream(handler) as upstream, UpstreamClient(read_timeout=0.3) as client:
        base = f"http://127.0.0.1:{upstream.port}"
        for path in (b"/v1/garbage", b"/v1/hangup"):
            with pytest.raises(UpstreamUnreachableError):
                await client.send(b"POST", base, path, [], b"")
        with pytest.raises(UpstreamTimeoutError):
            await client.send(b"POST", base, b"/v1/silent", [], b"")
        hold.set()
        response = await client.send(b"POST", base, b"/v1/cut", [], b"")
        with pytest.raises(UpstreamBrokenError):
            async for _ in response.aiter_raw():
                pass
        await response.aclose()
    down = UpstreamClient(connect_timeout=1)
    with pytest.raises(UpstreamUnreachableError):
        await down.send(b"GET", f"http://127.0.0.1:{upstream.port}", b"/", [], b"")
    await down.aclose()


async def test_an_https_upstream_is_verified_and_spoken_to_over_tls() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)

    async def answer(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure")
        return True

    async with raw_upstream(answer, server_context) as upstream:
        base = f"https://localhost:{upstream.port}"
        async with UpstreamClient(ssl_context=trusting) as client:
            response = await client.send(b"GET", base, b"/v1/models", [], b"")
            assert b"".join([p async for p in response.aiter_raw()]) == b"secure"
            await response.aclose()
        assert upstream.heads[0].startswith(
            b"GET /v1/models HTTP/1.1\r\nHost: localhost:%d\r\n" % upstream.port
        )
        # The default context trusts the public CAs only: this one is refused.
        async with UpstreamClient() as client:
            with pytest.raises(UpstreamUnreachableError):
                await client.send(b"GET", base, b"/v1/models", [], b"")


async def test_a_piece_late_beyond_the_read_timeout_breaks_the_response() -> None:
    hold = asyncio.Event()

    async def stall(head: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        await writer.drain()
        await hold.wait()
        return False

    async with raw_upstream(stall) as upstream, UpstreamClient(read_timeout=0.3) as client:
        response = await client.send(b"POST", f"http://127.0.0.1:{upstream.port}", b"/", [], b"")
        pieces = response.aiter_raw()
        assert await anext(pieces) == b"ab"
        with pytest.raises(UpstreamBrokenError, match=r"within 0\.3 s"):
            await anext(pieces)
        await response.aclose()
        hold.set()


async def test_a_request_the_upstream_does_not_read_times_out_on_writing() -> None:
    hold = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()
        writer.close()

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with UpstreamClient(write_timeout=0.3) as client:
            # More than the socket buffers on both ends take.
            body = b"x" * (16 << 20)
            with pytest.raises(UpstreamTimeoutError, match="not taken"):
                await client.send(b"POST", f"http://127.0.0.1:{port}", b"/", [], body)
    finally:
        hold.set()
        server.close()
