"""Demo traffic: a synthetic but plausible LLM-serving workload.

Nothing here touches the network: the traffic is generated and recorded
straight into a :class:`MetricsCollector`, so ``make demo`` shows a living
dashboard with nothing else installed.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..exceptions import ConfigError
from ..protocol.messages import ErrorSeverity
from ._collector import MetricsCollector, Publisher
from ._tick import every

__all__ = ["DEFAULT_PROFILES", "DemoTraffic", "ModelProfile", "run_demo"]

CHAT: Final = "/v1/chat/completions"
COMPLETIONS: Final = "/v1/completions"
EMBEDDINGS: Final = "/v1/embeddings"


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How one demo model behaves.

    Token counts are log-normal around their medians. ``ttft_ms`` is the
    time to first token of a median prompt on an idle engine (it grows with
    the prompt and the load), ``ms_per_token`` the decode step (the
    inter-token latency, slower as the batch grows); latency is the first
    token plus one step per further token. ``weight`` is the model's share of
    the traffic (relative to the others); ``error_rate`` its everyday share of
    failed requests, incidents aside.
    """

    name: str
    weight: float
    service: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    ms_per_token: float
    streaming_share: float
    error_rate: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("ModelProfile.name must not be empty")
        for field_name in ("weight", "ttft_ms", "ms_per_token"):
            value = getattr(self, field_name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"ModelProfile.{field_name} must be >= 0, got {value!r}")
        if not self.weight > 0:
            raise ConfigError(f"ModelProfile.weight must be > 0, got {self.weight!r}")
        for field_name in ("prompt_tokens", "completion_tokens"):
            if getattr(self, field_name) < 0:
                raise ConfigError(f"ModelProfile.{field_name} must be >= 0")
        for field_name in ("streaming_share", "error_rate"):
            value = getattr(self, field_name)
            if not 0 <= value <= 1:
                raise ConfigError(f"ModelProfile.{field_name} must be in [0, 1], got {value!r}")


#: The demo's models: a large and a small chat model, a fast completion model,
#: a slow reasoning model with long answers, and an embedding model.
DEFAULT_PROFILES: Final[tuple[ModelProfile, ...]] = (
    ModelProfile("openai/gpt-oss-120b", 0.30, CHAT, 600, 250, 180.0, 12.0, 0.7, 0.02),
    ModelProfile("openai/gpt-oss-20b", 0.22, CHAT, 400, 200, 60.0, 6.0, 0.6, 0.015),
    ModelProfile(
        "meta-llama/Llama-3.1-8B-Instruct", 0.20, COMPLETIONS, 300, 120, 35.0, 4.0, 0.3, 0.01
    ),
    ModelProfile("deepseek-ai/DeepSeek-R1", 0.13, CHAT, 900, 600, 450.0, 20.0, 0.9, 0.03),
    ModelProfile("text-embedding-3-small", 0.15, EMBEDDINGS, 250, 0, 25.0, 0.0, 0.0, 0.005),
)

# Everyday failures, (error_type, message template, severity, relative weight):
# mostly clients' mistakes, now and then an upstream timeout.
_FAILURES: Final[tuple[tuple[str, str, ErrorSeverity, int], ...]] = (
    ("context_length_exceeded", "Prompt exceeds the model's context of 8192 tokens", "low", 5),
    ("invalid_request_error", "Invalid value for 'temperature': must be between 0 and 2", "low", 4),
    ("content_filter", "The response was filtered by the content policy", "low", 2),
    ("timeout", "Upstream inference timed out after 120 s", "high", 1),
)


@dataclass(frozen=True, slots=True)
class _IncidentKind:
    error_type: str
    message: str
    severity: ErrorSeverity
    error_rate: float  # share of the model's requests failing meanwhile
    slowdown: float  # latency multiplier of those that succeed


