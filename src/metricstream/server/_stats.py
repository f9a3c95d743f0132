"""The running totals of a hub."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["HubStats"]


@dataclass(slots=True)
class HubStats:
    """Running totals of a hub, read by the Prometheus collector.

    Plain integers updated in place: the fan-out path pays no lock and no
    metric-library call per delivery.
    """

    published: int = 0
    messages_sent: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    evictions: int = 0
    #: Flushes that found a client's transport paused, or its writer still
    #: busy with earlier frames; zero while every client keeps up.
    send_suspensions: int = 0
    #: Connections on uvicorn's sans-I/O implementation that could not be
    #: written directly (its internals were not as expected): written
    #: through ASGI instead.
    direct_write_fallbacks: int = 0
    replay_hits: int = 0
    replay_misses: int = 0
    connections_opened: int = 0
    rejections: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        """Count a connection refused for ``reason``."""
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
