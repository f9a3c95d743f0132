"""``metricstream proxy``: the recording proxy and the stream server on one port."""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["add_parser", "parse_upstreams", "proxy"]


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
        "proxy",
        help="record the traffic of any OpenAI-compatible server",
        description=(
            "Forward /v1/... to an OpenAI-compatible server (vLLM, SGLang, TGI, Ollama, "
            "llama.cpp, a hosted API) unchanged, and record every request: tokens, time to "
            "first token, inter-token latency, cost, errors. The same port serves the live "
            "stream (/metrics/stream), the web dashboard (/), /metrics and /healthz."
        ),
    )
    parser.add_argument(
        "--upstream",
        required=True,
        action="append",
        metavar="[MODEL=]URL",
        help="base URL of the upstream server, e.g. http://localhost:8000 (a trailing /v1 "
        "is ignored); MODEL=URL (repeatable) sends requests for MODEL to URL instead",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port (default %(default)s)")
    parser.add_argument(
        "--prices",
        metavar="FILE",
        help="JSON or TOML price table (model -> per-million prices), added to the built-in one",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between state updates (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for each piece of an upstream response (default %(default)s)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for a connection to the upstream (default %(default)s)",
    )
    parser.add_argument(
        "--max-upstream-connections",
        type=int,
        default=1000,
        help="upstream connections open at once (default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("METRICSTREAM_TOKEN"),
        help="bearer token the metrics stream requires (default: $METRICSTREAM_TOKEN); "
        "proxied requests carry their own credentials to the upstream",
    )
    parser.add_argument(
        "--no-dashboard", action="store_true", help="do not serve the web dashboard at /"
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    parser.set_defaults(func=proxy)


def proxy(args: argparse.Namespace) -> int:
    """Run the proxy until interrupted; returns the exit status."""
    import asyncio

    from ..collector import MetricsCollector, load_prices
    from ..exceptions import ConfigError
    from ..server import MetricsHub, ServerSettings, StreamServer, uvicorn_config
    from ._app import create_proxy_app
    from ._proxy import upstream_client

    for name in ("interval", "timeout", "connect_timeout"):
        if not getattr(args, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    upstream, routes = parse_upstreams(args.upstream)
    prices = load_prices(args.prices) if args.prices else None
    hub = MetricsHub()
    settings = ServerSettings(token=args.token or None)
    collector = MetricsCollector(
        hub, interval=args.interval, prices=prices, connections=lambda: hub.connection_count
    )
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
        dashboard=not args.no_dashboard,
    )
    # No Server or Date header of our own: the client sees the upstream's.
    config = uvicorn_config(
        app,
        host=args.host,
        port=args.port,
        max_message_size=settings.max_message_size,
        log_level=args.log_level,
        server_header=False,
        date_header=False,
    )
    server = StreamServer(config, hub, close_timeout=settings.close_timeout)

    async def main() -> None:
        async with client, collector:
            await server.serve()

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(main())
    return 0 if server.started else 1
