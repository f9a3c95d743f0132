"""Close codes and what a client does after each: the whole table in one place.

The server closes with these codes, the Python and browser clients look the
action up here (the page through the generated ``protocol.js``), and
``docs/protocol.md`` prints the same table.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["FATAL_HTTP_STATUSES", "CloseAction", "CloseCode", "close_action", "handshake_action"]


class CloseAction(enum.Enum):
    """What a client does after its connection ended."""

    RETRY = "retry"
    """Reconnect (and resume) after the next backoff delay."""
    RESET_AND_RETRY = "reset_and_retry"
    """Reset the backoff and reconnect at once (and resume): the server asked
    the client to catch up. At once only once in a row, so a server that keeps
    doing this gets the backoff like anyone else."""
    FATAL = "fatal"
    """Retrying cannot help (bad token, refused origin): stop and report the error."""


class CloseCode(enum.IntEnum):
    """Every WebSocket close code the protocol gives a meaning to."""

    NORMAL = 1000
    """Normal close. Final only when the client asked for it."""
    GOING_AWAY = 1001
    """The server is shutting down or redeploying."""
    ABNORMAL = 1006
    """No close frame at all (never sent: what a lost connection reads as)."""
    INVALID_PAYLOAD = 1007
    """A text frame that is not valid UTF-8."""
    POLICY_VIOLATION = 1008
    """A filter in the URL beyond the server's bounds (after an ``invalid_filter``
    error). A refused origin or a throttled address is refused earlier, as an
    HTTP 403 to the handshake."""
    MESSAGE_TOO_BIG = 1009
    """A frame exceeded the receiver's size limit."""
    INTERNAL_ERROR = 1011
    """The server failed to read the connection."""
    SERVICE_RESTART = 1012
    """Plain uvicorn's shutdown close (``StreamServer`` sends 1001 first)."""
    BAD_TOKEN = 4001
    """Missing or invalid auth token."""
    SLOW_CONSUMER = 4008
    """The client fell behind its bounded outbox; the replay log fills the hole."""
    TOO_MANY = 4029
    """Too many connections, or the client's inbound message rate was exceeded."""

    @property
    def action(self) -> CloseAction:
        """The client's reaction to this code."""
        return _ACTIONS.get(self, CloseAction.RETRY)


_ACTIONS: Final[dict[CloseCode, CloseAction]] = {
    CloseCode.POLICY_VIOLATION: CloseAction.FATAL,
    CloseCode.BAD_TOKEN: CloseAction.FATAL,
    CloseCode.SLOW_CONSUMER: CloseAction.RESET_AND_RETRY,
}

#: HTTP statuses of a rejected handshake that mean the same as 4001 / 1008.
FATAL_HTTP_STATUSES: Final[frozenset[int]] = frozenset({401, 403})


def close_action(code: int | None) -> CloseAction:
    """The reaction to a connection the server (or the network) ended.

    ``code`` is the close code received, or ``None`` when the connection died
    without a closing handshake (1006). Codes this protocol does not name are
    retried with backoff. A server-initiated 1000 is still a lost stream, so it
    is retried too; only a close the client asked for ends the client, and the
    client never asks this table about that one.
    """
    if code is None:
        return CloseAction.RETRY
    try:
        return CloseCode(code).action
    except ValueError:
        return CloseAction.RETRY


def handshake_action(status: int) -> CloseAction:
    """The reaction to a handshake rejected with HTTP ``status``."""
    return CloseAction.FATAL if status in FATAL_HTTP_STATUSES else CloseAction.RETRY
