"""Reading an inference engine's Prometheus exposition: vLLM, SGLang, TGI, FakeAI.

Pure functions and values, no I/O: :func:`parse_exposition` turns one scrape's
text into an :class:`EngineReading`; :class:`Histogram` does the bucket
arithmetic (deltas between scrapes, sums across models and replicas, and
``histogram_quantile``'s interpolation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = [
    "ENGINES",
    "Engine",
    "EngineReading",
    "Histogram",
    "ModelFigures",
    "UnknownEngineError",
    "counter_delta",
    "parse_exposition",
]

Engine: TypeAlias = Literal["vllm", "sglang", "tgi", "fakeai"]
#: Engines recognised, with the metric-name prefix that gives each away.
ENGINES: Final[dict[str, Engine]] = {
    "vllm:": "vllm",
    "sglang:": "sglang",
    "tgi_": "tgi",
    "fakeai_": "fakeai",
}


class UnknownEngineError(ValueError):
    """The exposition names no metric of a known engine."""


@dataclass(frozen=True, slots=True)
class Histogram:
    """A Prometheus histogram: ascending upper bounds (the last is ``+Inf``)
    and the cumulative count of observations at or below each."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    @property
    def total(self) -> float:
        """Number of observations."""
        return self.counts[-1] if self.counts else 0.0

    def since(self, previous: Histogram | None) -> Histogram:
        """Observations made after ``previous`` was read.

        A count lower than before (an engine restart) or different buckets
        mean the histogram started afresh: everything in it is new.
        """
        if previous is None or previous.bounds != self.bounds:
            return self
        if any(now < before for now, before in zip(self.counts, previous.counts, strict=True)):
            return self
        return Histogram(
            self.bounds,
            tuple(now - before for now, before in zip(self.counts, previous.counts, strict=True)),
        )

    def plus(self, other: Histogram) -> Histogram:
        """Both histograms' observations (same buckets), or the larger one's
        when the buckets differ: cumulative counts on different bounds do not add."""
        if other.bounds != self.bounds:
            return self if self.total >= other.total else other
        return Histogram(
            self.bounds, tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        )

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile as PromQL's ``histogram_quantile`` estimates it:
        linear interpolation inside the bucket holding the rank, the lower
        bound of the first bucket being 0, and a rank in the ``+Inf`` bucket
        answered with the highest finite bound. ``None`` without observations."""
        total = self.total
        if total <= 0 or len(self.bounds) < 2:
            return None
        rank = q * total
        lower, below = 0.0, 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if count >= rank:
                if math.isinf(bound):
                    return lower
                if count == below:
                    return bound
                if lower > bound:  # a first bucket with a negative bound
                    lower = bound
                return lower + (bound - lower) * (rank - below) / (count - below)
            lower, below = bound, count
        return lower


def counter_delta(now: float | None, before: float | None) -> float:
    """Growth of a counter between two readings, never negative: a value lower
    than before is a reset (the engine restarted), counted from zero as
    PromQL's ``rate`` does."""
    if now is None:
        return 0.0
    if before is None:
        return 0.0
    return now if now < before else now - before


@dataclass(slots=True)
class ModelFigures:
    """One model's cumulative figures in one scrape (``None``: not published).

    Token counters count since the engine started; histograms are cumulative
    since start too. ``*_quantiles`` hold quantiles (seconds) an engine
    computed itself, in a summary, when it publishes no histogram.
    """

    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    ttft: Histogram | None = None
    itl: Histogram | None = None
    e2e: Histogram | None = None
    ttft_quantiles: dict[float, float] = field(default_factory=dict)
    itl_quantiles: dict[float, float] = field(default_factory=dict)
    e2e_quantiles: dict[float, float] = field(default_factory=dict)


@dataclass(slots=True)
class EngineReading:
    """Everything one scrape said.

    ``kv_usage`` and ``hit_rate`` are fractions (0-1). ``prefix_hits`` and
    ``prefix_queries`` are cumulative counters (tokens), from which the hit
    rate of an interval is Δhits ÷ Δqueries; ``hit_rate`` is a rate the engine
    computed itself. ``models`` is keyed by model name; ``None`` holds figures
    the engine publishes without a model label.
    """

    engine: Engine
    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None
    prefix_hits: float | None = None
    prefix_queries: float | None = None
    hit_rate: float | None = None
    models: dict[str | None, ModelFigures] = field(default_factory=dict)

    def model(self, name: str | None) -> ModelFigures:
        """The figures of ``name``, created empty on first use."""
        figures = self.models.get(name)
        if figures is None:
            figures = self.models[name] = ModelFigures()
        return figures


# --- name tables ------------------------------------------------------------
# Family names as prometheus-client's parser gives them: ``_total`` stripped
# from counters. Where an engine renamed a metric, the newer name comes first.


