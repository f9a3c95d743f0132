"""EngineScraper: an inference engine's own Prometheus figures, in the stream.

The scraper polls each engine's ``/metrics`` and adds what it reads to the
stream in a way that never competes with :class:`MetricsCollector`:

- It is a :class:`Publisher` that wraps the hub: a collector publishes
  *through* it. ``metrics_update``, ``model_update`` and ``system_update``
  pass with the engine's figures filled in (throughput, TTFT/ITL
  percentiles, requests running and waiting); totals stay the collector's
  alone. After each scrape the last of those messages is published again,
  with the new figures, if they changed.
- ``kv_cache_update`` is the engine's own (usage and prefix-cache hit rate);
  no collector publishes one unless told to (``update_kv_cache``).
- A target that fails is one ``error_update`` and a warning, then silence
  until it answers again; meanwhile its figures are dropped (marked stale in
  the messages' ``metadata``) and the collector's show instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..exceptions import ConfigError
from ..protocol import (
    ErrorUpdatePayload,
    KVCacheUpdatePayload,
    MessageType,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    SystemUpdatePayload,
    WebSocketMessage,
    make_message,
)
from ._aggregate import OTHER
from ._collector import Publisher
from ._engines import (
    Engine,
    EngineReading,
    Histogram,
    UnknownEngineError,
    counter_delta,
    parse_exposition,
)
from ._tick import every

__all__ = ["EngineScraper", "EngineStatus"]

logger = logging.getLogger(__name__)

#: Largest exposition read from one target, in bytes: a misbehaving target
#: must not grow the server's memory without bound.
MAX_EXPOSITION_BYTES: Final = 16 * 1024 * 1024
_QUANTILES: Final = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))
_ENRICHED: Final = frozenset(
    {MessageType.METRICS_UPDATE, MessageType.MODEL_UPDATE, MessageType.SYSTEM_UPDATE}
)


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """How one scrape target is doing.

    ``up`` is whether its last scrape succeeded; ``engine`` is what it was
    detected as (``None`` before the first success); ``failures`` counts
    consecutive failed scrapes; ``last_error`` says why the last one failed.
    """

    url: str
    engine: Engine | None
    up: bool
    failures: int
    last_error: str | None
    last_success: float | None  # Unix seconds


@dataclass(slots=True)
class _ModelDelta:
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    ttft: Histogram | None = None
    itl: Histogram | None = None
    e2e: Histogram | None = None


@dataclass(slots=True)
class _Delta:
    """What happened between two scrapes of one target."""

    at: float
    seconds: float
    hits: float
    queries: float
    models: dict[str | None, _ModelDelta]


@dataclass(slots=True)
class _Target:
    url: str
    engine: Engine | None = None
    model: str | None = None  # for engines without a model label
    up: bool = False
    failures: int = 0
    failed_total: int = 0
    last_error: str | None = None
    last_success: float | None = None
    reading: EngineReading | None = None
    read_at: float = 0.0
    started_at: float | None = None
    window: deque[_Delta] = field(default_factory=deque)

    def status(self) -> EngineStatus:
        return EngineStatus(
            self.url, self.engine, self.up, self.failures, self.last_error, self.last_success
        )


@dataclass(slots=True)
class _Figures:
    """Engine figures combined over the window, for the service or one model."""

    prompt_tps: float | None = None
    generation_tps: float | None = None
    ttft: dict[str, float] = field(default_factory=dict)
    itl: dict[str, float] = field(default_factory=dict)
    e2e: dict[str, float] = field(default_factory=dict)


def _add(a: Histogram | None, b: Histogram | None) -> Histogram | None:
    if a is None:
        return b
    if b is None:
        return a
    return a.plus(b)


def _ms(value: float) -> float:
    return round(max(0.0, value) * 1000.0, 3)


def _percentiles(
    histogram: Histogram | None, summaries: Iterable[dict[float, float]]
) -> dict[str, float]:
    """p50/p95/p99 in ms: from the bucket deltas, or else from the quantiles an
    engine computed itself (only those it publishes; none is invented)."""
    found: dict[str, float] = {}
    if histogram is not None and histogram.total > 0:
        for q, name in _QUANTILES:
            value = histogram.quantile(q)
            if value is not None:
                found[name] = _ms(value)
        return found
    for quantiles in summaries:
        for q, name in _QUANTILES:
            if q in quantiles and name not in found:
                found[name] = _ms(quantiles[q])
    return found


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    path = parts.path
    if path.endswith("/metrics"):
        path = path[: -len("/metrics")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class EngineScraper(Collector):
    """Polls inference engines' Prometheus endpoints and adds their figures to the stream.

    ``targets`` are URLs of engines' ``/metrics`` (vLLM, SGLang, TGI and
    FakeAI are detected from the metric names). Wrap the stream hub with it
    and give it to the collector as its publisher::

        async with EngineScraper(hub, ["http://vllm:8000/metrics"]) as engines:
            async with MetricsCollector(engines) as collector:
                ...

    Every ``interval`` seconds each target is scraped (each with its own
    deadline, ``timeout``; an answer larger than ``max_exposition_bytes`` is
    refused). At most ``max_models`` models are shown by name, the first
    seen; the figures of any more are added up under
    :data:`~metricstream.collector.OTHER` (logged once). Throughput,
    percentiles and the prefix-cache hit rate cover the scrapes of the
    last ``window`` seconds (counter and bucket deltas; counter resets are
    counted from zero, never as negative rates). ``client`` is an
    ``httpx.AsyncClient`` to use (one is made and closed otherwise);
    ``clock`` (monotonic seconds) and ``wall_clock`` (Unix seconds) are
    injectable for tests. Invalid options raise
    :class:`~metricstream.exceptions.ConfigError`.
    """

    def __init__(
        self,
        publisher: Publisher,
        targets: Sequence[str],
        *,
        interval: float = 1.0,
        window: float = 60.0,
        timeout: float | None = None,
        max_exposition_bytes: int = MAX_EXPOSITION_BYTES,
        max_models: int = 256,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (("interval", interval), ("window", window)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
        if isinstance(max_exposition_bytes, bool) or not (
            isinstance(max_exposition_bytes, int) and max_exposition_bytes > 0
        ):
            raise ConfigError(
                f"max_exposition_bytes must be an integer > 0, got {max_exposition_bytes!r}"
            )
        if isinstance(max_models, bool) or not (isinstance(max_models, int) and max_models > 0):
            raise ConfigError(f"max_models must be an integer > 0, got {max_models!r}")
        if isinstance(targets, str):
            raise ConfigError("targets must be a sequence of URLs, not one string")
        urls: list[str] = []
        for url in targets:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"a scrape target must be an http(s) URL, got {url!r}")
            if url not in urls:
                urls.append(url)
        if not urls:
            raise ConfigError("give at least one scrape target")
        self._publisher = publisher
        self._targets = [_Target(url) for url in urls]
        self._interval = float(interval)
        self._window = float(window)
        self._timeout = float(timeout) if timeout is not None else max(2.0, 2 * self._interval)
        self._max_bytes = max_exposition_bytes
        self._max_models = max_models
        # The models shown by name, first come first kept; the figures of
        # any past max_models are added up under OTHER, as the collector
        # does, so an engine naming models without end (or a hostile one)
        # costs a bounded window and a bounded number of model_updates.
        self._kept: set[str] = set()
        self._folding_logged = False
        self._client = client
        self._own_client = False
        self._clock = clock
        self._wall_clock = wall_clock
        # The last message of each enriched key as the collector published
        # it, and the payload last sent on (enriched) for each key.
        self._seen: dict[tuple[str, str], WebSocketMessage[Any]] = {}
        self._sent: dict[tuple[str, str], Any] = {}
        self._service = _Figures()
        self._models: dict[str, _Figures] = {}
        self._running: float | None = None
        self._waiting: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        up = sum(t.up for t in self._targets)
        return f"EngineScraper({len(self._targets)} targets, {up} up, interval={self._interval})"

    # --- views ----------------------------------------------------------------

    @property
    def interval(self) -> float:
        """Seconds between two scrapes of a target."""
        return self._interval

    @property
    def targets(self) -> list[EngineStatus]:
        """The status of every target, in the order given."""
        return [t.status() for t in self._targets]

    @property
    def running(self) -> bool:
        """Whether the scraping tasks are running."""
        return any(not task.done() for task in self._tasks)

    def collect(self) -> Iterator[Metric]:
        """Prometheus metrics of the targets' health (register the scraper in
        the registry served at ``/metrics``)."""
        up = GaugeMetricFamily(
            "metricstream_engine_up",
            "Whether the last scrape of an engine's /metrics succeeded",
            labels=["target", "engine"],
        )
        failed = CounterMetricFamily(
            "metricstream_engine_scrape_failures",
            "Failed scrapes of an engine's /metrics",
            labels=["target"],
        )
        for target in self._targets:
            up.add_metric([target.url, target.engine or ""], 1.0 if target.up else 0.0)
            failed.add_metric([target.url], target.failed_total)
        yield up
        yield failed

    # --- Publisher --------------------------------------------------------------

    def publish(self, message: WebSocketMessage[Any], /) -> object:
        """Pass ``message`` on to the wrapped publisher, with the engines'
        figures added to ``metrics_update``, ``model_update`` and ``system_update``."""
        if message.type in _ENRICHED:
            key = (str(message.type), self._key(message))
            self._seen[key] = message
            message = self._enrich(message)
            result = self._publisher.publish(message)
            self._sent[key] = message.data
            return result
        return self._publisher.publish(message)

    @staticmethod
    def _key(message: WebSocketMessage[Any]) -> str:
        data = message.data
        return data.model if isinstance(data, ModelUpdatePayload) else ""

    # --- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Start scraping every target every ``interval`` seconds."""
        if self.running:
            return
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=True)
            self._own_client = True
        self._tasks = [
            asyncio.create_task(self._run(target), name=f"metricstream-scrape-{target.url}")
            for target in self._targets
        ]

    async def aclose(self) -> None:
        """Stop scraping (and close the HTTP client made for it)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None
            self._own_client = False

    async def __aenter__(self) -> EngineScraper:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self, target: _Target) -> None:
        async def tick() -> None:
            try:
                await self._scrape(target)
            except Exception:  # a bug here must not end the scraping for good
                logger.exception("scraping %s failed unexpectedly", target.url)

        # A slow target starts again from now, without a burst of scrapes.
        await every(self._interval, tick)

    async def scrape_once(self) -> None:
        """Scrape every target once, now, and publish what changed.

        The periodic tasks do this on their own; embedding code and tests
        may drive it by hand instead of calling :meth:`start`.
        """
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=True)
            self._own_client = True
        await asyncio.gather(*(self._scrape(target) for target in self._targets))

    # --- one scrape -------------------------------------------------------------

    async def _fetch(self, url: str) -> str:
        client = self._client
        assert client is not None
        async with client.stream("GET", url, timeout=self._timeout) as response:
            if response.status_code != 200:
                raise _ScrapeError(f"HTTP {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self._max_bytes:
                    raise _ScrapeError(f"exposition larger than {self._max_bytes} bytes")
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")

    async def _model_name(self, target: _Target) -> str:
        # TGI names no model in its metrics; its /info does.
        client = self._client
        assert client is not None
        base = _base_url(target.url)
        with contextlib.suppress(Exception):
            response = await client.get(base + "/info", timeout=self._timeout)
            if response.status_code == 200:
                model = response.json().get("model_id")
                if isinstance(model, str) and model:
                    return model
        return urlsplit(target.url).netloc

    async def _scrape(self, target: _Target) -> None:
        import httpx

        try:
            # One deadline for the whole read: a target trickling bytes must
            # not hold its scrape open past it.
            async with asyncio.timeout(self._timeout):
                text = await self._fetch(target.url)
            # Parsing a large exposition takes milliseconds: off the loop.
            reading = await asyncio.to_thread(parse_exposition, text, default_model=target.model)
            if reading.engine == "tgi" and target.model is None:
                target.model = await self._model_name(target)
                reading = await asyncio.to_thread(
                    parse_exposition, text, default_model=target.model
                )
        except (httpx.HTTPError, OSError, _ScrapeError, UnknownEngineError, ValueError) as exc:
            self._failed(target, _describe(exc))
            return
        self._succeeded(target, reading)

    def _failed(self, target: _Target, reason: str) -> None:
        first = target.up or target.failures == 0
        target.up = False
        target.failures += 1
        target.failed_total += 1
        target.last_error = reason
        # Its figures are no longer known: drop them, and start from a fresh
        # baseline when it answers again.
        target.reading = None
        target.window.clear()
        if first:
            message = (
                f"Scraping {target.url} failed: {reason}. "
                "Its figures are stale until it answers again."
            )
            logger.warning("%s", message)
            payload = ErrorUpdatePayload(
                error_type="engine_scrape_failed",
                error_message=message,
                timestamp=int(self._wall_clock() * 1000),
                severity="high",
            )
            self._send(make_message(MessageType.ERROR_UPDATE, payload, timestamp=payload.timestamp))
        self._refresh()

    def _succeeded(self, target: _Target, reading: EngineReading) -> None:
        now = self._clock()
        if not target.up and target.failures:
            logger.info("scraping %s works again after %d failures", target.url, target.failures)
        if target.engine != reading.engine and target.engine is not None:
            target.window.clear()  # a different engine behind the URL: start afresh
            target.reading = None
        target.engine = reading.engine
        target.up = True
        target.failures = 0
        target.last_error = None
        target.last_success = self._wall_clock()
        previous = target.reading
        if previous is not None:
            self._add_delta(target, previous, reading, now)
        else:
            target.started_at = now
        target.reading = reading
        target.read_at = now
        self._refresh()

    def _slot(self, name: str | None) -> str | None:
        """The name a model's figures go under: its own, or OTHER past ``max_models``."""
        if name is None or name in self._kept:
            return name
        if len(self._kept) < self._max_models:
            self._kept.add(name)
            return name
        if not self._folding_logged:
            self._folding_logged = True
            logger.warning(
                "the engines report more than %d models: the rest are shown as %r",
                self._max_models,
                OTHER,
            )
        return OTHER

    def _add_delta(
        self, target: _Target, previous: EngineReading, reading: EngineReading, now: float
    ) -> None:
        # Each model's delta comes from its own counters; models past the
        # cap are then added up under one slot (deltas add, counters do not).
        models: dict[str | None, _ModelDelta] = {}
        for name, figures in reading.models.items():
            before = previous.models.get(name)
            delta = models.setdefault(self._slot(name), _ModelDelta())
            if before is None:
                # A model seen for the first time: its counters are a baseline.
                continue
            delta.prompt_tokens += counter_delta(figures.prompt_tokens, before.prompt_tokens)
            delta.generation_tokens += counter_delta(
                figures.generation_tokens, before.generation_tokens
            )
            for attr in ("ttft", "itl", "e2e"):
                histogram: Histogram | None = getattr(figures, attr)
                if histogram is not None:
                    since = histogram.since(getattr(before, attr))
                    setattr(delta, attr, _add(getattr(delta, attr), since))
        target.window.append(
            _Delta(
                at=now,
                seconds=max(0.0, now - target.read_at),
                hits=counter_delta(reading.prefix_hits, previous.prefix_hits),
                queries=counter_delta(reading.prefix_queries, previous.prefix_queries),
                models=models,
            )
        )
        while target.window and target.window[0].at <= now - self._window:
            target.window.popleft()

    # --- combining and publishing -------------------------------------------------

    def _refresh(self) -> None:
        up = [t for t in self._targets if t.up and t.reading is not None]
        service = _Figures()
        models: dict[str, _Figures] = {}
        if up:
            self._running = _total(t.reading.running for t in up if t.reading is not None)
            self._waiting = _total(t.reading.waiting for t in up if t.reading is not None)
            service, models = self._combine(up)
        else:
            self._running = self._waiting = None
        self._service = service
        self._models = models
        self._publish_kv(up)
        self._republish()

    def _combine(self, up: list[_Target]) -> tuple[_Figures, dict[str, _Figures]]:
        # Rates divide by the time the window actually spans, per target,
        # and add across targets (replicas of one model add up).
        service_prompt = service_gen = 0.0
        have_rates = False
        service_hist: dict[str, Histogram | None] = {"ttft": None, "itl": None, "e2e": None}
        service_summaries: dict[str, list[dict[float, float]]] = {"ttft": [], "itl": [], "e2e": []}
        per_model: dict[str, dict[str, Any]] = {}
        for target in up:
            reading = target.reading
            assert reading is not None
            span = sum(d.seconds for d in target.window)
            for model, figures in reading.models.items():
                name = self._slot(model)
                for attr in ("ttft", "itl", "e2e"):
                    quantiles = getattr(figures, f"{attr}_quantiles")
                    if quantiles:
                        service_summaries[attr].append(quantiles)
                        if name is not None:
                            entry = per_model.setdefault(name, _empty_entry())
                            entry[f"{attr}_q"].append(quantiles)
                if name is not None:
                    per_model.setdefault(name, _empty_entry())
            if span <= 0:
                continue
            have_rates = True
            sums: dict[str | None, _ModelDelta] = {}
            for delta in target.window:
                for name, md in delta.models.items():
                    acc = sums.setdefault(name, _ModelDelta())
                    acc.prompt_tokens += md.prompt_tokens
                    acc.generation_tokens += md.generation_tokens
                    acc.ttft = _add(acc.ttft, md.ttft)
                    acc.itl = _add(acc.itl, md.itl)
                    acc.e2e = _add(acc.e2e, md.e2e)
            for name, acc in sums.items():
                prompt_rate = acc.prompt_tokens / span
                gen_rate = acc.generation_tokens / span
                service_prompt += prompt_rate
                service_gen += gen_rate
                for attr in ("ttft", "itl", "e2e"):
                    service_hist[attr] = _add(service_hist[attr], getattr(acc, attr))
                if name is None:
                    continue
                entry = per_model.setdefault(name, _empty_entry())
                entry["prompt"] += prompt_rate
                entry["generation"] += gen_rate
                entry["rated"] = True
                for attr in ("ttft", "itl", "e2e"):
                    entry[attr] = _add(entry[attr], getattr(acc, attr))
        service = _Figures()
        if have_rates:
            service.prompt_tps = round(service_prompt, 3)
            service.generation_tps = round(service_gen, 3)
        for attr in ("ttft", "itl", "e2e"):
            setattr(service, attr, _percentiles(service_hist[attr], service_summaries[attr]))
        models: dict[str, _Figures] = {}
        for name, entry in per_model.items():
            out = _Figures()
            if entry["rated"]:
                out.prompt_tps = round(entry["prompt"], 3)
                out.generation_tps = round(entry["generation"], 3)
            for attr in ("ttft", "itl", "e2e"):
                setattr(out, attr, _percentiles(entry[attr], entry[f"{attr}_q"]))
            models[name] = out
        return service, models

    def _publish_kv(self, up: list[_Target]) -> None:
        known = [t for t in self._targets if t.engine is not None]
        if not known:
            return
        stale = [t.url for t in known if not t.up]
        metadata: dict[str, Any] = {"engines": self._engine_metadata()}
        key = (str(MessageType.KV_CACHE_UPDATE), "")
        if not up:
            # Nothing is known now: say so on the last value instead of
            # letting it pass for a live one.
            last = self._sent.get(key)
            if last is not None and self._sent.get(("stale", "")) != stale:
                self._sent[("stale", "")] = stale
                self._send(make_message(MessageType.KV_CACHE_UPDATE, last, metadata=metadata))
            return
        usages = [t.reading.kv_usage for t in up if t.reading and t.reading.kv_usage is not None]
        hits = sum(d.hits for t in up for d in t.window)
        queries = sum(d.queries for t in up for d in t.window)
        total_hits = _total(t.reading.prefix_hits for t in up if t.reading is not None)
        total_queries = _total(t.reading.prefix_queries for t in up if t.reading is not None)
        rates = [t.reading.hit_rate for t in up if t.reading and t.reading.hit_rate is not None]
        if queries > 0:
            hit_rate: float | None = 100.0 * min(1.0, hits / queries)
        elif rates:
            hit_rate = 100.0 * sum(rates) / len(rates)
        else:
            previous = self._sent.get(key)
            # No new queries in the window: the last rate still stands.
            hit_rate = previous.hit_rate if previous is not None else None
        if not usages and hit_rate is None and total_queries is None:
            return
        cumulative_hits = round(total_hits or 0.0)
        payload = KVCacheUpdatePayload(
            cache_hits=cumulative_hits,
            cache_misses=max(0, round((total_queries or 0.0) - (total_hits or 0.0))),
            hit_rate=round(hit_rate or 0.0, 3),
            cache_size_bytes=0,
            cache_entries=0,
            evictions=0,
            avg_lookup_time_ms=0.0,
            usage_percentage=(
                round(100.0 * min(1.0, max(0.0, sum(usages) / len(usages))), 3) if usages else None
            ),
        )
        if self._sent.get(key) == payload and self._sent.get(("stale", "")) == stale:
            return
        self._sent[key] = payload
        self._sent[("stale", "")] = stale
        self._send(make_message(MessageType.KV_CACHE_UPDATE, payload, metadata=metadata))

    def _engine_metadata(self) -> dict[str, Any]:
        return {
            t.url: {"engine": t.engine, "up": t.up, "stale": not t.up}
            for t in self._targets
            if t.engine is not None or t.failures
        }

    def _republish(self) -> None:
        names = set(self._models)
        for key, message in list(self._seen.items()):
            self._resend(key, message)
            if key[0] == MessageType.MODEL_UPDATE:
                names.discard(key[1])
        # Models only the engine knows: their figures, with no totals (the
        # totals are what metricstream itself recorded: nothing).
        for name in sorted(names):
            figures = self._models[name]
            if figures.prompt_tps is None and not figures.ttft and not figures.itl:
                continue
            payload = ModelUpdatePayload(
                model=name,
                request_count=0,
                total_prompt_tokens=0,
                total_completion_tokens=0,
                total_tokens=0,
                total_latency_ms=0.0,
                error_count=0,
                avg_latency_ms=0.0,
                error_rate=0.0,
                total_cost=0.0,
                tokens_per_second=0.0,
            )
            self._resend(
                (str(MessageType.MODEL_UPDATE), name),
                make_message(MessageType.MODEL_UPDATE, payload),
            )

    def _resend(self, key: tuple[str, str], message: WebSocketMessage[Any]) -> None:
        enriched = self._enrich(message)
        if self._sent.get(key) == enriched.data:
            return
        # A fresh timestamp: the figures are of now, not of the original.
        enriched = make_message(message.type, enriched.data, metadata=enriched.metadata)
        if self._send(enriched):
            self._sent[key] = enriched.data

    def _send(self, message: WebSocketMessage[Any]) -> bool:
        try:
            self._publisher.publish(message)
        except Exception:
            logger.exception("publishing %s failed", message.type)
            return False
        return True

    def _enrich(self, message: WebSocketMessage[Any]) -> WebSocketMessage[Any]:
        data = message.data
        if isinstance(data, SystemUpdatePayload):
            if self._running is None and self._waiting is None:
                return message
            changes: dict[str, Any] = {}
            if self._running is not None:
                changes["active_workers"] = max(0, round(self._running))
            if self._waiting is not None:
                changes["queue_size"] = max(0, round(self._waiting))
            return make_message(
                message.type,
                msgspec.structs.replace(data, **changes),
                metadata=message.metadata,
                timestamp=message.timestamp,
            )
        if isinstance(data, MetricsUpdatePayload):
            figures = self._service
        elif isinstance(data, ModelUpdatePayload):
            found = self._models.get(data.model)
            if found is None:
                return message
            figures = found
        else:
            return message
        changes = {}
        if figures.prompt_tps is not None and figures.generation_tps is not None:
            changes["prompt_tokens_per_second"] = figures.prompt_tps
            changes["generation_tokens_per_second"] = figures.generation_tps
            # The engine counts every token it processes, metricstream only
            # those it saw: the engine's throughput is the true one.
            changes["tokens_per_second"] = round(figures.prompt_tps + figures.generation_tps, 3)
        for prefix, values in (("ttft", figures.ttft), ("itl", figures.itl)):
            for name, value in values.items():
                field_name = f"{prefix}_{name}_ms"
                # A figure measured by metricstream itself (a recording
                # proxy) is kept: it is what clients saw.
                if getattr(data, field_name) is None:
                    changes[field_name] = value
        metadata = dict(message.metadata or {})
        for name, value in figures.e2e.items():
            metadata[f"engine_e2e_{name}_ms"] = value
        engines = self._engine_metadata()
        if engines:
            metadata["engines"] = engines
        if not changes and metadata == (message.metadata or {}):
            return message
        return make_message(
            message.type,
            msgspec.structs.replace(data, **changes) if changes else data,
            metadata=metadata or None,
            timestamp=message.timestamp,
        )


class _ScrapeError(Exception):
    """A scrape answered, but not with an exposition we can use."""


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if len(text) > 200:
        text = text[:200] + "…"
    return text


def _total(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _empty_entry() -> dict[str, Any]:
    return {
        "prompt": 0.0,
        "generation": 0.0,
        "rated": False,
        "ttft": None,
        "itl": None,
        "e2e": None,
        "ttft_q": [],
        "itl_q": [],
        "e2e_q": [],
    }
