"""The blocking client: :class:`SyncWebSocketService`, for scripts and notebooks.

It runs the asyncio :class:`~metricstream.client.WebSocketService` on a
background thread and offers the same API without ``await``::

    from metricstream.sync import SyncWebSocketService

    with SyncWebSocketService("ws://127.0.0.1:8765/metrics/stream") as client:
        client.subscribe("metrics_update", lambda data, message: print(data))
        for message in client.messages(types=["request_update"], timeout=30):
            print(message.data.id)
"""

from .client import (
    ConnectionInfo,
    ConnectionState,
    EventHandlers,
    Subscription,
    SyncWebSocketService,
    WebSocketConfig,
)

__all__ = [
    "ConnectionInfo",
    "ConnectionState",
    "EventHandlers",
    "Subscription",
    "SyncWebSocketService",
    "WebSocketConfig",
]
