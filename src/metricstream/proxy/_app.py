"""The proxy and the stream server on one port."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from ..collector import MetricsCollector
from ..server import MetricsHub, ServerSettings, create_app
from ._proxy import RecordingProxy
from ._upstream import UpstreamClient

__all__ = ["create_proxy_app"]


def create_proxy_app(
    upstream: str | None,
    *,
    hub: MetricsHub,
    collector: MetricsCollector,
    client: UpstreamClient,
    settings: ServerSettings | None = None,
    dashboard: bool = True,
    routes: Mapping[str, str] | None = None,
    registry: CollectorRegistry | None = None,
    max_capture_bytes: int = 4 << 20,
) -> RecordingProxy:
    """``/v1/...`` proxied to ``upstream`` and recorded on ``collector``;
    the stream of ``hub`` at ``/metrics/stream``, the web dashboard at ``/``
    (unless ``dashboard=False``), ``/metrics`` and ``/healthz`` beside it.

    ``routes`` sends named models to other upstreams (see
    :class:`RecordingProxy`). ``collector`` should publish to ``hub`` (through
    an :class:`~metricstream.server.LLMExporter` registered in ``registry``
    for ``/metrics`` to export the LLM figures); ``client`` is the pooled HTTP
    client (:func:`~metricstream.proxy.upstream_client`), closed by the caller.
    Lifespan events reach the stream server's app, which closes the hub's
    clients on shutdown.
    """
    app = create_app(hub, settings, dashboard=dashboard, registry=registry)
    return RecordingProxy(
        app,
        upstream=upstream,
        collector=collector,
        client=client,
        routes=routes,
        max_capture_bytes=max_capture_bytes,
    )
