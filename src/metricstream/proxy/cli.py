"""``metricstream proxy``: the recording proxy and the stream server on one port.

Its options are defined once, in :data:`OPTIONS`: each is a flag, an
environment variable ``METRICSTREAM_*`` and a key of the ``[proxy]`` table of
a ``--config`` TOML file (see :mod:`metricstream._options`). The stream
server's own options (network, TLS, token, limits, logging, scraping) are
the ones ``serve`` has, from :mod:`metricstream.server._serveopts`, and so is
the uvicorn set-up.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._options import Option, add_options, check_positive, check_range
from ..server._serveopts import (
    INTERVAL,
    LIMIT_OPTIONS,
    LOGGING_OPTIONS,
    NETWORK_OPTIONS,
    SCRAPE_OPTIONS,
    SECURITY_OPTIONS,
)

__all__ = ["COMMAND", "OPTIONS", "add_parser", "parse_upstreams", "proxy"]

COMMAND = "proxy"

_UP = "upstream"

#: Every option of ``proxy``, in ``--help`` order.
OPTIONS: tuple[Option, ...] = (
    Option(
        name="upstream",
        kind="list",
        default=[],
        metavar="[MODEL=]URL",
        help="base URL of the upstream server, e.g. http://localhost:8000 (a trailing /v1 "
        "is ignored; required); MODEL=URL (repeatable) sends requests for MODEL to URL instead",
        group=_UP,
    ),
    Option(
        name="prices",
        kind="str",
        default=None,
        metavar="FILE",
        help="JSON or TOML price table (model -> per-million prices), added to the built-in one",
        group=_UP,
    ),
    Option(
        name="timeout",
        kind="float",
        default=600.0,
        help="seconds to wait for each piece of an upstream response",
        check=check_positive,
        group=_UP,
    ),
    Option(
        name="connect_timeout",
        kind="float",
        default=10.0,
        help="seconds to wait for a connection to the upstream",
        check=check_positive,
        group=_UP,
    ),
    Option(
        name="max_upstream_connections",
        kind="int",
        default=1000,
        help="upstream connections open at once",
        check=check_range(1, 1_000_000),
        group=_UP,
    ),
    Option(
        name="dashboard",
        kind="bool",
        default=True,
        help="serve the web dashboard at /",
        group=_UP,
    ),
    *NETWORK_OPTIONS,
    *SECURITY_OPTIONS,
    *LIMIT_OPTIONS,
    INTERVAL,
    *SCRAPE_OPTIONS,
    *LOGGING_OPTIONS,
)


def parse_upstreams(values: list[str]) -> tuple[str | None, dict[str, str]]:
    """``--upstream`` values: the plain URL (at most one) and ``MODEL=URL`` routes.

    A value is a route when it has an ``=`` before any ``://``; a model name
    may itself contain ``/`` (``meta-llama/Llama-3.1-8B-Instruct=http://...``).
    """
    from ..exceptions import ConfigError

    default: str | None = None
    routes: dict[str, str] = {}
    for value in values:
        model, sep, url = value.partition("=")
        if sep and "://" not in model:
            if not model or not url:
                raise ConfigError(f"--upstream {value!r}: expected MODEL=URL")
            if model in routes:
                raise ConfigError(f"--upstream: model {model!r} is routed twice")
            routes[model] = url
        elif default is not None:
            raise ConfigError("--upstream: only one URL without a model")
        else:
            default = value
    return default, routes


def add_parser(subparsers: Any) -> None:
    """Add the ``proxy`` subcommand."""
    parser = subparsers.add_parser(
        COMMAND,
        help="record the traffic of any OpenAI-compatible server",
        description=(
            "Forward /v1/... to an OpenAI-compatible server (vLLM, SGLang, TGI, Ollama, "
            "llama.cpp, a hosted API) unchanged, and record every request: tokens, time to "
            "first token, inter-token latency, cost, errors. The same port serves the live "
            "stream (/metrics/stream), the web dashboard (/), /metrics and /healthz. Every "
            "option can also be set by its METRICSTREAM_* variable or in the [proxy] table of "
            "a --config TOML file; a flag beats a variable, which beats the file."
        ),
    )
    add_options(parser, OPTIONS)
    parser.set_defaults(func=proxy, options=OPTIONS)


def proxy(args: argparse.Namespace) -> int:
    """Run the proxy until interrupted; returns the exit status.

    ``args`` carries every option of :data:`OPTIONS`, resolved by the
    command line (flag, environment, file, default).
    """
    import asyncio
    import contextlib

    from prometheus_client import CollectorRegistry

    from ..collector import EngineScraper, MetricsCollector, load_prices
    from ..exceptions import ConfigError
    from ..server import LLMExporter
    from ..server._serveopts import log_started, stream_hub, stream_server, stream_settings
    from ._app import create_proxy_app
    from ._proxy import base_url, upstream_client

    settings = stream_settings(args)
    if not args.upstream:
        raise ConfigError(
            "--upstream is required (or METRICSTREAM_UPSTREAM, or upstream in [proxy])"
        )
    upstream, routes = parse_upstreams(args.upstream)
    for url in (upstream, *routes.values()):
        if url is not None:
            base_url(url)  # a bad URL is refused before anything starts
    prices = load_prices(args.prices) if args.prices else None
    hub = stream_hub(args)
    # /metrics exports the LLM figures of every recorded request: the
    # collector publishes through the exporter (through the scraper first,
    # when there is one, which adds the engines' figures to its messages).
    exporter = LLMExporter(hub)
    engines = (
        EngineScraper(exporter, args.scrape, interval=args.scrape_interval) if args.scrape else None
    )
    collector = MetricsCollector(
        engines if engines is not None else exporter,
        interval=args.interval,
        prices=prices,
        connections=lambda: hub.connection_count,
    )
    registry = CollectorRegistry(auto_describe=True)
    registry.register(exporter)
    if engines is not None:
        registry.register(engines)  # each engine's up/failure figures
    client = upstream_client(
        connect_timeout=args.connect_timeout,
        read_timeout=args.timeout,
        max_connections=args.max_upstream_connections,
    )
    app = create_proxy_app(
        upstream,
        routes=routes,
        hub=hub,
        collector=collector,
        client=client,
        settings=settings,
        dashboard=args.dashboard,
        registry=registry,
    )
    # No Server or Date header of our own: the client sees the upstream's.
    server = stream_server(app, hub, settings, args, server_header=False, date_header=False)

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(client)
            if engines is not None:
                await stack.enter_async_context(engines)
            await stack.enter_async_context(collector)
            await server.serve()

    log_started(args, settings)
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(main())
    return 0 if server.started else 1
