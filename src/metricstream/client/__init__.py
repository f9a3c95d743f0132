"""The Python client of a metrics stream: resilient, resumable, dialect-aware.

:class:`WebSocketService` is a thin asyncio driver around the pure protocol
core (:mod:`metricstream.protocol`): it connects, reconnects with jittered
backoff, resumes from its last sequence, drops duplicates, detects dead peers
by heartbeat, speaks both the native and the FakeAI dialect, and hands every
message to callbacks and bounded async iterators. The blocking variant is
:mod:`metricstream.sync`. See ``docs/client.md``.
"""

from ._client import (
    ALL_TYPES,
    STATE_CHANGES,
    Callback,
    Subscription,
    WebSocketService,
    create_websocket_service,
)
from ._config import Dialect, OverflowPolicy, WebSocketConfig
from ._fakeai import FakeAIAdapter
from ._handlers import EventHandlers
from ._policy import build_url
from ._state import ConnectionInfo, ConnectionState
from ._stream import MessageStream
from ._sync import SyncWebSocketService

__all__ = [
    "ALL_TYPES",
    "STATE_CHANGES",
    "Callback",
    "ConnectionInfo",
    "ConnectionState",
    "Dialect",
    "EventHandlers",
    "FakeAIAdapter",
    "MessageStream",
    "OverflowPolicy",
    "Subscription",
    "SyncWebSocketService",
    "WebSocketConfig",
    "WebSocketService",
    "build_url",
    "create_websocket_service",
]
