"""How a stream client carries its token: the one rule every side reads.

A client sends the token as ``Authorization: Bearer <token>`` (the Python
client's default), as the ``token`` query parameter, or as a WebSocket
subprotocol entry: browsers can set no header on a WebSocket, and a token in
the URL ends up in access logs. The entry is :data:`TOKEN_SUBPROTOCOL_PREFIX`
followed by the token, base64url-encoded without padding (a subprotocol must
be an HTTP token: no ``=``, ``/`` or ``+``). A browser that offers
subprotocols fails the handshake unless the server selects one, so such a
client also offers :data:`STREAM_SUBPROTOCOL`, which the server selects;
the server never echoes the token's entry.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Final

__all__ = [
    "STREAM_SUBPROTOCOL",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "token_from_subprotocols",
    "token_subprotocol",
]

#: The subprotocol a server selects when a client offers it.
STREAM_SUBPROTOCOL: Final = "metricstream"
#: Prefix of the subprotocol entry that carries the token.
TOKEN_SUBPROTOCOL_PREFIX: Final = "metricstream.token."


def token_subprotocol(token: str) -> str:
    """The subprotocol entry carrying ``token``."""
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return TOKEN_SUBPROTOCOL_PREFIX + encoded


def token_from_subprotocols(offered: Iterable[str]) -> bytes | None:
    """The token carried by the first token entry of ``offered``, as bytes.

    ``None`` when no entry carries one, or the first such entry is not valid
    base64url (which then matches no token).
    """
    for item in offered:
        if item.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            encoded = item[len(TOKEN_SUBPROTOCOL_PREFIX) :]
            try:
                padded = encoded + "=" * (-len(encoded) % 4)
                # validate: characters outside base64url are an error, not skipped.
                return base64.b64decode(padded, altchars=b"-_", validate=True)
            except (binascii.Error, ValueError):
                return None
    return None
