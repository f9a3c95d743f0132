"""The recording proxy: an OpenAI-compatible reverse proxy in front of any LLM server.

- :class:`RecordingProxy` (ASGI) forwards ``/v1/...`` to the upstream
  unchanged, streams the answer back chunk by chunk, and records each request
  (tokens, TTFT, inter-token latency, cost, errors) on a collector; every
  other path goes to the stream server's app (``/metrics/stream``, ``/``,
  ``/metrics``, ``/healthz``).
- :func:`create_proxy_app` builds that app around a hub;
  :func:`upstream_client` the pooled HTTP/1.1 client it sends with
  (:class:`UpstreamClient`).
- ``metricstream proxy --upstream URL`` runs it all from the command line.
"""

from ._app import create_proxy_app
from ._proxy import HOP_BY_HOP, RecordingProxy, upstream_client
from ._upstream import UpstreamClient

__all__ = ["HOP_BY_HOP", "RecordingProxy", "UpstreamClient", "create_proxy_app", "upstream_client"]