@dataclass(frozen=True, slots=True)
class _Names:
    running: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    kv_usage: tuple[str, ...] = ()
    prefix_hits: tuple[str, ...] = ()
    prefix_queries: tuple[str, ...] = ()
    hit_rate: tuple[str, ...] = ()
    prompt_tokens: tuple[str, ...] = ()
    generation_tokens: tuple[str, ...] = ()
    ttft: tuple[str, ...] = ()
    itl: tuple[str, ...] = ()
    e2e: tuple[str, ...] = ()
    # Histograms whose _sum counts tokens (TGI publishes no token counter).
    prompt_tokens_sum: tuple[str, ...] = ()
    generation_tokens_sum: tuple[str, ...] = ()
    model_label: str | None = "model_name"
    # A hit rate published in percent rather than as a fraction.
    hit_rate_percent: bool = False


_NAMES: Final[dict[Engine, _Names]] = {
    "vllm": _Names(
        running=("vllm:num_requests_running",),
        waiting=("vllm:num_requests_waiting",),
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        prefix_hits=("vllm:prefix_cache_hits",),
        prefix_queries=("vllm:prefix_cache_queries",),
        prompt_tokens=("vllm:prompt_tokens",),
        generation_tokens=("vllm:generation_tokens",),
        ttft=("vllm:time_to_first_token_seconds",),
        itl=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        e2e=("vllm:e2e_request_latency_seconds",),
    ),
    "sglang": _Names(
        running=("sglang:num_running_reqs",),
        waiting=("sglang:num_queue_reqs",),
        kv_usage=("sglang:token_usage",),
        # Prompt tokens served from the radix cache, out of all prompt tokens.
        prefix_hits=("sglang:cached_tokens",),
        prefix_queries=("sglang:prompt_tokens",),
        hit_rate=("sglang:cache_hit_rate",),
        prompt_tokens=("sglang:prompt_tokens",),
        generation_tokens=("sglang:generation_tokens",),
        ttft=("sglang:time_to_first_token_seconds",),
        itl=("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        e2e=("sglang:e2e_request_latency_seconds",),
    ),
    "tgi": _Names(
        running=("tgi_batch_current_size",),
        waiting=("tgi_queue_size",),
        itl=("tgi_request_mean_time_per_token_duration",),
        e2e=("tgi_request_duration",),
        prompt_tokens_sum=("tgi_request_input_length",),
        generation_tokens_sum=("tgi_request_generated_tokens",),
        model_label=None,
    ),
    "fakeai": _Names(
        running=("fakeai_dynamo_batch_size",),
        waiting=("fakeai_dynamo_queue_depth",),
        hit_rate=("fakeai_dynamo_kv_cache_hit_rate",),
        ttft=("fakeai_dynamo_ttft_seconds",),
        itl=("fakeai_dynamo_itl_seconds",),
        e2e=("fakeai_dynamo_total_latency_seconds",),
        model_label="model",
        hit_rate_percent=True,
    ),
}


def _first(families: dict[str, list[Sample]], names: Iterable[str]) -> list[Sample] | None:
    for name in names:
        samples = families.get(name)
        if samples is not None:
            return samples
    return None


def _finite(samples: Iterable[Sample]) -> list[Sample]:
    return [s for s in samples if math.isfinite(s.value)]


def _sum(samples: list[Sample] | None) -> float | None:
    if samples is None:
        return None
    values = [s.value for s in _finite(samples)]
    return sum(values) if values else None


def _mean(samples: list[Sample] | None) -> float | None:
    if samples is None:
        return None
    values = [s.value for s in _finite(samples)]
    return sum(values) / len(values) if values else None


def _by_model(samples: list[Sample], label: str | None) -> dict[str | None, list[Sample]]:
    groups: dict[str | None, list[Sample]] = {}
    for sample in samples:
        model = sample.labels.get(label) if label is not None else None
        groups.setdefault(model, []).append(sample)
    return groups


def _histogram(samples: list[Sample]) -> Histogram | None:
    """Sum the ``_bucket`` series of ``samples`` (every label set) by bound."""
    by_bound: dict[float, float] = {}
    for sample in samples:
        if not sample.name.endswith("_bucket"):
            continue
        try:
            bound = float(sample.labels["le"])
        except (KeyError, ValueError):
            continue
        if math.isnan(bound) or not math.isfinite(sample.value) or sample.value < 0:
            continue
        by_bound[bound] = by_bound.get(bound, 0.0) + sample.value
    if not by_bound or math.inf not in by_bound:
        return None
    bounds = tuple(sorted(by_bound))
    counts: list[float] = []
    running = 0.0
    for bound in bounds:
        # Cumulative counts never go down with the bound; a malformed
        # exposition that says otherwise is read as flat, not negative.
        running = max(running, by_bound[bound])
        counts.append(running)
    return Histogram(bounds, tuple(counts))


def _histogram_sum(samples: list[Sample]) -> float | None:
    values = [s.value for s in samples if s.name.endswith("_sum") and math.isfinite(s.value)]
    return sum(values) if values else None


def _quantiles(samples: list[Sample]) -> dict[float, float]:
    found: dict[float, float] = {}
    for sample in samples:
        raw = sample.labels.get("quantile")
        if raw is None or not math.isfinite(sample.value):
            continue
        try:
            found[float(raw)] = sample.value
        except ValueError:
            continue
    return found


def detect_engine(names: Iterable[str]) -> Engine | None:
    """The engine whose metric names appear in ``names`` (the most names wins)."""
    seen: dict[Engine, int] = {}
    for name in names:
        for prefix, engine in ENGINES.items():
            if name.startswith(prefix):
                seen[engine] = seen.get(engine, 0) + 1
    if not seen:
        return None
    return max(seen, key=lambda engine: seen[engine])


def parse_exposition(text: str, *, default_model: str | None = None) -> EngineReading:
    """Read one scrape of an engine's ``/metrics``.

    The engine is detected from the metric names. ``default_model`` names the
    model of an engine that publishes no model label (TGI serves one model;
    its name comes from its ``/info``). Raises :class:`UnknownEngineError`
    when no known engine's names appear, and :class:`ValueError` when the
    text is not the Prometheus text format.
    """
    families: dict[str, list[Sample]] = {}
    kinds: dict[str, str] = {}
    try:
        for family in text_string_to_metric_families(text):
            name = family.name
            if family.type == "unknown" and name.endswith("_total"):
                # A counter sample whose TYPE line was missing or named it
                # differently: read it under the counter's family name.
                name = name[: -len("_total")]
            families.setdefault(name, []).extend(family.samples)
            kinds.setdefault(name, family.type)
    except ValueError as exc:  # the parser's own words are cryptic alone
        raise ValueError(f"not the Prometheus text format ({exc})") from exc
    engine = detect_engine(families)
    if engine is None:
        raise UnknownEngineError(
            "no vLLM (vllm:), SGLang (sglang:), TGI (tgi_) or FakeAI (fakeai_) metric found"
        )
    names = _NAMES[engine]
    reading = EngineReading(engine)
    reading.running = _sum(_first(families, names.running))
    reading.waiting = _sum(_first(families, names.waiting))
    # Usage and an engine-computed hit rate are per instance: averaged.
    reading.kv_usage = _mean(_first(families, names.kv_usage))
    reading.prefix_hits = _sum(_first(families, names.prefix_hits))
    reading.prefix_queries = _sum(_first(families, names.prefix_queries))
    hit_rate = _mean(_first(families, names.hit_rate))
    if hit_rate is not None and names.hit_rate_percent:
        hit_rate /= 100.0
    reading.hit_rate = None if hit_rate is None else min(1.0, max(0.0, hit_rate))

    label = names.model_label

    def model_of(raw: str | None) -> str | None:
        return raw if raw is not None else default_model

    for attr, candidates in (
        ("prompt_tokens", names.prompt_tokens),
        ("generation_tokens", names.generation_tokens),
    ):
        samples = _first(families, candidates)
        if samples is not None:
            for model, group in _by_model(samples, label).items():
                setattr(reading.model(model_of(model)), attr, _sum(group))
    for attr, candidates in (
        ("prompt_tokens", names.prompt_tokens_sum),
        ("generation_tokens", names.generation_tokens_sum),
    ):
        samples = _first(families, candidates)
        if samples is not None:
            for model, group in _by_model(samples, label).items():
                setattr(reading.model(model_of(model)), attr, _histogram_sum(group))
    for attr, candidates in (("ttft", names.ttft), ("itl", names.itl), ("e2e", names.e2e)):
        found = next((n for n in candidates if n in families), None)
        if found is None:
            continue
        for model, group in _by_model(families[found], label).items():
            figures = reading.model(model_of(model))
            if kinds[found] == "summary":
                setattr(figures, f"{attr}_quantiles", _quantiles(group))
            else:
                setattr(figures, attr, _histogram(group))
    if engine == "fakeai":
        # FakeAI's per-model endpoint: token counters labelled by type.
        samples = families.get("fakeai_model_tokens")
        if samples is not None:
            for model, group in _by_model(samples, "model").items():
                figures = reading.model(model)
                figures.prompt_tokens = _sum([s for s in group if s.labels.get("type") == "prompt"])
                figures.generation_tokens = _sum(
                    [s for s in group if s.labels.get("type") == "completion"]
                )
    return reading
