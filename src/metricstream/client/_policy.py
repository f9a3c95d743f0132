"""The URL a client dials (the close-code table lives in ``metricstream.protocol``)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["build_url"]


def build_url(base: str, params: Mapping[str, str | None]) -> str:
    """``base`` with ``params`` set in its query (``None`` values removed).

    Parameters already in ``base`` that ``params`` names are replaced, the
    others kept, so a user's own query parameters survive.
    """
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend((k, v) for k, v in params.items() if v is not None)
    return urlunsplit(parts._replace(query=urlencode(query, safe=",")))
