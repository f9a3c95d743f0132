"""Opening one connection: what a config asks of ``websockets``, and what a
failed attempt means to the session."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException

from .._version import __version__
from ..exceptions import (
    ConfigError,
    ConnectionRejectedError,
    MetricStreamError,
    StreamConnectionError,
)
from ..protocol import CloseAction, handshake_action
from ._config import WebSocketConfig, redact_url
from ._policy import build_url

__all__ = ["DialFailure", "dial"]


@dataclasses.dataclass(frozen=True, slots=True)
class DialFailure:
    """An attempt that opened no connection: the error, and what it means."""

    error: MetricStreamError
    action: CloseAction


async def dial(
    config: WebSocketConfig,
    target: str,
    params: Mapping[str, str | None],
    *,
    max_size: int | None,
) -> ClientConnection | DialFailure:
    """Open a connection to ``target`` with the session's query ``params``.

    ``max_size`` bounds the frames ``websockets`` reads at all (see
    ``ClientSession.frame_ceiling``).
    """
    headers = dict(config.headers or {})
    if config.token is not None and not config.token_in_query:
        headers["Authorization"] = f"Bearer {config.token}"
    extra: dict[str, Any] = {}
    if config.ssl is not None:
        extra["ssl"] = config.ssl
    if config.protocols is not None:
        extra["subprotocols"] = list(config.protocols)
    try:
        return await connect(
            build_url(target, params),
            additional_headers=headers,
            **extra,
            open_timeout=config.open_timeout,
            close_timeout=config.close_timeout,
            # Liveness is the protocol's heartbeat, which both dialects
            # answer; protocol-level pings would be a second, weaker timer.
            ping_interval=None,
            ping_timeout=None,
            max_size=max_size,
            # Frames are small JSON: deflate costs more CPU and memory than
            # it saves (docs/performance.md).
            compression=None,
            user_agent_header=f"metricstream/{__version__}",
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        rejected = ConnectionRejectedError(f"handshake rejected with HTTP {status}", code=status)
        return DialFailure(rejected, handshake_action(status))
    except InvalidURI as exc:
        return DialFailure(ConfigError(f"invalid url: {exc}"), CloseAction.FATAL)
    except (OSError, TimeoutError, WebSocketException) as exc:
        reason = str(exc) or type(exc).__name__
        error = StreamConnectionError(f"cannot connect to {redact_url(target)}: {reason}")
        return DialFailure(error, CloseAction.RETRY)
