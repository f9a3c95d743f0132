"""Logging of the ``metricstream`` command: configured once, secrets redacted.

Library modules only ever use named loggers (``metricstream.server``,
``metricstream.client``, ...) and never install handlers: a program that
embeds them decides where their records go. The command line calls
:func:`configure_logging` once, which installs the single handler every
record (metricstream's, uvicorn's, ``warnings``) goes through, on stderr so
that stdout stays the command's output. uvicorn is then started with
``log_config=None`` (:func:`uvicorn_log_options`) so it adds no handler of its
own: a second handler is what printed lines two or three times.

Every record passes :class:`RedactFilter` on its way out: a ``token`` query
parameter, an ``Authorization`` value, an API key or any secret registered
with :func:`add_secret` is replaced by ``***`` (:mod:`metricstream._redact`).
uvicorn's access log prints request paths with their query, which is where a
``?token=`` would otherwise leak.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal, TextIO

from . import _redact
from .protocol.auth import TOKEN_SUBPROTOCOL_PREFIX, token_subprotocol

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "RedactFilter",
    "add_secret",
    "configure_logging",
    "redact",
    "uvicorn_log_options",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")
LOG_LEVELS: tuple[str, ...] = ("critical", "error", "warning", "info", "debug")

# The handler configure_logging installed, so a second call replaces it
# instead of adding another (each handler prints every line once more).
_handler: logging.Handler | None = None


def add_secret(secret: str) -> None:
    """Redact every later occurrence of ``secret`` in any log record."""
    if secret:
        _redact.add_secret(secret)
        # The form a browser sends it in, as a WebSocket subprotocol entry.
        _redact.add_secret(token_subprotocol(secret).removeprefix(TOKEN_SUBPROTOCOL_PREFIX))


def redact(text: str) -> str:
    """``text`` with credentials and registered secrets replaced by ``***``.

    The patterns are :func:`metricstream._redact.redact_text`'s, shared with
    the client's URLs and the errors published on the stream.
    """
    return _redact.redact_text(text)


class RedactFilter(logging.Filter):
    """Rewrites each record's message (and traceback text) with :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # Format the traceback now, so that it is redacted too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` (and ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    level: str = "warning",
    fmt: str = "text",
    *,
    stream: TextIO | None = None,
    prefix: str | None = None,
) -> logging.Handler:
    """Send every log record at ``level`` or above to stderr, once, in ``fmt``.

    Text lines carry time, level and logger; with ``prefix`` (an interactive
    command's name) they read ``prefix: message`` instead, like the
    command's own notes. Calling it again replaces the handler it installed
    before. ``warnings`` are routed through logging too, so they reach
    stderr in the same format.
    """
    global _handler
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif prefix is not None:
        formatter = logging.Formatter(prefix.replace("%", "%%") + ": %(message)s")
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(RedactFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    # Off then on: captureWarnings(True) does nothing when logging believes
    # it is on already, even if warnings.showwarning was restored since
    # (as warnings.catch_warnings does on exit).
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    _handler = handler
    return handler


def uvicorn_log_options(level: str) -> dict[str, Any]:
    """uvicorn.Config options that leave logging to :func:`configure_logging`.

    With ``log_config=None`` uvicorn installs no handler (its records
    propagate to the root handler) and only sets its loggers' level.
    """
    return {"log_config": None, "log_level": level}
