"""The protocol's constants as an ES module, for the browser page.

``metricstream schema-js`` writes it to the page's
``static/js/protocol.js``; a test fails when the committed copy differs from
what this module renders, so the page cannot drift from the Python rules.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .auth import STREAM_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX
from .close import _ACTIONS, FATAL_HTTP_STATUSES, CloseAction, CloseCode
from .constants import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAX_RECONNECT_INTERVAL,
    DEFAULT_OFFLINE_QUEUE_SIZE,
    DEFAULT_RECONNECT_DECAY,
    DEFAULT_RECONNECT_INTERVAL,
    DEFAULT_RECONNECT_JITTER,
    MAX_KEYS,
    MAX_TRACKED_HOLES,
)
from .messages import MODEL_SCOPED_TYPES, STREAM_TYPES
from .schema import PROTOCOL_VERSION

__all__ = ["add_parser", "render"]

_HEADER = """\
// The wire protocol's constants, generated from metricstream.protocol by
// `metricstream schema-js --output <this file>`. Do not edit: change the
// Python module and regenerate (a test fails when this copy is stale).
"""


def _js(value: Any) -> str:
    return json.dumps(value, indent=None, sort_keys=False)


def _frozen(name: str, value: Any, doc: str) -> str:
    return f"/** {doc} */\nexport const {name} = Object.freeze({_js(value)});\n"


def render() -> str:
    """The text of ``protocol.js``."""

    def ms(seconds: float) -> int:
        return round(seconds * 1000)

    defaults = {
        "reconnectInterval": ms(DEFAULT_RECONNECT_INTERVAL),
        "maxReconnectInterval": ms(DEFAULT_MAX_RECONNECT_INTERVAL),
        "reconnectDecay": DEFAULT_RECONNECT_DECAY,
        "reconnectJitter": DEFAULT_RECONNECT_JITTER,
        "heartbeatInterval": ms(DEFAULT_HEARTBEAT_INTERVAL),
        "heartbeatTimeout": ms(DEFAULT_HEARTBEAT_TIMEOUT),
        "offlineQueueSize": DEFAULT_OFFLINE_QUEUE_SIZE,
    }
    parts = [
        _HEADER,
        f"export const PROTOCOL_VERSION = {PROTOCOL_VERSION};\n",
        _frozen(
            "CloseCode", {c.name: int(c) for c in CloseCode}, "Every close code the protocol names."
        ),
        _frozen(
            "CloseAction",
            {a.name: a.value for a in CloseAction},
            "What a client does after a close.",
        ),
        _frozen(
            "CLOSE_ACTIONS",
            {str(int(c)): a.value for c, a in sorted(_ACTIONS.items())},
            "Codes whose action is not RETRY; any other code (or none) is retried with backoff.",
        ),
        _frozen(
            "FATAL_HTTP_STATUSES",
            sorted(FATAL_HTTP_STATUSES),
            "Handshake statuses that mean the same as 4001 / 1008.",
        ),
        _frozen(
            "STREAM_TYPES",
            sorted(t.value for t in STREAM_TYPES),
            "Messages published to the stream: they carry a sequence.",
        ),
        _frozen(
            "MODEL_SCOPED_TYPES",
            sorted(t.value for t in MODEL_SCOPED_TYPES),
            "Stream messages the models filter applies to.",
        ),
        _frozen("PROTOCOL_DEFAULTS", defaults, "Client defaults, in milliseconds where timed."),
        "/** Missing sequence numbers remembered to tell out-of-order from duplicate. */\n"
        f"export const MAX_TRACKED_HOLES = {MAX_TRACKED_HOLES};\n",
        "/** Keys kept per keyed state table (models, rate-limit endpoints). */\n"
        f"export const MAX_KEYS = {MAX_KEYS};\n",
        "/** The subprotocol the server selects; a browser offers it with its token. */\n"
        f"export const STREAM_SUBPROTOCOL = {_js(STREAM_SUBPROTOCOL)};\n",
        "/** Prefix of the subprotocol entry carrying the token (base64url, unpadded). */\n"
        f"export const TOKEN_SUBPROTOCOL_PREFIX = {_js(TOKEN_SUBPROTOCOL_PREFIX)};\n",
    ]
    return "\n".join(parts)


def _run(args: argparse.Namespace) -> int:
    text = render()
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


def add_parser(subparsers: Any) -> None:
    """Add the ``schema-js`` subcommand."""
    parser = subparsers.add_parser(
        "schema-js",
        help="print the protocol's constants as an ES module (the web page's protocol.js)",
        description="Print (or write) the protocol's constants as a JavaScript ES module.",
    )
    parser.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.set_defaults(func=_run)
