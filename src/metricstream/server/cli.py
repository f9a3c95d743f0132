"""``metricstream serve``: the stream server on uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

__all__ = ["add_parser", "serve"]


def add_parser(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run the stream server",
        description=(
            "Serve /metrics/stream (WebSocket), /healthz and /metrics (Prometheus) on uvicorn. "
            "Host statistics are always published; --demo adds generated traffic."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port (default %(default)s)")
    parser.add_argument("--demo", action="store_true", help="publish generated demo traffic")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the demo traffic")
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between state updates (default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("METRICSTREAM_TOKEN"),
        help="require this bearer token (default: $METRICSTREAM_TOKEN; none when unset)",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        dest="allowed_origins",
        metavar="ORIGIN",
        help="accept browser handshakes from this origin only (repeatable), e.g. "
        "https://dash.example.com",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=10_000,
        help="stream connections plus sockets still in their handshake (default %(default)s)",
    )
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=64 * 1024,
        help="largest client message in bytes (default %(default)s)",
    )
    parser.add_argument(
        "--max-buffer-bytes",
        type=int,
        default=512 * 1024,
        help="per-client outbound buffer bound in bytes (default %(default)s)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=15.0,
        help="seconds between server heartbeats (default %(default)s)",
    )
    parser.add_argument(
        "--ws-per-message-deflate",
        action="store_true",
        help="negotiate permessage-deflate (off by default: it costs CPU and memory)",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=5.0,
        help="seconds a new connection may take to send its request (default %(default)s)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted; returns the exit status."""
    import asyncio

    from ..exceptions import ConfigError
    from ._app import create_app
    from ._hub import MetricsHub
    from ._limits import guarded_uvicorn_options, logging_config
    from ._settings import ServerSettings
    from ._uvicorn import StreamServer, uvicorn_config

    try:
        hub = MetricsHub(
            max_buffer_bytes=args.max_buffer_bytes, heartbeat_interval=args.heartbeat_interval
        )
        settings = ServerSettings(
            token=args.token or None,
            allowed_origins=tuple(args.allowed_origins) if args.allowed_origins else None,
            max_connections=args.max_connections,
            max_message_size=args.max_message_size,
            handshake_timeout=args.handshake_timeout,
        )
        guarded = guarded_uvicorn_options(hub, settings)
        if not args.interval > 0:
            raise ConfigError(f"--interval must be positive, got {args.interval}")
    except ConfigError as exc:
        print(f"metricstream serve: {exc}")
        return 2
    app = create_app(hub, settings)
    config = uvicorn_config(
        app,
        host=args.host,
        port=args.port,
        max_message_size=settings.max_message_size,
        ws_per_message_deflate=args.ws_per_message_deflate,
        log_level=args.log_level,
        log_config=logging_config(args.log_level),
        **guarded,
    )
    server = StreamServer(config, hub, close_timeout=settings.close_timeout)

    async def main() -> None:
        # Imported here: the collector is a separate part of the package.
        from ..collector import MetricsCollector, run_demo

        def connections() -> int:
            return hub.connection_count

        if args.demo:
            # run_demo drives a collector of its own (system statistics
            # included); a second collector would publish competing totals.
            demo = asyncio.get_running_loop().create_task(
                run_demo(hub, interval=args.interval, seed=args.seed, connections=connections)
            )
            try:
                await server.serve()
            finally:
                demo.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await demo
        else:
            async with MetricsCollector(hub, interval=args.interval, connections=connections):
                await server.serve()

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(main())
    return 0 if server.started else 1
