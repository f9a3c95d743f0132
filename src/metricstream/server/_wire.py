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
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Final

__all__ = ["DirectWriter", "EncodedFrame", "text_frame"]

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


class DirectWriter:
    """Writes pre-framed bytes to one uvicorn WebSocket connection's transport.

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
        a middleware wrapping ``receive``, an extension negotiated)."""
        owner = getattr(receive, "__self__", None)
        if owner is None:
            return None
        try:
            from uvicorn.protocols.websockets.websockets_sansio_impl import (
                WebSocketsSansIOProtocol,
            )
            from websockets.protocol import State
        except ImportError:  # pragma: no cover - uvicorn or websockets missing
            return None
        if not isinstance(owner, WebSocketsSansIOProtocol):
            return None
        conn = getattr(owner, "conn", None)
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
            return None
        return cls(owner, State.OPEN)

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
