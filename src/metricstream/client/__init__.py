"""The Python client of a metrics stream: resilient, resumable, dialect-aware.

:class:`WebSocketService` is a thin asyncio driver around the pure protocol
core (:mod:`metricstream.protocol`): it connects, reconnects with jittered
backoff, resumes from its last sequence, drops duplicates, detects dead peers
by heartbeat, speaks both the native and the FakeAI dialect, and hands every
message to callbacks and bounded async iterators. See ``docs/client.md``.
"""

from ._client import ALL_TYPES, Callback, Subscription, WebSocketService
from ._config import Dialect, OverflowPolicy, WebSocketConfig
from ._fakeai import FakeAIAdapter
from ._policy import Retry, build_url, retry_for_close, retry_for_status
from ._state import ConnectionInfo, ConnectionState
from ._stream import MessageStream
from ._sync import SyncClient

__all__ = [
    "ALL_TYPES",
    "Callback",
    "ConnectionInfo",
    "ConnectionState",
    "Dialect",
    "FakeAIAdapter",
    "MessageStream",
    "OverflowPolicy",
    "Retry",
    "Subscription",
    "SyncClient",
    "WebSocketConfig",
    "WebSocketService",
    "build_url",
    "retry_for_close",
    "retry_for_status",
]
