"""Frames encoded once, and the direct path to uvicorn's transport.

An :class:`EncodedFrame` holds one message as the complete WebSocket text
frame that goes on the wire (server frames are not masked, so with no
extension negotiated the very same bytes are valid on every connection). The
other forms a connection may need, the JSON bytes for ``batch=1`` arrays and
the JSON text for ASGI ``websocket.send``, are derived from it on the path
that needs them: the replay log keeps thousands of frames, and one copy of
each is all it should pay for.

:class:`DirectWriter` writes such wire bytes straight to the transport of a
uvicorn connection, skipping the per-client ASGI ``send`` call chain; see
:meth:`DirectWriter.detect` for exactly when it is used.

This is the one module that reads uvicorn's internals (the protocol object
behind ``receive``: its ``conn``, ``transport``, ``writable``,
``close_sent``). ``pyproject.toml`` bounds uvicorn to the versions this was
checked against and ``tests/server/test_uvicorn_range.py`` runs a real server
and client on the lowest and the newest of them. When the internals do not
look as expected, the connection falls back to ASGI ``send``: logged once per
process and counted (``metricstream_direct_write_fallbacks``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from ._registry import Subscriber
    from ._writers import WriteContext

__all__ = ["DirectWriter", "EncodedFrame", "Transport", "find_transport", "text_frame"]

logger = logging.getLogger("metricstream.server")

_OP_TEXT_FIN: Final = 0x81


def _header(n: int) -> bytes:
    if n < 126:
        return bytes((_OP_TEXT_FIN, n))
    if n < 65536:
        return struct.pack("!BBH", _OP_TEXT_FIN, 126, n)
    return struct.pack("!BBQ", _OP_TEXT_FIN, 127, n)


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked, final WebSocket text frame carrying ``payload``."""
    return _header(len(payload)) + payload


class EncodedFrame:
    """One message, encoded and framed once.

    Only :attr:`wire` is stored; :attr:`data` and :attr:`text` are computed
    on each access (the ``batch=1`` and ASGI paths, respectively), so a frame
    held by the replay log costs one copy of the message.
    """

    __slots__ = ("_offset", "wire")

    def __init__(self, data: bytes) -> None:
        header = _header(len(data))
        #: The whole WebSocket frame: header and JSON document.
        self.wire = header + data
        # Where the JSON document starts in ``wire`` (2, 4 or 10).
        self._offset = len(header)

    @classmethod
    def of_text(cls, text: str) -> EncodedFrame:
        """An :class:`EncodedFrame` of a JSON text."""
        return cls(text.encode())

    @property
    def data(self) -> memoryview:
        """The JSON document, UTF-8: a view into :attr:`wire` (no copy)."""
        return memoryview(self.wire)[self._offset :]

    @property
    def text(self) -> str:
        """The JSON document as ``str`` (what ASGI ``websocket.send`` takes).

        Decoded on every access and not kept: only connections that do not
        take direct writes need it, and each of those sends it once.
        """
        return self.wire[self._offset :].decode()

    @property
    def size(self) -> int:
        """Bytes of the JSON document (what buffer bounds count)."""
        return len(self.wire) - self._offset

    def __repr__(self) -> str:
        text = self.text
        return f"EncodedFrame({text[:60]!r}{'...' if len(text) > 60 else ''})"


class Transport(Protocol):
    """The part of an asyncio transport the server may use, when it has one."""

    def get_write_buffer_size(self) -> int:
        """Bytes buffered, not yet passed to the kernel."""
        ...

    def is_closing(self) -> bool:
        """Whether the transport is closing or closed."""
        ...

    def abort(self) -> None:
        """Close at once, dropping buffered data."""
        ...


def find_transport(receive: Any) -> Transport | None:
    """The asyncio transport behind ``receive``, when the server exposes it.

    uvicorn hands the application the bound ``receive`` method of its
    per-connection protocol object, which holds the transport. The endpoint
    uses it for two read-mostly things only: to include the transport's write
    buffer in the per-client buffer figure, and to abort a peer that will not
    even take its close frame. Anything else (another server, a middleware
    wrapping ``receive``) simply yields ``None`` and both refinements are off.
    """
    owner = getattr(receive, "__self__", None)
    transport = getattr(owner, "transport", None)
    if all(
        callable(getattr(transport, name, None))
        for name in ("get_write_buffer_size", "is_closing", "abort")
    ):
        return transport
    return None


# Whether a fallback to ASGI was logged already: once per process is enough
# to tell an operator that uvicorn's internals changed.
_fallback_logged = False


def _fell_back(why: str) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        logger.warning(
            "writing to clients through ASGI send instead of directly: %s "
            "(logged once; counted in metricstream_direct_write_fallbacks)",
            why,
        )


