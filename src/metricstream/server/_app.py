"""FastAPI integration: a router to include in any app, and a standalone app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from ..exceptions import ConfigError
from ._endpoint import StreamEndpoint
from ._hub import MetricsHub
from ._settings import ServerSettings

if TYPE_CHECKING:
    from ._redis import RedisBackend

__all__ = ["HubCollector", "create_app", "create_router"]

# Buckets of the per-client buffer histogram, in bytes.
_BUFFER_BUCKETS = (0, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


class HubCollector(Collector):
    """Prometheus collector reading a hub's figures at scrape time.

    The hub keeps plain integer counters; turning them into metrics only when
    scraped keeps the per-delivery path free of metric-library calls.
    """

    def __init__(self, hub: MetricsHub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        """Yield the current figures."""
        hub = self._hub
        stats = hub.stats
        yield GaugeMetricFamily(
            "metricstream_connections", "WebSocket connections attached now", hub.connection_count
        )
        yield CounterMetricFamily(
            "metricstream_connections_opened",
            "Connections attached since start",
            stats.connections_opened,
        )
        rejected = CounterMetricFamily(
            "metricstream_connections_rejected",
            "Connections refused or closed by a limit, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(stats.rejections.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield CounterMetricFamily(
            "metricstream_messages_published", "Stream messages published", stats.published
        )
        yield CounterMetricFamily(
            "metricstream_messages_sent",
            "Messages delivered to clients (stream and connection-local)",
            stats.messages_sent,
        )
        yield CounterMetricFamily(
            "metricstream_frames_sent", "WebSocket frames written", stats.frames_sent
        )
        yield CounterMetricFamily(
            "metricstream_bytes_sent", "Payload bytes of the frames written", stats.bytes_sent
        )
        yield CounterMetricFamily(
            "metricstream_evictions",
            "Slow consumers closed with 4008 (buffer bound exceeded)",
            stats.evictions,
        )
        yield CounterMetricFamily(
            "metricstream_send_suspensions",
            "Flushes that found a client's transport paused or its writer still busy",
            stats.send_suspensions,
        )
        yield CounterMetricFamily(
            "metricstream_direct_write_fallbacks",
            "Connections written through ASGI because uvicorn's internals were not as expected",
            stats.direct_write_fallbacks,
        )
        yield CounterMetricFamily(
            "metricstream_replay_hits", "Resumes served from the replay log", stats.replay_hits
        )
        yield CounterMetricFamily(
            "metricstream_replay_misses",
            "Resumes refused (wrong epoch, beyond the log): full snapshot sent",
            stats.replay_misses,
        )
        yield GaugeMetricFamily(
            "metricstream_sequence", "Sequence of the newest published message", hub.sequence
        )
        yield GaugeMetricFamily(
            "metricstream_replay_log_entries", "Messages held by the replay log", len(hub.log)
        )
        sizes = sorted(sub.buffered_bytes for sub in hub.subscribers)
        buckets: list[tuple[str, float]] = []
        index = 0
        for bound in _BUFFER_BUCKETS:
            while index < len(sizes) and sizes[index] <= bound:
                index += 1
            buckets.append((str(float(bound)), index))
        buckets.append(("+Inf", len(sizes)))
        yield HistogramMetricFamily(
            "metricstream_client_buffer_bytes",
            "Bytes waiting per client (outbox and transport buffer), sampled at scrape",
            buckets=buckets,
            sum_value=sum(sizes),
        )
        yield GaugeMetricFamily(
            "metricstream_client_buffer_bytes_max",
            "Largest per-client buffer now",
            sizes[-1] if sizes else 0,
        )


def create_router(
    hub: MetricsHub,
    settings: ServerSettings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    endpoint: StreamEndpoint | None = None,
    backend: RedisBackend | None = None,
) -> APIRouter:
    """A FastAPI router serving ``hub``: the WebSocket stream, ``/healthz``, ``/metrics``.

    Include it in your own app with ``app.include_router(create_router(hub))``.
    ``registry`` receives the hub's Prometheus collector; by default the
    router gets a registry of its own, served at ``/metrics``. ``endpoint``
    is the stream's :class:`StreamEndpoint` (built from ``hub`` and
    ``settings`` when omitted); pass your own to share its token throttle
    with other routes that check the token. With a ``backend``
    (:class:`~metricstream.server.RedisBackend`) the hub is a node of a
    stream shared through Redis: the router's lifespan (merged into the
    app's by ``include_router``) starts it and stops it.
    """
    settings = settings if settings is not None else ServerSettings()
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    if endpoint is None:
        endpoint = StreamEndpoint(hub, settings)
    elif endpoint.hub is not hub or endpoint.settings is not settings:
        raise ConfigError("endpoint must serve the same hub with the same settings")
    registry.register(HubCollector(hub))
    if backend is not None:
        shared = backend

        @asynccontextmanager
        async def lifespan(_: Any) -> AsyncIterator[None]:
            await shared.start(hub)
            try:
                yield
            finally:
                await shared.stop()

        router = APIRouter(lifespan=lifespan)
    else:
        router = APIRouter()
    router.routes.append(WebSocketRoute(settings.path, endpoint, name="metrics_stream"))

    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        # Degraded still answers 200: the node keeps its clients and serves
        # what it has while its shared stream is away.
        status = "shutting_down" if hub.closing else "degraded" if hub.degraded else "ok"
        body: dict[str, Any] = {
            "status": status,
            "connections": hub.connection_count,
            "sequence": hub.sequence,
            "epoch": hub.epoch,
        }
        if hub.degraded:
            body["reason"] = hub.degraded
        return JSONResponse(body, status_code=503 if hub.closing else 200)

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        refusal = endpoint.http_refusal(request.scope)
        if refusal is not None:
            return _refused(refusal)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def create_app(
    hub: MetricsHub | None = None,
    settings: ServerSettings | None = None,
    *,
    dashboard: bool = True,
    registry: CollectorRegistry | None = None,
    backend: RedisBackend | None = None,
    **fastapi_kwargs: Any,
) -> FastAPI:
    """A standalone FastAPI app around :func:`create_router`.

    ``registry`` is the Prometheus registry served at ``/metrics`` (the
    hub's figures are added to it); register an
    :class:`~metricstream.server.LLMExporter` in it to export the LLM figures.

    On lifespan shutdown the hub's clients are closed with 1001 (when the
    ASGI server has not closed them already). ``app.state.hub`` is the hub.
    With ``dashboard`` (the default) the browser dashboard is served at ``/``.
    ``backend`` shares the stream through Redis (see :func:`create_router`).
    """
    hub = hub if hub is not None else MetricsHub()
    settings = settings if settings is not None else ServerSettings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await hub.close_all(grace=settings.close_timeout)  # 1001, going away

    app = FastAPI(
        title="metricstream",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        **fastapi_kwargs,
    )
    app.state.hub = hub
    # One endpoint, so the page's token check shares the stream's throttle.
    endpoint = StreamEndpoint(hub, settings)
    app.include_router(
        create_router(hub, settings, registry=registry, endpoint=endpoint, backend=backend)
    )
    if dashboard:
        # Imported here: the page's router lives with the dashboards.
        from ..dashboard.web import create_web_router

        app.include_router(create_web_router())
        if settings.token is not None and settings.protect_http:
            app.add_middleware(_PageTokenGate, endpoint=endpoint)
    return app


def _refused(status: int) -> Response:
    if status == 429:
        return JSONResponse(
            {"detail": "too many failed token checks from this address; try again later"},
            status_code=429,
            headers={"Retry-After": "5"},
        )
    return JSONResponse(
        {"detail": "missing or invalid token"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="metricstream"'},
    )


class _PageTokenGate:
    """Requires the token on the dashboard page (``/``).

    Its static assets stay public (they are the same for everyone and hold
    no data); the figures come over the stream, which checks the token
    itself. A middleware rather than a route dependency, because the page's
    router belongs to the dashboard package.
    """

    def __init__(self, app: ASGIApp, endpoint: StreamEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            refusal = self.endpoint.http_refusal(scope) if path in ("", "/") else None
            if refusal is not None:
                await _refused(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)
