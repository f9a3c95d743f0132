"""``metricstream watch``: print a stream's messages as JSON lines."""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["add_parser", "watch"]


def _names(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def add_parser(subparsers: Any) -> None:
    """Add the ``watch`` subcommand."""
    parser = subparsers.add_parser(
        "watch",
        help="print a stream's messages as JSON lines",
        description=(
            "Connect to a metrics stream (metricstream's own or a FakeAI server's), "
            "reconnecting and resuming as needed, and print every message as one JSON "
            "line. Connection events go to stderr."
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
        "--types", "--type", type=_names, help="comma-separated message types wanted"
    )
    parser.add_argument("--models", "--model", type=_names, help="comma-separated models wanted")
    parser.add_argument(
        "--token",
        default=os.environ.get("METRICSTREAM_TOKEN"),
        help="bearer token (default: $METRICSTREAM_TOKEN)",
    )
    parser.add_argument("--count", type=int, default=None, help="exit after this many messages")
    parser.add_argument(
        "--heartbeat-interval", type=float, default=10.0, help="seconds (default %(default)s)"
    )
    parser.add_argument(
        "--heartbeat-timeout", type=float, default=5.0, help="seconds (default %(default)s)"
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
    an invalid option, 3 when the server rejected the client (auth, origin).
    """
    import asyncio
    import sys

    from ..exceptions import ConfigError, ConnectionRejectedError
    from ..protocol import encode
    from ._client import WebSocketService
    from ._config import WebSocketConfig

    try:
        config = WebSocketConfig(
            url=args.url,
            dialect=args.dialect,
            types=args.types,
            models=args.models,
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

    async def main() -> int:
        client = WebSocketService(
            config,
            on_connect=lambda: note(f"connected to {config.url}"),
            on_disconnect=lambda reason: note(f"disconnected: {reason}"),
            on_reconnecting=lambda attempt, delay: note(
                f"reconnecting in {delay:.2f} s (attempt {attempt})"
            ),
        )
        out = sys.stdout.buffer
        seen = 0
        async with client:
            stream = client.messages()
            runner = asyncio.create_task(client.run())
            async for message in stream:
                out.write(encode(message) + b"\n")
                out.flush()
                seen += 1
                if args.count is not None and seen >= args.count:
                    runner.cancel()
                    return 0
            try:
                await runner
            except ConnectionRejectedError as exc:
                note(str(exc))
                return 3
            except ConnectionError as exc:
                note(str(exc))
                return 1
        return 0

    return asyncio.run(main())
