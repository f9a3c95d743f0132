"""Connection states and the statistics a client exposes."""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["ConnectionInfo", "ConnectionState"]


class ConnectionState(enum.StrEnum):
    """The seed's connection states.

    ``CONNECTING`` → ``CONNECTED`` (the first frame arrived) → on loss
    ``RECONNECTING`` → ``CONNECTED`` …; ``DISCONNECTED`` before the first
    ``connect()`` and after ``disconnect()``; ``CLOSED`` after ``aclose()`` /
    ``close()`` (final); ``ERROR`` when the server rejected the client for good
    or the reconnect attempts ran out.
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
    epoch: str | None
    """The server's stream epoch (native dialect; ``None`` before the first ``init``)."""
    last_sequence: int | None
    """The sequence of the last stream message applied."""
    duplicates: int
    """Messages dropped because their sequence was already applied."""
    out_of_order: int
    """Messages dropped because they came after a newer one."""
    gaps: int
    """Holes in the sequence that were accepted (after at most one resume)."""
    parse_errors: int
    """Frames that were not valid messages, or too big (logged and skipped)."""
    queued: int
    """Outbound messages waiting in the offline queue now."""
    dropped: int
    """Outbound messages dropped by the ``queue_overflow`` policy."""
    resumed: bool
    """Whether the last ``init`` continued the stream (``False``: a fresh snapshot)."""
    dialect: str | None
    """``native`` or ``fakeai`` once a connection decided it; ``None`` before."""
    connections: int
    """How many connections reached CONNECTED since the client was created."""
    resumes: int
    """How many reconnects the server resumed (replayed instead of a snapshot)."""
    missed: int
    """Sequence numbers skipped by accepted gaps (each one a message never seen)."""
    unknown_messages: int
    """Messages of a type this client does not know (skipped)."""
