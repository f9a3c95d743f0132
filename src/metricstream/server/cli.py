"""``metricstream serve``: the stream server on uvicorn.

Its options are defined once, in :data:`OPTIONS`: each is a flag, an
environment variable ``METRICSTREAM_*`` and a key of the ``[serve]`` table of
a ``--config`` TOML file (see :mod:`metricstream._options`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._options import Option, add_options
from ._serveopts import (
    DATA,
    INTERVAL,
    LIMIT_OPTIONS,
    LOGGING_OPTIONS,
    NETWORK_OPTIONS,
    SCRAPE_OPTIONS,
    SECURITY_OPTIONS,
)

if TYPE_CHECKING:
    from ..collector import EngineScraper
    from ..protocol import WebSocketMessage
    from ._hub import MetricsHub
    from ._redis import RedisBackend
    from ._uvicorn import StreamServer

__all__ = ["COMMAND", "OPTIONS", "add_parser", "serve"]

COMMAND = "serve"

logger = logging.getLogger("metricstream.server")


#: Every option of ``serve``, in ``--help`` order.
OPTIONS: tuple[Option, ...] = (
    *NETWORK_OPTIONS,
    *SECURITY_OPTIONS,
    *LIMIT_OPTIONS,
    INTERVAL,
    Option(
        name="demo", kind="bool", default=False, help="publish generated demo traffic", group=DATA
    ),
    Option(
        name="seed",
        kind="int",
        metavar="SEED",
        default=None,
        help="random seed of the demo traffic",
        group=DATA,
    ),
    *SCRAPE_OPTIONS,
    Option(
        name="redis",
        kind="str",
        default=None,
        metavar="URL",
        help="share the stream with other nodes and publishers through Redis, "
        "e.g. redis://host:6379/0 (needs the redis extra)",
        group=DATA,
    ),
    *LOGGING_OPTIONS,
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

    from ..exceptions import ConfigError
    from ._app import create_app
    from ._prometheus import LLMExporter
    from ._serveopts import log_started, stream_hub, stream_server, stream_settings

    settings = stream_settings(args)
    if args.scrape and args.demo:
        raise ConfigError("--scrape and --demo do not combine: both publish the KV cache")
    hub = stream_hub(args)
    # /metrics exports the LLM figures of every request published: the
    # collector (the demo's, or the scraper's) publishes through it.
    exporter = LLMExporter(hub)
    engines = None
    if args.scrape:
        from ..collector import EngineScraper

        engines = EngineScraper(exporter, args.scrape, interval=args.scrape_interval)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(exporter)
    if engines is not None:
        registry.register(engines)  # each engine's up/failure figures
    backend = None
    if args.redis:
        from urllib.parse import urlsplit

        from .._logging import add_secret
        from ._redis import RedisBackend

        if (password := urlsplit(args.redis).password) is not None:
            add_secret(password)
        backend = RedisBackend(args.redis)
        # Every node counts the fleet's requests, as it reads them from the
        # shared stream; what this node publishes comes back that way too.
        exporter.follow(backend)
    app = create_app(hub, settings, registry=registry, backend=backend)
    server = stream_server(app, hub, settings, args)

    async def main() -> None:
        # Imported here: the collector is a separate part of the package.
        from ..collector import MetricsCollector, run_demo

        if args.exit_with_fd is not None:
            _exit_with_parent(args.exit_with_fd, server)

        def connections() -> int:
            return hub.connection_count

        if args.demo and backend is not None:
            await _fleet_demo(backend, hub, args, server, connections)
        elif args.demo:
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
        elif engines is not None and backend is not None:
            await _fleet_scrape(backend, engines, args, server, connections)
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

    log_started(args, settings)
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(main())
    return 0 if server.started else 1


async def _fleet_demo(
    backend: RedisBackend,
    hub: MetricsHub,
    args: argparse.Namespace,
    server: StreamServer,
    connections: Callable[[], int],
) -> None:
    """``serve --demo --redis``: one demo for the whole fleet.

    The demo runs on the node holding its lease; it publishes its requests
    and errors (and the rate limits and KV cache only it knows) into the
    shared stream, and the fleet's aggregator, on every node, turns them
    into the state messages as it does real traffic: two nodes never
    publish two demos or two sets of totals.
    """
    from ..collector import run_demo
    from ._redis import RedisAggregator, RedisLeasedTask

    sink = _DemoEvents(hub)

    async def demo() -> None:
        await run_demo(sink, interval=args.interval, seed=args.seed, system_stats=False)

    async with (
        RedisAggregator(backend, interval=args.interval, connections=connections),
        RedisLeasedTask(backend, "demo", demo, interval=args.interval),
    ):
        await server.serve()


async def _fleet_scrape(
    backend: RedisBackend,
    engines: EngineScraper,
    args: argparse.Namespace,
    server: StreamServer,
    connections: Callable[[], int],
) -> None:
    """``serve --scrape URL --redis``: one scraper for the whole fleet.

    The engines' own counters are the totals here, so the scraping node's
    collector publishes the state messages, and it runs on the node holding
    the ``scrape`` lease only: the nodes of a fleet, each given the same
    ``--scrape``, neither scrape the engines several times over nor publish
    competing totals. When that node dies, another takes over within the
    lease.
    """
    import asyncio

    from ..collector import MetricsCollector
    from ._redis import RedisLeasedTask

    async def scrape() -> None:
        async with (
            engines,
            MetricsCollector(engines, interval=args.interval, connections=connections),
        ):
            await asyncio.Event().wait()  # until the lease is lost or the node stops

    async with RedisLeasedTask(backend, "scrape", scrape, interval=args.interval):
        await server.serve()


class _DemoEvents:
    """Where the fleet's demo publishes: its events and the state only the
    demo has go to the hub (and so to Redis); its own totals, models, costs
    and host figures are left to the fleet's aggregator."""

    def __init__(self, hub: MetricsHub) -> None:
        from ..protocol import MessageType

        self._hub = hub
        self._types = frozenset(
            {
                MessageType.REQUEST_UPDATE,
                MessageType.ERROR_UPDATE,
                MessageType.RATE_LIMIT_UPDATE,
                MessageType.KV_CACHE_UPDATE,
            }
        )

    def publish(self, message: WebSocketMessage[Any], /) -> object:
        """Publish ``message`` if it is one the fleet takes from the demo."""
        if message.type in self._types:
            return self._hub.publish(message)
        return None


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
