"""``metricstream watch``: print a stream's messages live, one line each."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..protocol.constants import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT

__all__ = ["add_parser", "summary", "watch"]


def _names(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def _type_names(value: str) -> list[str]:
    """``--type`` values: message types of the protocol, anything else is a usage error."""
    from ..protocol import MessageType

    known = sorted(t.value for t in MessageType)
    names = _names(value)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown message type {', '.join(unknown)} (known: {', '.join(known)})"
        )
    return names


def _flatten(groups: list[list[str]] | None) -> tuple[str, ...] | None:
    # ``--type a --type b,c``: every occurrence appends a list.
    return None if groups is None else tuple(name for group in groups for name in group)


def summary(message: Any) -> str:
    """One human-readable line for ``message`` (a ``WebSocketMessage``)."""
    import time

    import msgspec

    stamp = time.strftime("%H:%M:%S", time.localtime(message.timestamp / 1000))
    head = f"{stamp}.{message.timestamp % 1000:03d} {message.type}"
    if message.sequence is not None:
        head += f" #{message.sequence}"
    data = msgspec.to_builtins(message.data)
    if isinstance(data, dict):
        fields = []
        for key, value in data.items():
            if isinstance(value, float):
                fields.append(f"{key}={value:.4g}")
            elif isinstance(value, int | str | bool) or value is None:
                fields.append(f"{key}={value}")
            elif isinstance(value, list | dict):
                fields.append(f"{key}=[{len(value)}]")
        body = " ".join(fields)
    else:
        body = "" if data is None else str(data)
    line = f"{head} {body}".rstrip()
    return line if len(line) <= _SUMMARY_WIDTH else line[: _SUMMARY_WIDTH - 1] + "…"


_SUMMARY_WIDTH = 200


def _final_error(exc: BaseException) -> bool:
    """Whether the client ends on ``exc`` (and so has logged it at ERROR)."""
    from ..exceptions import ConfigError, ConnectionRejectedError
    from ..protocol import CloseAction, close_action, handshake_action

    if isinstance(exc, ConfigError):
        return True
    code = getattr(exc, "code", None)
    # ``code`` is a close code, or the HTTP status of a refused handshake.
    return (
        isinstance(exc, ConnectionRejectedError)
        and code is not None
        and CloseAction.FATAL in (close_action(code), handshake_action(code))
    )


def add_parser(subparsers: Any) -> None:
    """Add the ``watch`` subcommand."""
    parser = subparsers.add_parser(
        "watch",
        help="print a stream's messages live",
        description=(
            "Connect to a metrics stream (metricstream's own or a FakeAI server's), "
            "reconnecting and resuming as needed, and print every message: a one-line "
            "summary, or with --json one JSON line. Connection changes go to stderr. "
            "Ctrl-C exits (status 130)."
        ),
    )
    parser.add_argument("url", help="stream URL, e.g. ws://127.0.0.1:8765/metrics/stream")
    parser.add_argument(
        "--dialect",
        choices=["auto", "native", "fakeai"],
        default="auto",
        help="server protocol (default %(default)s: decided by the first frame)",
    )
    parser.add_argument(
        "--type",
        "--types",
        dest="types",
        action="append",
        type=_type_names,
        metavar="TYPE",
        help="message type wanted (repeatable, or comma-separated; default: all)",
    )
    parser.add_argument(
        "--model",
        "--models",
        dest="models",
        action="append",
        type=_names,
        metavar="MODEL",
        help="model wanted (repeatable, or comma-separated; default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print each message as one JSON line")
    parser.add_argument(
        "--token",
        default=os.environ.get("METRICSTREAM_TOKEN"),
        help="bearer token (default: $METRICSTREAM_TOKEN)",
    )
    parser.add_argument("--count", type=int, default=None, help="exit after this many messages")
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=DEFAULT_HEARTBEAT_INTERVAL,
        help="seconds (default %(default)s)",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=DEFAULT_HEARTBEAT_TIMEOUT,
        help="seconds (default %(default)s)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="give up after this many failed reconnects in a row (default: never)",
    )
    parser.set_defaults(func=watch)


def watch(args: argparse.Namespace) -> int:
    """Run ``metricstream watch``; returns the exit status.

    0 after ``--count`` messages, 1 when the reconnect attempts ran out, 2 for
    an invalid option, 3 when the server rejected the client (auth, origin),
    130 after Ctrl-C.
    """
    import asyncio
    import sys

    from ..exceptions import ConfigError, ConnectionRejectedError
    from ..protocol import encode
    from ._client import WebSocketService
    from ._config import WebSocketConfig, redact_url
    from ._handlers import EventHandlers

    try:
        config = WebSocketConfig(
            url=args.url,
            dialect=args.dialect,
            types=_flatten(args.types),
            models=_flatten(args.models),
            token=args.token,
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_timeout=args.heartbeat_timeout,
            max_reconnect_attempts=args.max_attempts,
        )
    except ConfigError as exc:
        print(f"metricstream watch: {exc}", file=sys.stderr)
        return 2

    def note(text: str) -> None:
        print(f"metricstream watch: {text}", file=sys.stderr, flush=True)

    def on_error(exc: BaseException) -> None:
        # A final error (rejection, bad URL) is logged by the client itself
        # at ERROR, which the command's handler prints: saying it here too
        # printed it twice. Passing errors are logged at INFO only.
        if not _final_error(exc):
            note(f"error: {exc}")

    async def main() -> int:
        # Giving up is logged by the client (ERROR); the exit status says it too.
        handlers = EventHandlers(
            on_connect=lambda: note(f"connected to {redact_url(config.url)}"),
            on_disconnect=lambda reason: note(f"disconnected: {reason}"),
            on_error=on_error,
            on_reconnecting=lambda attempt, delay: note(
                f"reconnecting in {delay:.2f} s (attempt {attempt})"
            ),
            on_reconnected=lambda: note("reconnected"),
        )
        client = WebSocketService(config, handlers)
        out = sys.stdout.buffer
        seen = 0
        async with client:
            stream = client.messages()
            runner = asyncio.create_task(client.run())
            async for message in stream:
                if args.json:
                    out.write(encode(message) + b"\n")
                else:
                    out.write(summary(message).encode() + b"\n")
                out.flush()
                seen += 1
                if args.count is not None and seen >= args.count:
                    runner.cancel()
                    return 0
            try:
                await runner
            except ConnectionRejectedError:
                return 3
            except ConnectionError:
                return 1
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        # asyncio.run cancelled main(), which closed the client on its way out.
        note("interrupted")
        return 130
