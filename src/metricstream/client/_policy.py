"""Pure decisions of the client: what a close code means, which URL to dial.

Kept apart from the asyncio driver so that the whole close-code table of
``docs/protocol.md`` is tested without a socket.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["Retry", "build_url", "retry_for_close", "retry_for_status"]


class Retry(enum.Enum):
    """What to do after a connection ended or could not be opened."""

    NOW = "now"
    """Reconnect at once (and resume): the server asked us to catch up."""
    BACKOFF = "backoff"
    """Reconnect after the next backoff delay."""
    FATAL = "fatal"
    """Retrying cannot help (auth, origin): stop and report the error."""


#: Close codes after which retrying cannot help.
FATAL_CLOSE_CODES: frozenset[int] = frozenset({1008, 4001})
#: HTTP statuses of a rejected handshake that mean the same as 4001 / 1008.
FATAL_HTTP_STATUSES: frozenset[int] = frozenset({401, 403})
#: The server closed us for being too slow; the replay log fills the hole.
SLOW_CONSUMER = 4008


def retry_for_close(code: int | None) -> Retry:
    """The reaction to a connection the server (or the network) ended.

    ``code`` is the close code received, or ``None`` when the connection died
    without a closing handshake (1006). A server-initiated 1000 is still a lost
    stream, so it is retried like any other; only a close the client asked for
    ends the client, and that never reaches this function.
    """
    if code in FATAL_CLOSE_CODES:
        return Retry.FATAL
    if code == SLOW_CONSUMER:
        return Retry.NOW
    return Retry.BACKOFF


def retry_for_status(status: int) -> Retry:
    """The reaction to a handshake rejected with HTTP ``status``."""
    return Retry.FATAL if status in FATAL_HTTP_STATUSES else Retry.BACKOFF


def build_url(base: str, params: Mapping[str, str | None]) -> str:
    """``base`` with ``params`` set in its query.

    A parameter ``params`` gives a value replaces the one of the same name in
    ``base``; a ``None`` value leaves ``base``'s own (if any) as it is, so a
    user's query parameters survive, a ``?token=`` in the URL included.
    """
    parts = urlsplit(base)
    given = {k: v for k, v in params.items() if v is not None}
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in given]
    query.extend(given.items())
    return urlunsplit(parts._replace(query=urlencode(query, safe=",")))
