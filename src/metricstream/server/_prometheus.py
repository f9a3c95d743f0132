"""LLMExporter: the LLM figures of the stream, as Prometheus metrics.

Built from the published messages themselves (``request_update`` and
``error_update`` events), so it counts the same requests whichever source
recorded them: the middleware, a recording proxy, the demo, embedding code.
On a node of a stream shared through Redis it counts what the node reads
from the shared stream instead (:meth:`LLMExporter.follow`): the fleet's
requests, each once.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..protocol import ErrorUpdatePayload, MessageType, RequestUpdatePayload, WebSocketMessage

if TYPE_CHECKING:
    from ._redis import RedisBackend

__all__ = ["LLM_METRIC_NAMES", "LLMExporter"]

#: Upper bounds (seconds) of the histograms: end-to-end latency spans
#: embeddings (tens of ms) to long reasoning answers (minutes); first tokens
#: come in tens of ms to seconds; tokens follow each other in ms.
LATENCY_BUCKETS: Final = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
ITL_BUCKETS: Final = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)

_PREFIX: Final = "metricstream_llm_"
#: Every metric name the exporter serves (as written on ``/metrics``, with
#: the ``_total`` / ``_bucket`` suffixes a query uses).
LLM_METRIC_NAMES: Final[frozenset[str]] = frozenset(
    {
        f"{_PREFIX}requests_total",
        f"{_PREFIX}prompt_tokens_total",
        f"{_PREFIX}completion_tokens_total",
        f"{_PREFIX}cost_usd_total",
        f"{_PREFIX}errors_total",
        f"{_PREFIX}requests_in_flight",
        *(
            f"{_PREFIX}{name}{suffix}"
            for name in (
                "request_duration_seconds",
                "time_to_first_token_seconds",
                "inter_token_latency_seconds",
            )
            for suffix in ("_bucket", "_sum", "_count")
        ),
    }
)
#: The label value of models (error types) past the bound: a flood of distinct
#: names must not grow the exporter's memory or Prometheus's series count.
OTHER: Final = "(other)"


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        index = len(self.bounds)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                index = i
                break
        self.counts[index] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append(("+Inf" if math.isinf(bound) else repr(float(bound)), running))
        return out


class _Model:
    __slots__ = (
        "completion_tokens",
        "cost",
        "errors",
        "itl",
        "latency",
        "prompt_tokens",
        "requests",
        "ttft",
    )

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.ttft = _Histogram(TTFT_BUCKETS)
        self.itl = _Histogram(ITL_BUCKETS)
        self.errors: dict[str, int] = {}


def _seconds(ms: float | None) -> float | None:
    if ms is None or not math.isfinite(ms) or ms < 0:
        return None
    return ms / 1000.0


class LLMExporter(Collector):
    """A :class:`~metricstream.collector.Publisher` that passes every message
    on to ``publisher`` and keeps Prometheus metrics of the LLM requests in them.

    Register it in the registry served at ``/metrics``
    (``create_app(hub, registry=registry)``) and publish through it::

        exporter = LLMExporter(hub)
        registry = CollectorRegistry()
        registry.register(exporter)
        app = create_app(hub, registry=registry)
        async with MetricsCollector(exporter) as collector: ...

    Per model (label ``model``): requests by ``status``, prompt and completion
    tokens, cost, end-to-end latency, time to first token and inter-token
    latency histograms, requests in flight; errors by ``model`` and
    ``error_type``. Counters count since the exporter was created. At most
    ``max_models`` models and ``max_error_types`` error types are told apart;
    the rest are counted under ``(other)``. A request published as
    ``in_progress`` is in flight until its final update (same ``id``); at most
    ``max_in_flight`` are tracked.

    On a node of a stream shared through Redis, :meth:`follow` the node's
    backend: the exporter then counts every request of the fleet as the
    node reads it from the shared stream, and no longer what is published
    through it (that comes back through the stream).
    """

    def __init__(
        self,
        publisher: Any,
        *,
        max_models: int = 256,
        max_error_types: int = 64,
        max_in_flight: int = 100_000,
    ) -> None:
        self._publisher = publisher
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._max_models = max_models
        self._error_types: set[str] = set()
        self._max_error_types = max_error_types
        # Request id -> model, oldest first, for requests started not finished.
        self._in_flight: OrderedDict[str, str] = OrderedDict()
        self._max_in_flight = max_in_flight
        self._count_published = True

    def publish(self, message: WebSocketMessage[Any], /) -> object:
        """Publish ``message`` to the wrapped publisher; count it once published.

        Counted only after the publisher took it, so a message it refused is
        not counted either; not counted here at all once the exporter
        follows a shared stream (:meth:`follow`).
        """
        result = self._publisher.publish(message)
        if self._count_published:
            self.observe(message)
        return result

    def observe(self, message: WebSocketMessage[Any], /) -> None:
        """Count ``message`` (a ``request_update`` or an ``error_update``;
        other types are ignored) without publishing it."""
        data = message.data
        if message.type == MessageType.REQUEST_UPDATE and isinstance(data, RequestUpdatePayload):
            self.observe_request(data)
        elif message.type == MessageType.ERROR_UPDATE and isinstance(data, ErrorUpdatePayload):
            self.observe_error(data)

    def follow(self, backend: RedisBackend) -> None:
        """Count the fleet's requests: every message ``backend``'s node takes
        from the shared stream, once, instead of what is published through
        this exporter.

        The log a node loads from Redis at start is not counted: those
        requests came before the node's counters started at zero (a
        restarted node would otherwise count them twice across its restart).
        After a reload (a hole, a new epoch) the messages the node had not
        read yet are counted, none twice. Call before ``backend`` starts.
        """
        self._count_published = False
        backend.add_listener(self.observe, history=False)

    def _model(self, name: str) -> _Model:
        stats = self._models.get(name)
        if stats is None:
            if len(self._models) >= self._max_models:
                name = OTHER
                stats = self._models.get(name)
            if stats is None:
                stats = self._models[name] = _Model()
        return stats

    def observe_request(self, request: RequestUpdatePayload) -> None:
        """Count one ``request_update``."""
        with self._lock:
            if request.status == "in_progress":
                self._in_flight[request.id] = request.model
                self._in_flight.move_to_end(request.id)
                while len(self._in_flight) > self._max_in_flight:
                    self._in_flight.popitem(last=False)
                self._model(request.model)
                return
            self._in_flight.pop(request.id, None)
            stats = self._model(request.model)
            stats.requests[request.status] = stats.requests.get(request.status, 0) + 1
            stats.prompt_tokens += request.prompt_tokens
            stats.completion_tokens += request.completion_tokens
            if math.isfinite(request.cost) and request.cost > 0:
                stats.cost += request.cost
            latency = _seconds(request.latency_ms)
            if latency is not None:
                stats.latency.observe(latency)
            ttft = _seconds(request.time_to_first_token_ms)
            if ttft is not None:
                stats.ttft.observe(ttft)
            itl = _seconds(request.inter_token_latency_ms)
            if itl is not None:
                stats.itl.observe(itl)

    def observe_error(self, error: ErrorUpdatePayload) -> None:
        """Count one ``error_update``."""
        with self._lock:
            error_type = error.error_type
            if error_type not in self._error_types:
                if len(self._error_types) < self._max_error_types:
                    self._error_types.add(error_type)
                else:
                    error_type = OTHER
            stats = self._model(error.model or "")
            stats.errors[error_type] = stats.errors.get(error_type, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """Yield the metrics (every family, even before the first request,
        so dashboards and alerts can name them from the start)."""
        requests = CounterMetricFamily(
            f"{_PREFIX}requests",
            "LLM requests finished, by model and status",
            labels=["model", "status"],
        )
        prompt = CounterMetricFamily(
            f"{_PREFIX}prompt_tokens",
            "Prompt (input) tokens of finished requests",
            labels=["model"],
        )
        completion = CounterMetricFamily(
            f"{_PREFIX}completion_tokens",
            "Completion (output) tokens of finished requests",
            labels=["model"],
        )
        cost = CounterMetricFamily(
            f"{_PREFIX}cost_usd", "Cost of finished requests in US dollars", labels=["model"]
        )
        errors = CounterMetricFamily(
            f"{_PREFIX}errors",
            "Errors reported, by model and error type",
            labels=["model", "error_type"],
        )
        in_flight = GaugeMetricFamily(
            f"{_PREFIX}requests_in_flight",
            "Requests started and not yet finished",
            labels=["model"],
        )
        latency = HistogramMetricFamily(
            f"{_PREFIX}request_duration_seconds",
            "End-to-end latency of finished requests",
            labels=["model"],
        )
        ttft = HistogramMetricFamily(
            f"{_PREFIX}time_to_first_token_seconds",
            "Time to the first content token of streamed requests",
            labels=["model"],
        )
        itl = HistogramMetricFamily(
            f"{_PREFIX}inter_token_latency_seconds",
            "Mean time between tokens of a streamed request (one observation per request)",
            labels=["model"],
        )
        with self._lock:
            flying: dict[str, int] = {}
            for model in self._in_flight.values():
                key = model if model in self._models else OTHER
                flying[key] = flying.get(key, 0) + 1
            for name, stats in sorted(self._models.items()):
                for error_type, count in sorted(stats.errors.items()):
                    errors.add_metric([name, error_type], count)
                if not name:
                    continue  # errors with no model have no other figure
                for status, count in sorted(stats.requests.items()):
                    requests.add_metric([name, status], count)
                prompt.add_metric([name], stats.prompt_tokens)
                completion.add_metric([name], stats.completion_tokens)
                cost.add_metric([name], stats.cost)
                in_flight.add_metric([name], flying.get(name, 0))
                for family, histogram in (
                    (latency, stats.latency),
                    (ttft, stats.ttft),
                    (itl, stats.itl),
                ):
                    family.add_metric([name], histogram.buckets(), histogram.total)
        yield from (requests, prompt, completion, cost, errors, in_flight, latency, ttft, itl)
