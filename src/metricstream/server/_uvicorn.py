"""Running the stream on uvicorn, with a shutdown that says "going away" (1001)."""

from __future__ import annotations

import importlib.util
import socket
from typing import Any

import uvicorn

from ..protocol import CloseCode
from ._hub import MetricsHub

__all__ = ["StreamServer", "uvicorn_config"]


def uvicorn_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    max_message_size: int = 64 * 1024,
    ws_per_message_deflate: bool = False,
    log_level: str = "info",
    **kwargs: Any,
) -> uvicorn.Config:
    """A uvicorn config tuned for the stream.

    - the sans-I/O ``websockets`` implementation (the one whose connections
      the hub can write to directly, see ``_wire.DirectWriter``);
    - uvloop and httptools when installed;
    - permessage-deflate off unless asked for: on small frames it costs more
      CPU and memory than it saves bandwidth;
    - ``ws_max_size`` equal to the endpoint's inbound limit, so oversized
      frames are refused (1009) before they are buffered whole.
    """
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": loop,
        "http": http,
        "ws": "websockets-sansio",
        "ws_max_size": max_message_size,
        "ws_per_message_deflate": ws_per_message_deflate,
        "log_level": log_level,
        "lifespan": "on",
    }
    options.update(kwargs)
    return uvicorn.Config(app, **options)


class StreamServer(uvicorn.Server):
    """``uvicorn.Server`` that closes the hub's clients with 1001 on shutdown.

    Plain uvicorn closes every open WebSocket with 1012 *before* the app's
    lifespan shutdown runs, so the app alone cannot choose the close code.
    This subclass closes the stream's clients first (1001, "going away": they
    reconnect elsewhere and resume), then lets uvicorn finish as usual.
    """

    def __init__(self, config: uvicorn.Config, hub: MetricsHub, *, close_timeout: float = 5.0):
        super().__init__(config)
        self.hub = hub
        self._close_timeout = close_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Close the stream's clients with 1001, then shut uvicorn down."""
        await self.hub.close_all(CloseCode.GOING_AWAY, grace=self._close_timeout)
        await super().shutdown(sockets=sockets)

    @property
    def bound_port(self) -> int | None:
        """The port actually listened on (useful with ``port=0``), once started."""
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                port: int = sock.getsockname()[1]
                return port
        return None
