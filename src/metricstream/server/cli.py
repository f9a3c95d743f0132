"""``metricstream serve``: the stream server on uvicorn.

Its options are defined once, in :data:`OPTIONS`: each is a flag, an
environment variable ``METRICSTREAM_*`` and a key of the ``[serve]`` table of
a ``--config`` TOML file (see :mod:`metricstream._options`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from typing import Any

from .._logging import LOG_FORMATS, LOG_LEVELS
from .._options import Option, add_options, check_port, check_positive, check_range

__all__ = ["COMMAND", "OPTIONS", "add_parser", "serve"]

COMMAND = "serve"

logger = logging.getLogger("metricstream.server")


def _check_token(value: Any) -> str | None:
    if not value.strip():
        return "must not be empty"
    if any(c in value for c in "\r\n"):
        return "must not contain line breaks"
    return None


def _check_origins(value: Any) -> str | None:
    for origin in value:
        if origin != "*" and "://" not in origin:
            return f"origin {origin!r} must look like 'https://host[:port]' or be '*'"
    return None


def _check_root_path(value: Any) -> str | None:
    if value and (not value.startswith("/") or value.endswith("/")):
        return f"must start with '/' and not end with one, got {value!r}"
    return None


_NET = "network"
_SEC = "security"
_LIM = "limits"
_LOG = "logging"
_DATA = "data"

#: Every option of ``serve``, in ``--help`` order.
OPTIONS: tuple[Option, ...] = (
    Option(name="host", kind="str", default="127.0.0.1", help="address to bind", group=_NET),
    Option(name="port", kind="int", default=8765, help="TCP port", check=check_port, group=_NET),
    Option(
        name="ssl_certfile",
        kind="str",
        default=None,
        metavar="FILE",
        help="PEM certificate (chain): serve HTTPS and wss://",
        group=_NET,
    ),
    Option(
        name="ssl_keyfile",
        kind="str",
        default=None,
        metavar="FILE",
        help="PEM private key of --ssl-certfile (when not in that file)",
        group=_NET,
    ),
    Option(
        name="proxy_headers",
        kind="bool",
        default=False,
        help="trust X-Forwarded-For/-Proto from --forwarded-allow-ips (behind a reverse proxy)",
        group=_NET,
    ),
    Option(
        name="forwarded_allow_ips",
        kind="str",
        default="127.0.0.1",
        metavar="IPS",
        help="comma-separated proxy addresses (or *) whose X-Forwarded-* headers are trusted",
        group=_NET,
    ),
    Option(
        name="root_path",
        kind="str",
        default="",
        metavar="PATH",
        help="URL prefix the app is served under by a proxy that strips it, e.g. /metricstream",
        check=_check_root_path,
        group=_NET,
    ),
    Option(
        name="token",
        kind="str",
        default=None,
        secret=True,
        metavar="TOKEN",
        help="require this bearer token on the stream (header, subprotocol or ?token=)",
        check=_check_token,
        group=_SEC,
    ),
    Option(
        name="protect_http",
        kind="bool",
        default=True,
        help="with --token, also require it on / (the web page) and /metrics",
        group=_SEC,
    ),
    Option(
        name="allowed_origins",
        kind="list",
        default=[],
        metavar="ORIGIN",
        help="accept browser handshakes from these origins only (repeatable or "
        "comma-separated), e.g. https://dash.example.com",
        check=_check_origins,
        group=_SEC,
        aliases=("--allowed-origin",),
    ),
    Option(
        name="max_connections",
        kind="int",
        default=10_000,
        help="stream connections plus sockets still in their handshake; more are refused",
        check=check_range(1, 10_000_000),
        group=_LIM,
    ),
    Option(
        name="max_message_size",
        kind="int",
        default=64 * 1024,
        help="largest client message in bytes",
        check=check_range(64, 2**31),
        group=_LIM,
    ),
    Option(
        name="max_buffer_bytes",
        kind="int",
        default=512 * 1024,
        help="per-client outbound buffer bound in bytes",
        check=check_positive,
        group=_LIM,
    ),
    Option(
        name="heartbeat_interval",
        kind="float",
        default=15.0,
        help="seconds between server heartbeats",
        check=check_positive,
        group=_LIM,
    ),
    Option(
        name="handshake_timeout",
        kind="float",
        default=5.0,
        help="seconds a new connection may take to send its request (408 after)",
        check=check_positive,
        group=_LIM,
    ),
    Option(
        name="ws_per_message_deflate",
        kind="bool",
        default=False,
        help="negotiate permessage-deflate (it costs CPU and memory)",
        group=_LIM,
    ),
    Option(
        name="interval",
        kind="float",
        default=1.0,
        help="seconds between state updates",
        check=check_positive,
        group=_DATA,
    ),
    Option(
        name="demo", kind="bool", default=False, help="publish generated demo traffic", group=_DATA
    ),
    Option(
        name="seed",
        kind="int",
        metavar="SEED",
        default=None,
        help="random seed of the demo traffic",
        group=_DATA,
    ),
    Option(
        name="scrape",
        kind="list",
        default=[],
        metavar="URL",
        help="an inference engine's Prometheus endpoint (vLLM, SGLang, TGI) whose figures "
        "to publish, e.g. http://localhost:8000/metrics (repeatable)",
        group=_DATA,
    ),
    Option(
        name="scrape_interval",
        kind="float",
        default=1.0,
        help="seconds between two scrapes of an engine",
        check=check_positive,
        group=_DATA,
    ),
    Option(
        name="redis",
        kind="str",
        default=None,
        metavar="URL",
        help="share the stream with other nodes and publishers through Redis, "
        "e.g. redis://host:6379/0 (needs the redis extra)",
        group=_DATA,
    ),
    Option(
        name="log_level",
        kind="str",
        default="info",
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help="lowest level logged (to stderr)",
        group=_LOG,
    ),
    Option(
        name="log_format",
        kind="str",
        default="text",
        choices=LOG_FORMATS,
        metavar="FORMAT",
        help="text lines, or one JSON object per line for log shippers",
        group=_LOG,
    ),
    Option(
        name="access_log",
        kind="bool",
        default=True,
        help="log every HTTP request and WebSocket handshake (tokens redacted)",
        group=_LOG,
    ),
)


def add_parser(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        COMMAND,
        help="run the stream server",
        description=(
            "Serve /metrics/stream (WebSocket), /healthz, /metrics (Prometheus) and the web "
            "dashboard at / on uvicorn. Host statistics are always published; --demo adds "
            "generated traffic. Every option can also be set by its METRICSTREAM_* variable "
            "or in the [serve] table of a --config TOML file; a flag beats a variable, which "
            "beats the file."
        ),
    )
    add_options(parser, OPTIONS)
    # Internal (used by ``metricstream demo``): the read end of a pipe whose
    # write end the parent holds. When the parent dies, however it dies
    # (SIGKILL included), the kernel closes that end and the server stops.
    parser.add_argument("--exit-with-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=serve, options=OPTIONS)


def serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted; returns the exit status.

    ``args`` carries every option of :data:`OPTIONS`, resolved by the
    command line (flag, environment, file, default).
    """
    import asyncio

    from prometheus_client import CollectorRegistry

    from .._logging import add_secret, uvicorn_log_options
    from ..exceptions import ConfigError
    from ._app import create_app
    from ._hub import MetricsHub
    from ._limits import guarded_uvicorn_options
    from ._prometheus import LLMExporter
    from ._settings import ServerSettings
    from ._uvicorn import StreamServer, uvicorn_config

    if args.ssl_keyfile and not args.ssl_certfile:
        raise ConfigError("--ssl-keyfile needs --ssl-certfile")
    if args.token:
        add_secret(args.token)
    if args.scrape and args.demo:
        raise ConfigError("--scrape and --demo do not combine: both publish the KV cache")
    hub = MetricsHub(
        max_buffer_bytes=args.max_buffer_bytes, heartbeat_interval=args.heartbeat_interval
    )
    # /metrics exports the LLM figures of every request published: the
    # collector (the demo's, or the scraper's) publishes through it.
    exporter = LLMExporter(hub)
    engines = None
    if args.scrape:
        from ..collector import EngineScraper

        engines = EngineScraper(exporter, args.scrape, interval=args.scrape_interval)
    settings = ServerSettings(
        token=args.token or None,
        allowed_origins=tuple(args.allowed_origins) if args.allowed_origins else None,
        max_connections=args.max_connections,
        max_message_size=args.max_message_size,
        protect_http=args.protect_http,
        handshake_timeout=args.handshake_timeout,
    )
    guarded = guarded_uvicorn_options(hub, settings)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(exporter)
    if engines is not None:
        registry.register(engines)  # each engine's up/failure figures
    backend = None
    if args.redis:
        from urllib.parse import urlsplit

        from ._redis import RedisBackend

        if (password := urlsplit(args.redis).password) is not None:
            add_secret(password)
        backend = RedisBackend(args.redis)
    app = create_app(hub, settings, registry=registry, backend=backend)
    tls: dict[str, Any] = {}
    if args.ssl_certfile:
        tls = {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}
    config = uvicorn_config(
        app,
        host=args.host,
        port=args.port,
        max_message_size=settings.max_message_size,
        ws_per_message_deflate=args.ws_per_message_deflate,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        root_path=args.root_path,
        access_log=args.access_log,
        **uvicorn_log_options(args.log_level),
        **tls,
        **guarded,
    )
    if args.ssl_certfile:
        # Loads and checks the certificate and key now: a wrong path or a
        # key that does not match is a configuration error, not a traceback.
        try:
            config.load()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot use the TLS certificate or key: {exc}") from None
    server = StreamServer(config, hub, close_timeout=settings.close_timeout)

    async def main() -> None:
        # Imported here: the collector is a separate part of the package.
        from ..collector import MetricsCollector, run_demo

        if args.exit_with_fd is not None:
            _exit_with_parent(args.exit_with_fd, server)

        def connections() -> int:
            return hub.connection_count

        if args.demo:
            # run_demo drives a collector of its own (system statistics
            # included); a second collector would publish competing totals.
            demo = asyncio.get_running_loop().create_task(
                run_demo(exporter, interval=args.interval, seed=args.seed, connections=connections)
            )
            try:
                await server.serve()
            finally:
                demo.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await demo
        elif engines is not None:
            # The collector publishes through the scraper, which adds the
            # engines' figures to its messages: one source of totals.
            async with (
                engines,
                MetricsCollector(engines, interval=args.interval, connections=connections),
            ):
                await server.serve()
        elif backend is not None:
            # The fleet's totals come from one aggregator over every node's
            # and worker's requests, not from each node's own share.
            from ._redis import RedisAggregator

            async with RedisAggregator(backend, interval=args.interval, connections=connections):
                await server.serve()
        else:
            async with MetricsCollector(exporter, interval=args.interval, connections=connections):
                await server.serve()

    logger.info(
        "stream at %s%s over %s, token %s",
        args.root_path,
        settings.path,
        "TLS (wss://)" if args.ssl_certfile else "plain ws://",
        "required" if settings.token else "not required",
    )
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(main())
    return 0 if server.started else 1


def _exit_with_parent(fd: int, server: Any) -> None:
    """Shut ``server`` down (gracefully, like SIGTERM) once ``fd`` reads end-of-file.

    ``fd`` is the read end of a pipe nobody writes to: it becomes readable
    only when the last write end closes, i.e. when the parent process has
    exited, whichever way.
    """
    import asyncio
    import os

    loop = asyncio.get_running_loop()

    def on_readable() -> None:
        try:
            data = os.read(fd, 1)
        except BlockingIOError:  # pragma: no cover - spurious wake-up
            return
        if not data:
            loop.remove_reader(fd)
            os.close(fd)
            logger.info("the parent process is gone: stopping")
            server.should_exit = True

    os.set_blocking(fd, False)
    loop.add_reader(fd, on_readable)