# Short incidents that hit one model and recover by themselves.
_INCIDENTS: Final[tuple[_IncidentKind, ...]] = (
    _IncidentKind("service_unavailable", "No healthy replica for {model}", "high", 0.30, 1.3),
    _IncidentKind(
        "gpu_out_of_memory",
        "CUDA out of memory while allocating the KV cache for {model}",
        "critical",
        0.15,
        1.6,
    ),
    _IncidentKind(
        "internal_server_error",
        "Worker crashed while decoding: CUDA illegal memory access",
        "critical",
        0.20,
        1.2,
    ),
    _IncidentKind("timeout", "Upstream inference timed out after 120 s", "high", 0.12, 2.5),
)
# The gateway gives up on a request after two minutes.
_TIMEOUT_MS: Final = 120_000.0
_KV_BYTES_PER_TOKEN: Final = 8 * 1024
# Share of the KV cache the prefix cache may keep beside running requests.
_PREFIX_SHARE: Final = 0.15
_USERS: Final = ("user-ada", "user-grace", "user-linus", "user-barbara", "user-ken", None)
_ORGS: Final = ("org-research", "org-platform", "org-support")


@dataclass(slots=True)
class _RateLimit:
    limit: int
    period: float
    remaining: int
    reset_at: float  # Unix seconds


@dataclass(slots=True)
class _Incident:
    kind: _IncidentKind
    model: str
    until: float  # demo seconds


