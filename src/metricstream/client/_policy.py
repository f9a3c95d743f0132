"""The URL a client dials (the close-code table lives in ``metricstream.protocol``)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["build_url"]


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
