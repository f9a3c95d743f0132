"""Secrets masked out of text before it is logged or published.

One set of patterns for every place text leaves the process: log records
(:mod:`metricstream._logging`), a client's URL in its ``repr`` and messages,
and error texts published on the stream (upstream error bodies, exception
messages). Standard library only, so that any module may use it.

What is masked (the name or prefix stays, the value becomes ``***``):

- ``token=`` and ``access_token=`` query parameters;
- the value after ``Bearer``;
- ``api_key`` / ``api-key`` / ``apikey`` values (``=``, ``:`` or a JSON field);
- OpenAI-style keys ``sk-...`` (the first four characters after ``sk-`` stay,
  enough to tell two keys apart);
- the stream token's WebSocket subprotocol entry ``metricstream.token.<b64>``;
- the password of a URL (``scheme://user:password@host``);
- any secret registered with :func:`add_secret`.
"""

from __future__ import annotations

import re
from typing import Final

from .protocol.auth import TOKEN_SUBPROTOCOL_PREFIX

__all__ = ["REDACTED", "add_secret", "redact_text", "redact_url"]

#: What a masked value is replaced with.
REDACTED: Final = "***"

# Each pattern keeps group 1 (the name or prefix) and masks what follows.
# A value ends at a separator of query, header or JSON-ish syntax.
_PATTERNS: Final = (
    re.compile(r"(?i)(\b(?:access_)?token=)[^&\s\"'#;,]+"),
    re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+"),
    re.compile(r"(?i)(\bapi[_-]?key[\"']?\s*[:=]\s*[\"']?)[^&\s\"'#;,()<>\[\]{}]+"),
    re.compile(r"(\bsk-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-*]+"),
    re.compile(rf"(\b{re.escape(TOKEN_SUBPROTOCOL_PREFIX)})[A-Za-z0-9_\-]+"),
    # userinfo's password: up to the last "@" before the host.
    re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)[^\s/@]+(?=@)"),
)
_REPLACEMENT: Final = rf"\g<1>{REDACTED}"

_secrets: set[str] = set()


def add_secret(secret: str) -> None:
    """Mask every later occurrence of ``secret`` in :func:`redact_text`."""
    if secret:
        _secrets.add(secret)


def redact_text(text: str) -> str:
    """``text`` with every credential it shows (see the module's list) replaced by ``***``."""
    for pattern in _PATTERNS:
        text = pattern.sub(_REPLACEMENT, text)
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return text


def redact_url(url: str) -> str:
    """``url`` with its password, a ``token`` query parameter and any other secret masked."""
    return redact_text(url)