class DirectWriter:
    """A :class:`~metricstream.server.FrameWriter` that writes pre-framed
    bytes to one uvicorn WebSocket connection's transport.

    Used only when all of these hold, checked by :meth:`detect`:

    - the server is uvicorn with its sans-I/O ``websockets`` implementation
      (``ws="websockets-sansio"``, uvicorn's default when ``websockets`` is
      installed), found as the object behind the ASGI ``receive`` callable;
    - no extension was negotiated (permessage-deflate off), so an unmasked
      text frame with no reserved bits is exactly what that connection
      expects.

    Every write is one or more complete frames, written synchronously on the
    event loop thread, so it can never interleave inside a frame uvicorn
    writes itself (pings, the close frame). Writing stops as soon as uvicorn
    has sent a close frame, the websockets state machine has left ``OPEN``,
    or the transport is closing; the close itself still goes through ASGI.
    """

    __slots__ = ("_conn", "_open", "_owner", "_transport", "_writable")

    def __init__(self, owner: Any, open_state: Any) -> None:
        self._owner = owner
        self._conn = owner.conn
        self._transport: asyncio.WriteTransport = owner.transport
        self._writable: asyncio.Event = owner.writable
        self._open = open_state

    @classmethod
    def detect(cls, receive: Any) -> DirectWriter | None:
        """A writer for the connection behind ``receive``, or ``None`` when
        the direct path does not apply (any other server or implementation,
        a middleware wrapping ``receive``, an extension negotiated).

        ``None`` for a uvicorn sans-I/O connection whose internals are not
        what this module expects is a fallback: logged once, and the caller
        counts it (see :func:`detect_or_fallback`).
        """
        return cls.check(receive)[0]

    @classmethod
    def check(cls, receive: Any) -> tuple[DirectWriter | None, str | None]:
        """:meth:`detect`, plus why a uvicorn sans-I/O connection could not be
        written directly (``None`` when it could, or when it is not one)."""
        owner = getattr(receive, "__self__", None)
        if owner is None:
            return None, None
        try:
            from uvicorn.protocols.websockets.websockets_sansio_impl import (
                WebSocketsSansIOProtocol,
            )
            from websockets.protocol import State
        except ImportError:  # pragma: no cover - uvicorn or websockets missing
            return None, None
        if not isinstance(owner, WebSocketsSansIOProtocol):
            return None, None
        conn = getattr(owner, "conn", None)
        if conn is not None and getattr(conn, "extensions", None) not in ([], None):
            # Compression negotiated: framed bytes would be wrong, by design.
            return None, None
        transport = getattr(owner, "transport", None)
        writable = getattr(owner, "writable", None)
        if (
            conn is None
            or getattr(conn, "extensions", None) != []
            or getattr(conn, "state", None) is not State.OPEN
            or not isinstance(writable, asyncio.Event)
            or not isinstance(getattr(owner, "close_sent", None), bool)
            or not callable(getattr(transport, "write", None))
        ):
            why = "uvicorn's sans-I/O protocol object does not have the expected attributes"
            _fell_back(why)
            return None, why
        return cls(owner, State.OPEN), None

    @property
    def usable(self) -> bool:
        """Whether frames may still be written to this connection."""
        return (
            not self._owner.close_sent
            and self._conn.state is self._open
            and not self._transport.is_closing()
        )

    @property
    def paused(self) -> bool:
        """Whether the transport asked writers to pause (buffer over high water)."""
        return not self._writable.is_set()

    def buffer_size(self) -> int:
        """Bytes the transport holds that the kernel has not taken yet."""
        return self._transport.get_write_buffer_size()

    def write(self, data: bytes) -> None:
        """Write complete frames (never blocks; the transport buffers)."""
        self._transport.write(data)

    async def wait_writable(self) -> None:
        """Wait until the transport resumes writing (or the connection is lost)."""
        await self._writable.wait()

    # -- FrameWriter ----------------------------------------------------------

    def pump(self, sub: Subscriber, ctx: WriteContext) -> None:
        """Write everything pending in one go, straight to the transport."""
        outbox = sub.outbox
        if outbox.task is not None or not outbox.frames:
            return
        if not self.usable:
            sub.fail(None)
            return
        if self.paused:
            # The transport is over its high-water mark: wait for it to
            # drain instead of growing its buffer; the outbox (bounded)
            # keeps collecting meanwhile.
            ctx.stats.send_suspensions += 1
            outbox.task = asyncio.get_running_loop().create_task(self._await_writable(sub, ctx))
            return
        pending = outbox.frames
        key = (sub.batch, id(pending[0]), len(pending))
        shared = ctx.shared.get(key)
        if shared is not None and shared[1] == pending:
            # The same frames as an earlier subscriber of this flush (list
            # equality is identity of the frames here): unfiltered clients
            # that keep up all hold the same outbox, so the array (or the
            # joined frames) is built once per flush and every one of them
            # is written the same bytes object, as single frames always are.
            _, _, data, size, count, frames = shared
            outbox.frames = []
            outbox.size = 0
        else:
            taken, data, size, count, frames = outbox.take_wire(sub.batch)
            if count > 1 or sub.batch:
                ctx.shared[key] = (sub.batch, taken, data, size, count, frames)
        try:
            self.write(data)
        except Exception as exc:  # pragma: no cover - transports buffer, they do not raise
            sub.fail(exc)
            return
        stats = ctx.stats
        stats.messages_sent += count
        stats.frames_sent += frames
        stats.bytes_sent += size
        # What the transport could not pass to the kernel yet still counts
        # against the bound: with direct writes it is where a backlog sits.
        outbox.written = self.buffer_size()
        outbox.settle(ctx.max_buffer)

    async def _await_writable(self, sub: Subscriber, ctx: WriteContext) -> None:
        try:
            await self.wait_writable()
        finally:
            sub.outbox.task = None
        self.pump(sub, ctx)
        # Bytes are shared within one flush only: do not pin them afterwards.
        ctx.shared.clear()