class DemoTraffic:
    """Synthetic traffic recorded into ``collector``: run it with :meth:`run`.

    It is meant to look like a healthy production service, incidents
    included:

    - About ``rate`` requests per second, following a slow ten-minute wave,
      with a busier spell (1.3-1.8x for 10-30 s) every few minutes.
    - Errors of a few percent (clients' mistakes mostly, now and then a
      timeout), and every 15 minutes or so a short incident: one model fails
      a large share of its requests for 20-90 s, with a high or critical
      ``error_update`` as it starts, then recovers by itself. A low-severity
      warm-up error shows in the first second.
    - Time to first token grows with the prompt (prefill) and with queueing
      when the ``workers`` slots are full; inter-token latency is each
      model's decode step, slower as the batch grows, with a light tail.
    - Requests are in flight for their latency: running and waiting requests
      (``active_workers``, ``queue_size``) and the KV cache follow the load:
      in-flight requests hold their tokens' KV blocks, a prefix cache keeps
      what fits beside them, and pressure evicts from it.
    - Per-endpoint rate limits per ``rate_limit_period`` seconds (wall clock),
      sized so the usual traffic uses about two thirds of each and a busy
      spell comes close; a request past a limit fails with
      ``rate_limit_exceeded``, which is rare.

    ``seed`` makes the random choices repeatable; ``wall_clock`` (Unix
    seconds) drives the rate-limit resets and is injectable for tests.
    """

    def __init__(
        self,
        collector: MetricsCollector,
        *,
        seed: int | None = None,
        rate: float = 8.0,
        step: float = 0.1,
        profiles: Sequence[ModelProfile] = DEFAULT_PROFILES,
        rate_limit_period: float = 60.0,
        workers: int = 64,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"rate must be > 0 requests per second, got {rate!r}")
        if not (math.isfinite(step) and step > 0):
            raise ConfigError(f"step must be > 0 seconds, got {step!r}")
        if not profiles:
            raise ConfigError("profiles must name at least one model")
        if not (math.isfinite(rate_limit_period) and rate_limit_period > 0):
            raise ConfigError(f"rate_limit_period must be > 0 seconds, got {rate_limit_period!r}")
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers!r}")
        self.collector = collector
        self.rate = rate
        self.step_seconds = step
        self.profiles = tuple(profiles)
        self.workers = workers
        self._rng = random.Random(seed)
        self._wall = wall_clock
        self._elapsed = 0.0
        self._busy_until = 0.0
        self._busy_factor = 1.0
        self._incident: _Incident | None = None
        self._weights = [p.weight for p in self.profiles]
        total_weight = sum(self._weights)
        share: dict[str, float] = {}
        for profile in self.profiles:
            share[profile.service] = share.get(profile.service, 0.0) + profile.weight / total_weight
        now = wall_clock()
        self._limits: dict[str, _RateLimit] = {}
        for service, fraction in sorted(share.items()):
            # The usual traffic of a period uses about two thirds of it.
            expected = rate * fraction * rate_limit_period
            limit = max(10, math.ceil(expected * 1.5 + 3 * math.sqrt(expected)))
            self._limits[service] = _RateLimit(
                limit, rate_limit_period, limit, now + rate_limit_period
            )
            self._publish_limit(service)
        # In-flight requests: (end in demo seconds, KV tokens held).
        self._in_flight: list[tuple[float, int]] = []
        self._held_tokens = 0
        # The KV cache: room for the tokens of about `workers` requests of
        # 2,500 tokens; in-flight requests hold their blocks, the prefix
        # cache keeps what fits beside them.
        self._kv_capacity = workers * 2500 * _KV_BYTES_PER_TOKEN
        self._prefix_entries: deque[int] = deque()
        self._prefix_bytes = 0
        self._kv_hits = 0
        self._kv_misses = 0
        self._kv_evictions = 0
        self._kv_lookup_ms = 0.08
        self._publish_kv()
        self._warmed_up = False

    # --- the loop ------------------------------------------------------------

    async def run(self) -> None:
        """Generate traffic until cancelled, one :meth:`step` every ``step`` seconds."""

        async def tick() -> None:
            self.step()

        # Behind (a stalled loop), it does not catch up in a burst.
        await every(self.step_seconds, tick)

    @property
    def elapsed(self) -> float:
        """Demo seconds generated so far (``step`` per :meth:`step`)."""
        return self._elapsed

    @property
    def incident(self) -> tuple[str, str] | None:
        """The incident under way, as (model, error type), or ``None``."""
        if self._incident is None:
            return None
        return self._incident.model, self._incident.kind.error_type

    def step(self) -> int:
        """Generate and record one step's worth of traffic; returns the request count."""
        rng = self._rng
        if not self._warmed_up:
            self._warmed_up = True
            model = self.profiles[0].name
            self.collector.record_error(
                "model_loading",
                f"Loading weights for {model}: the first requests may be slow",
                model=model,
                severity="low",
            )
        dt = self.step_seconds
        self._elapsed += dt
        now = self._elapsed
        if now >= self._busy_until:
            self._busy_factor = 1.0
            # A busier spell every four minutes on average, 10-30 s long.
            if rng.random() < dt / 240:
                self._busy_until = now + rng.uniform(10.0, 30.0)
                self._busy_factor = rng.uniform(1.3, 1.8)
        self._update_incident(dt)
        wave = 1.0 + 0.2 * math.sin(2 * math.pi * now / 600)
        current_rate = self.rate * wave * self._busy_factor
        count = self._poisson(current_rate * dt)
        # The first step always carries traffic, so the stream starts alive.
        if now <= dt:
            count = max(count, 1)
        self._reset_limits()
        self._finish_requests(now)
        for _ in range(count):
            self._one_request(now)
        self._publish_kv()
        running = min(self.workers, len(self._in_flight))
        self.collector.update_load(
            active_workers=running, queue_size=len(self._in_flight) - running
        )
        return count

    # --- pieces ---------------------------------------------------------------

    def _poisson(self, mean: float) -> int:
        # Knuth's method; means here are small (a few per step).
        threshold = math.exp(-mean)
        k, p = 0, 1.0
        while True:
            p *= self._rng.random()
            if p <= threshold:
                return k
            k += 1

    def _tokens(self, median: int) -> int:
        if median <= 0:
            return 0
        return max(1, round(self._rng.lognormvariate(math.log(median), 0.6)))

    def _update_incident(self, dt: float) -> None:
        rng = self._rng
        incident = self._incident
        if incident is not None:
            if self._elapsed >= incident.until:
                self._incident = None
            return
        # One every fifteen minutes on average, not in the first minute.
        if self._elapsed < 60 or rng.random() >= dt / 900:
            return
        kind = rng.choice(_INCIDENTS)
        profile = rng.choices(self.profiles, weights=self._weights)[0]
        self._incident = _Incident(kind, profile.name, self._elapsed + rng.uniform(20.0, 90.0))
        self.collector.record_error(
            kind.error_type,
            kind.message.format(model=profile.name),
            model=profile.name,
            severity=kind.severity,
        )

    def _finish_requests(self, now: float) -> None:
        flying = self._in_flight
        while flying and flying[0][0] <= now:
            _, tokens = heapq.heappop(flying)
            self._held_tokens -= tokens

    def _load(self) -> float:
        """Share of the worker slots busy (above 1: requests are queued)."""
        return len(self._in_flight) / self.workers

    def _one_request(self, now: float) -> None:
        rng = self._rng
        profile = rng.choices(self.profiles, weights=self._weights)[0]
        limit = self._limits[profile.service]
        user = rng.choice(_USERS)
        organization = rng.choice(_ORGS) if user is not None else None
        prompt = self._tokens(profile.prompt_tokens)
        if limit.remaining == 0:
            # Refused at the gateway at once: no inference, no cost.
            record = self.collector.record_request(
                profile.name,
                prompt,
                0,
                rng.uniform(2.0, 6.0),
                status="error",
                error_message=f"Rate limit reached for {profile.service}",
                cost=0.0,
                user_id=user,
                organization_id=organization,
                service=profile.service,
            )
            self.collector.record_error(
                "rate_limit_exceeded",
                f"Rate limit reached for {profile.service}: {limit.limit} requests "
                f"per {limit.period:g} s",
                model=profile.name,
                severity="medium",
                request_id=record.id,
            )
            return
        limit.remaining -= 1
        self._publish_limit(profile.service)
        self._kv_lookup(prompt, profile.service)

        load = self._load()
        incident = (
            self._incident if self._incident and self._incident.model == profile.name else None
        )
        slowdown = incident.kind.slowdown if incident is not None else 1.0
        streaming = rng.random() < profile.streaming_share
        completion = self._tokens(profile.completion_tokens)
        # Waiting for a slot when every worker is busy.
        queue_ms = 0.0
        if load >= 1.0:
            queue_ms = (load - 1.0 + rng.random()) * 400.0
        # Prefill grows with the prompt; a fuller batch slows it a little.
        prefill = profile.ttft_ms * (0.3 + 0.7 * prompt / max(1, profile.prompt_tokens))
        ttft = queue_ms + prefill * (1.0 + 0.5 * load) * slowdown * rng.lognormvariate(0.0, 0.3)
        # The decode step: the model's, slower as the batch grows, a light tail.
        itl = profile.ms_per_token * (1.0 + 0.35 * min(load, 1.5)) * slowdown
        itl *= rng.lognormvariate(0.0, 0.12)
        if rng.random() < 0.03:  # a long prefill of another request got in the way
            itl *= rng.uniform(1.5, 3.0)
        latency = 5.0 + ttft + max(0, completion - 1) * itl

        failure: tuple[str, str, ErrorSeverity] | None = None
        if incident is not None and rng.random() < incident.kind.error_rate:
            kind = incident.kind
            failure = (kind.error_type, kind.message.format(model=profile.name), kind.severity)
        elif latency >= _TIMEOUT_MS:
            failure = ("timeout", "Upstream inference timed out after 120 s", "high")
        elif rng.random() < profile.error_rate:
            error_type, template, severity, _ = rng.choices(
                _FAILURES, weights=[f[3] for f in _FAILURES]
            )[0]
            failure = (error_type, template.format(model=profile.name), severity)
        if failure is not None:
            error_type, message, severity = failure
            if error_type == "timeout":
                latency, completion = _TIMEOUT_MS, completion // 3
            elif error_type in ("context_length_exceeded", "invalid_request_error"):
                latency, completion = rng.uniform(3.0, 12.0), 0  # refused before inference
            else:
                latency, completion = min(latency, ttft + 5.0), 0
            self._hold(now, latency, prompt + completion)
            record = self.collector.record_request(
                profile.name,
                prompt,
                completion,
                latency,
                streaming=streaming,
                status="error",
                error_message=message,
                user_id=user,
                organization_id=organization,
                service=profile.service,
            )
            self.collector.record_error(
                error_type, message, model=profile.name, severity=severity, request_id=record.id
            )
            return
        self._hold(now, latency, prompt + completion)
        self.collector.record_request(
            profile.name,
            prompt,
            completion,
            latency,
            streaming=streaming,
            user_id=user,
            organization_id=organization,
            ttft_ms=ttft if streaming else None,
            # The same per-token pace the latency above was built from.
            itl_ms=itl if streaming else None,
            service=profile.service,
        )

    def _hold(self, now: float, latency_ms: float, tokens: int) -> None:
        """Keep the request in flight (and its KV blocks held) for its latency."""
        heapq.heappush(self._in_flight, (now + latency_ms / 1000.0, tokens))
        self._held_tokens += tokens

    def _reset_limits(self) -> None:
        now = self._wall()
        for service, limit in self._limits.items():
            if now >= limit.reset_at:
                limit.remaining = limit.limit
                # Skip whole periods missed while the loop was stalled.
                periods = math.floor((now - limit.reset_at) / limit.period) + 1
                limit.reset_at += periods * limit.period
                self._publish_limit(service)

    def _publish_limit(self, service: str) -> None:
        limit = self._limits[service]
        self.collector.update_rate_limit(
            service, limit.limit, limit.remaining, int(limit.reset_at * 1000)
        )

    def _kv_lookup(self, prompt_tokens: int, service: str) -> None:
        rng = self._rng
        lookup_ms = rng.lognormvariate(math.log(0.08), 0.4)
        self._kv_lookup_ms = 0.95 * self._kv_lookup_ms + 0.05 * lookup_ms
        if service == EMBEDDINGS:
            return  # no KV cache behind an embedding
        # Shared system prompts and multi-turn chats make prefix reuse
        # common; under memory pressure the prefixes were evicted more often.
        pressure = max(0.0, self._used_fraction() - 0.8) / 0.2
        if rng.random() < 0.6 * (1.0 - 0.5 * pressure):
            self._kv_hits += 1
            return
        self._kv_misses += 1
        size = prompt_tokens * _KV_BYTES_PER_TOKEN
        self._prefix_entries.append(size)
        self._prefix_bytes += size

    def _used_fraction(self) -> float:
        return (self._held_tokens * _KV_BYTES_PER_TOKEN + self._prefix_bytes) / self._kv_capacity

    def _publish_kv(self) -> None:
        # In-flight requests come first; the prefix cache keeps at most a
        # share of the capacity and gives up its oldest entries (evictions)
        # when over it, or when the running requests need the room. So the
        # usage follows the load.
        held = min(self._kv_capacity, self._held_tokens * _KV_BYTES_PER_TOKEN)
        budget = min(self._kv_capacity * _PREFIX_SHARE, self._kv_capacity - held)
        while self._prefix_entries and self._prefix_bytes > budget:
            self._prefix_bytes -= self._prefix_entries.popleft()
            self._kv_evictions += 1
        self.collector.update_kv_cache(
            cache_hits=self._kv_hits,
            cache_misses=self._kv_misses,
            cache_size_bytes=held + self._prefix_bytes,
            cache_entries=len(self._prefix_entries) + len(self._in_flight),
            evictions=self._kv_evictions,
            avg_lookup_time_ms=self._kv_lookup_ms,
        )


async def run_demo(
    publisher: Publisher,
    *,
    interval: float = 1.0,
    seed: int | None = None,
    connections: Callable[[], int] | None = None,
    **collector_options: Any,
) -> None:
    """Publish demo traffic's metrics to ``publisher`` until cancelled.

    ``connections`` (the number of connected stream clients) feeds
    ``active_connections``; other keyword arguments go to
    :class:`MetricsCollector`.
    """
    async with MetricsCollector(
        publisher, interval=interval, connections=connections, **collector_options
    ) as collector:
        await DemoTraffic(collector, seed=seed).run()
