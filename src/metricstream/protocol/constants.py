"""Every number the protocol fixes, defined once.

The Python client, the server, the store and the browser page all read these
(the page through ``static/js/protocol.js``, generated from this module by
``metricstream schema --js``), so a default cannot drift between them.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "DEFAULT_MAX_RECONNECT_INTERVAL",
    "DEFAULT_OFFLINE_QUEUE_SIZE",
    "DEFAULT_RECONNECT_DECAY",
    "DEFAULT_RECONNECT_INTERVAL",
    "DEFAULT_RECONNECT_JITTER",
    "DEFAULT_SERVER_HEARTBEAT_INTERVAL",
    "MAX_KEYS",
    "MAX_TRACKED_HOLES",
]

#: Seconds between a client's ``heartbeat`` messages (the seed's ``heartbeatInterval``).
DEFAULT_HEARTBEAT_INTERVAL: Final = 30.0
#: Seconds of silence after a heartbeat before a client abandons the connection.
DEFAULT_HEARTBEAT_TIMEOUT: Final = 5.0
#: Seconds between the server's own ``heartbeat`` messages.
DEFAULT_SERVER_HEARTBEAT_INTERVAL: Final = 15.0

#: First reconnect delay, in seconds (the seed's ``reconnectInterval``).
DEFAULT_RECONNECT_INTERVAL: Final = 1.0
#: Growth factor of the reconnect delay (the seed's ``reconnectDecay``).
DEFAULT_RECONNECT_DECAY: Final = 1.5
#: Ceiling of the reconnect delay, in seconds (the seed's ``maxReconnectInterval``).
DEFAULT_MAX_RECONNECT_INTERVAL: Final = 30.0
#: Each delay is scaled by a random factor in ``[1 - jitter, 1]``.
DEFAULT_RECONNECT_JITTER: Final = 0.5

#: Outbound messages a client keeps while disconnected (the seed's 100).
DEFAULT_OFFLINE_QUEUE_SIZE: Final = 100

#: Missing sequence numbers remembered to tell a late arrival (out of order)
#: from a repeat (duplicate). Beyond it, late arrivals count as duplicates:
#: both are dropped, only the counter differs, and memory stays bounded
#: whatever a hostile server sends.
MAX_TRACKED_HOLES: Final = 4096

#: Keys kept per keyed state table (models, rate-limit endpoints) by a
#: receiver: a server naming ever more models must not grow a long-running
#: dashboard without bound.
MAX_KEYS: Final = 1024
