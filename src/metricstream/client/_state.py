"""Connection states and the statistics a client exposes."""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["ConnectionInfo", "ConnectionState"]


class ConnectionState(enum.StrEnum):
    """The seed's connection states.

    ``CONNECTING`` → ``CONNECTED`` (the first frame arrived) → on loss
    ``RECONNECTING`` → ``CONNECTED`` …; ``CLOSED`` after :meth:`close`;
    ``ERROR`` when the server rejected the client for good or the reconnect
    attempts ran out; ``DISCONNECTED`` before the first start.
    """

    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    RECONNECTING = "RECONNECTING"
    ERROR = "ERROR"
    CLOSED = "CLOSED"


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """A snapshot of a client's connection statistics (the seed's ConnectionInfo, and more).

    Times are wall-clock seconds since the Unix epoch; ``latency`` is the last
    heartbeat round trip in seconds.
    """

    state: ConnectionState
    connected_at: float | None
    disconnected_at: float | None
    reconnect_attempts: int
    last_error: str | None
    latency: float | None
    message_count: int
    bytes_received: int
    bytes_sent: int
    dialect: str | None
    """``native`` or ``fakeai`` once a connection decided it; ``None`` before."""
    epoch: str | None
    last_sequence: int | None
    connections: int
    """How many connections reached CONNECTED since the client started."""
    resumes: int
    """How many reconnects the server resumed (replayed instead of a snapshot)."""
    duplicates: int
    out_of_order: int
    gaps: int
    missed: int
    """Sequence numbers skipped by accepted gaps (each one a message never seen)."""
    invalid_frames: int
    """Frames that were not valid messages (logged and skipped)."""
    unknown_messages: int
    """Messages of a type this client does not know (skipped)."""
    dropped_sends: int
    """Queued outbound messages dropped by the ``drop_oldest`` overflow policy."""
