"""UpstreamClient: the proxy's pooled HTTP/1.1 client, on asyncio and httptools.

The proxy sends every request upstream and relays the answer's bytes; all it
needs from a client is a connection pool, HTTP/1.1 framing and timeouts.
httpx does this (and much more) through httpcore and h11, and under load
their bookkeeping was most of the proxy's time: every request and every
response close scanned the whole pool (a ``poll()`` per connection, and an
idle count inside that loop, quadratic in the pool size), and h11 parsed each
chunk of a streamed body as a Python event. Here:

- the pool is a free list per upstream: taking or returning a connection is
  one list operation; a connection the upstream closes while idle leaves the
  list when the event loop reports it (``connection_lost``), so none is
  polled before reuse;
- responses are parsed by httptools (llhttp, in C), which hands over the
  decoded body of each socket read at once: a relay reads whatever has
  arrived as one piece, so pieces that arrive together leave in one write;
- every wait is bounded: connecting (``connect_timeout``), each piece of the
  response (``read_timeout``), the request's write (``write_timeout``);
- back-pressure: once ``_HIGH_WATER`` bytes of body wait for the relay,
  reading from the upstream pauses until the relay takes them.

Requests are written as given: the caller's headers in their order, then
``Host`` and ``Content-Length`` set by this hop (placed as httpx places them),
and nothing else: no ``User-Agent``, ``Accept`` or ``Accept-Encoding``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final, cast

import httptools
import httpx

__all__ = [
    "UpstreamBrokenError",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeoutError",
    "UpstreamUnreachableError",
]

#: Bytes of response body buffered for a relay that has not taken them yet,
#: past which reading from the upstream pauses (and resumes when it has).
_HIGH_WATER: Final = 256 * 1024
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})


class UpstreamError(Exception):
    """The upstream exchange failed."""


class UpstreamUnreachableError(UpstreamError):
    """No connection, or it closed (or spoke no HTTP) before a response head."""


class UpstreamTimeoutError(UpstreamError):
    """Connecting, writing the request or waiting for a piece of the response took too long."""


class UpstreamBrokenError(UpstreamError):
    """The response was cut off (or turned invalid) after its head."""


class _StopAfterHeadError(Exception):
    """Stops the parser after the head of an answer to HEAD (it has no body)."""


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a base URL's requests go: the pool key and what the request line needs."""

    scheme: str
    host: str
    port: int
    host_header: bytes
    prefix: bytes

    @classmethod
    def parse(cls, base: str) -> _Origin:
        url = httpx.URL(base)
        default = 443 if url.scheme == "https" else 80
        return cls(
            url.scheme,
            url.host,
            url.port or default,
            url.netloc,
            url.raw_path.rstrip(b"/") if url.raw_path != b"/" else b"",
        )


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream; one exchange at a time."""

    def __init__(self, origin: _Origin, lost: Callable[[_Connection], None]) -> None:
        self.origin = origin
        self._lost = lost
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.active = False  # an exchange is in progress
        self.reused = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._head_only = False
        self._informational = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self._framed = False  # Content-Length or chunked: the end is known without a close

    # --- one exchange -----------------------------------------------------

    def begin(self, head_only: bool) -> None:
        """Get ready for the response to a request about to be written."""
        self.active = True
        self._head_only = head_only
        self._informational = False
        self.status = 0
        self.headers = []
        self.head_done = False
        self.body.clear()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error = None
        self._framed = False

    def take_body(self) -> bytes:
        """Every body byte received so far, in one piece; resumes reading."""
        body = self.body
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self.buffered = 0
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def wait(self, limit: float | None) -> None:
        """Until more arrives, the exchange ends, or ``limit`` seconds pass (TimeoutError)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # A timer rather than asyncio.timeout(): this runs once per piece.
        timer = None if limit is None else loop.call_later(limit, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def drain(self, limit: float | None) -> None:
        """Until the transport takes more writes, the connection ends, or
        ``limit`` seconds pass (TimeoutError)."""
        if self._drain is None or self.closed:
            return
        loop = asyncio.get_running_loop()
        timer = None if limit is None else loop.call_later(limit, _expire, self._drain)
        try:
            await self._drain
        finally:
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        """Close the socket (the exchange, if any, is abandoned)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:
            # Bytes nobody asked for: this connection cannot be trusted again.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _StopAfterHeadError):
                self._fail(f"invalid response: {exc}")
        except httptools.HttpParserError as exc:
            self._fail(f"invalid response: {exc}")
        if self.buffered > _HIGH_WATER and not self._reading_paused and not self.closed:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.active and not self.complete and self.error is None:
            if self.head_done and not self._framed:
                # A body delimited by the connection's close ends with it.
                self.complete = True
            elif self.head_done:
                self.error = UpstreamBrokenError("the upstream closed the connection mid-response")
            else:
                self.error = UpstreamUnreachableError(
                    "the upstream closed the connection before answering"
                )
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if not self.active:
            self._lost(self)  # an idle connection the upstream closed leaves the pool now

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def _fail(self, message: str) -> None:
        self.error = (UpstreamBrokenError if self.head_done else UpstreamUnreachableError)(message)
        self.close()

    # --- httptools callbacks ------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (103 Early Hints...): the final one follows.
            self._informational = True
            self.headers = []
            return
        self.status = status
        self.keep_alive = bool(self._parser.should_keep_alive())
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                self._framed = True
        if status in (204, 304):
            self._framed = True
        self.head_done = True
        if self._head_only:
            # An answer to HEAD has no body whatever its headers say, which
            # the parser cannot be told: stop it, and close the connection
            # rather than reuse a parser in an unknown state.
            self.complete = True
            self.keep_alive = False
            raise _StopAfterHeadError

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class UpstreamResponse:
    """A response whose head has arrived; its body streams through :meth:`aiter_raw`.

    ``headers`` are the raw ``(name, value)`` pairs as the upstream sent
    them. Always :meth:`aclose` it: that returns the connection to the pool
    (a complete exchange) or closes it (anything else).
    """

    __slots__ = ("_client", "_connection", "_released", "headers", "status_code")

    def __init__(self, client: UpstreamClient, connection: _Connection) -> None:
        self._client = client
        self._connection = connection
        self._released = False
        self.status_code = connection.status
        self.headers = connection.headers

    def header(self, name: str) -> str:
        """The value of header ``name`` (case-insensitive; repeated values joined), or ``""``."""
        key = name.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in self.headers if k.lower() == key]
        return ", ".join(values)

    @property
    def finished(self) -> bool:
        """Whether the whole body has arrived and been taken: no piece follows."""
        connection = self._connection
        return connection.complete and not connection.body

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives, undecoded (content encoding kept), never empty pieces.

        Each piece is everything received since the previous one.
        :class:`UpstreamBrokenError` if the response is cut off or a piece takes
        longer than the read timeout.
        """
        connection = self._connection
        timeout = self._client.read_timeout
        while True:
            if connection.body:
                yield connection.take_body()
                continue
            if connection.complete:
                return
            if connection.error is not None:
                raise UpstreamBrokenError(str(connection.error))
            try:
                await connection.wait(timeout)
            except TimeoutError:
                raise UpstreamBrokenError(
                    f"no piece of the response within {timeout:g} s"
                ) from None

    async def aclose(self) -> None:
        """Give the connection back for reuse, or close it when the exchange is unfinished."""
        if self._released:
            return
        self._released = True
        self._client._release(self._connection)


class UpstreamClient:
    """A pool of HTTP/1.1 connections to any number of upstreams.

    ``max_connections`` bounds the connections open at once (requests wait
    for one, without a time limit); ``max_keepalive`` the idle ones kept per
    upstream. Use as an async context manager, or call :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        connect_timeout: float | None = 10.0,
        read_timeout: float | None = 600.0,
        write_timeout: float | None = 60.0,
        max_connections: int | None = 1000,
        max_keepalive: int = 200,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_keepalive = max_keepalive
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self._ssl = ssl_context
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection; later requests are refused."""
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()

    async def send(
        self,
        method: bytes,
        base: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> UpstreamResponse:
        """Send ``method`` ``base`` + ``target`` (path and query) with
        ``headers`` and ``body``; the response once its head has arrived.

        :class:`UpstreamUnreachableError` (no connection, or closed before a
        head) or :class:`UpstreamTimeoutError` (connecting, writing, or waiting
        for the head) when there is no response.
        """
        if self._closed:
            raise UpstreamUnreachableError("the client is closed")
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = _Origin.parse(base)
        if self._slots is not None:
            await self._slots.acquire()
        connection: _Connection | None = None
        try:
            connection = await self._connection(origin)
            connection.begin(head_only=method == b"HEAD")
            self._write(connection, method, origin, target, headers, body)
            if connection._drain is not None:
                try:
                    await connection.drain(self.write_timeout)
                except TimeoutError:
                    raise UpstreamTimeoutError(
                        f"the request was not taken within {self.write_timeout:g} s"
                    ) from None
            while not connection.head_done:
                if connection.error is not None:
                    raise connection.error
                try:
                    await connection.wait(self.read_timeout)
                except TimeoutError:
                    raise UpstreamTimeoutError(
                        f"no response within {self.read_timeout:g} s"
                    ) from None
        except BaseException:
            if connection is not None:
                self._drop(connection)
            if self._slots is not None:
                self._slots.release()
            raise
        return UpstreamResponse(self, connection)

    async def _connection(self, origin: _Origin) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                connection.reused = True
                return connection
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._ssl is None:
                # httpx's default context: certifi's CAs, whatever SSL_CERT_*
                # the environment sets; and said plainly that this is HTTP/1.1.
                self._ssl = httpx.create_ssl_context(trust_env=False)
                self._ssl.set_alpn_protocols(["http/1.1"])
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin, self._lost),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"no connection to {origin.host}:{origin.port} within {self.connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnreachableError(
                f"cannot connect to {origin.host}:{origin.port}: {type(exc).__name__}"
            ) from None
        self._open.add(connection)
        return connection

    @staticmethod
    def _write(
        connection: _Connection,
        method: bytes,
        origin: _Origin,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        parts = [method, b" ", origin.prefix, target, b" HTTP/1.1\r\nHost: ", origin.host_header]
        if not body and method in _BODY_METHODS:
            parts.append(b"\r\nContent-Length: 0")
        for name, value in headers:
            parts += (b"\r\n", name, b": ", value)
        if body:
            parts += (b"\r\nContent-Length: ", str(len(body)).encode())
        parts += (b"\r\n\r\n", body)
        assert connection.transport is not None
        connection.transport.write(b"".join(parts))

    def _release(self, connection: _Connection) -> None:
        if self._slots is not None:
            self._slots.release()
        connection.active = False
        if (
            connection.complete
            and connection.keep_alive
            and connection.error is None
            and not connection.closed
            and not connection.body
            and not self._closed
        ):
            idle = self._idle.setdefault(connection.origin, [])
            if len(idle) < self.max_keepalive:
                idle.append(connection)
                return
        self._drop(connection)

    def _lost(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.origin)
        if idle is not None and connection in idle:
            idle.remove(connection)
        self._open.discard(connection)

    def _drop(self, connection: _Connection) -> None:
        connection.active = False
        connection.close()
        self._open.discard(connection)
