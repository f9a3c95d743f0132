"""Demo traffic: a synthetic but plausible LLM-serving workload.

Nothing here touches the network: the traffic is generated and recorded
straight into a :class:`MetricsCollector`, so ``make demo`` shows a living
dashboard with nothing else installed.
"""

from __future__ import annotations

import asyncio
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

__all__ = ["DEFAULT_PROFILES", "DemoTraffic", "ModelProfile", "run_demo"]

CHAT: Final = "/v1/chat/completions"
COMPLETIONS: Final = "/v1/completions"
EMBEDDINGS: Final = "/v1/embeddings"


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How one demo model behaves.

    Token counts are log-normal around their medians; latency is
    ``ttft_ms + completion_tokens * ms_per_token`` with log-normal jitter.
    ``weight`` is the model's share of the traffic (relative to the others).
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
    ModelProfile("deepseek-ai/DeepSeek-R1", 0.13, CHAT, 900, 800, 450.0, 15.0, 0.9, 0.04),
    ModelProfile("text-embedding-3-small", 0.15, EMBEDDINGS, 250, 0, 25.0, 0.0, 0.0, 0.005),
)

# (error_type, message template, severity, relative weight)
_FAILURES: Final[tuple[tuple[str, str, ErrorSeverity, int], ...]] = (
    ("timeout", "Upstream inference timed out after 30 s", "high", 3),
    ("context_length_exceeded", "Prompt exceeds the model's context of 8192 tokens", "low", 4),
    ("invalid_request_error", "Invalid value for 'temperature': must be between 0 and 2", "low", 3),
    (
        "internal_server_error",
        "Worker crashed while decoding: CUDA illegal memory access",
        "critical",
        1,
    ),
    ("service_unavailable", "No healthy replica for {model}", "high", 1),
    (
        "gpu_out_of_memory",
        "CUDA out of memory while allocating the KV cache for {model}",
        "critical",
        1,
    ),
)
_KV_BYTES_PER_TOKEN: Final = 8 * 1024
_USERS: Final = ("user-ada", "user-grace", "user-linus", "user-barbara", "user-ken", None)
_ORGS: Final = ("org-research", "org-platform", "org-support")


@dataclass(slots=True)
class _RateLimit:
    limit: int
    period: float
    remaining: int
    reset_at: float  # Unix seconds


class DemoTraffic:
    """Synthetic traffic recorded into ``collector``: run it with :meth:`run`.

    About ``rate`` requests per second, following a slow wave, with bursts of
    3-5x now and then; streaming and non-streaming requests; errors of several
    types and severities (and a low-severity warm-up error right away, so an
    error shows within the first second); per-endpoint rate limits that fill
    up during bursts (requests past the limit fail with
    ``rate_limit_exceeded``) and reset every ``rate_limit_period`` seconds; a
    KV cache with prefix hits, misses and evictions; worker and queue load.
    ``seed`` makes the random choices repeatable.
    """

    def __init__(
        self,
        collector: MetricsCollector,
        *,
        seed: int | None = None,
        rate: float = 8.0,
        step: float = 0.1,
        profiles: Sequence[ModelProfile] = DEFAULT_PROFILES,
        rate_limit_period: float = 15.0,
        workers: int = 64,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"rate must be > 0 requests per second, got {rate!r}")
        if not (math.isfinite(step) and step > 0):
            raise ConfigError(f"step must be > 0 seconds, got {step!r}")
        if not profiles:
            raise ConfigError("profiles must name at least one model")
        self.collector = collector
        self.rate = rate
        self.step_seconds = step
        self.profiles = tuple(profiles)
        self.workers = workers
        self._rng = random.Random(seed)
        self._wall = wall_clock
        self._elapsed = 0.0
        self._burst_until = 0.0
        self._burst_factor = 1.0
        self._weights = [p.weight for p in self.profiles]
        # Rate limits sized so that normal traffic uses most of each, and a
        # burst runs it out before the reset.
        share: dict[str, float] = {}
        total_weight = sum(self._weights)
        for profile in self.profiles:
            share[profile.service] = share.get(profile.service, 0.0) + profile.weight / total_weight
        now = wall_clock()
        self._limits: dict[str, _RateLimit] = {}
        for service, fraction in sorted(share.items()):
            limit = max(10, math.ceil(rate * fraction * rate_limit_period * 1.3))
            self._limits[service] = _RateLimit(
                limit, rate_limit_period, limit, now + rate_limit_period
            )
            self._publish_limit(service)
        # KV cache: starts warm, close to full, so evictions begin early.
        self._kv_capacity = 1024 * 1024 * 1024
        self._kv_entries: deque[int] = deque()
        self._kv_bytes = 0
        self._kv_hits = 0
        self._kv_misses = 0
        self._kv_evictions = 0
        self._kv_lookup_ms = 0.08
        while self._kv_bytes < self._kv_capacity * 0.9:
            size = self._rng.randint(200, 1200) * _KV_BYTES_PER_TOKEN
            self._kv_entries.append(size)
            self._kv_bytes += size
        self._publish_kv()
        self._warmed_up = False

    # --- the loop ------------------------------------------------------------

    async def run(self) -> None:
        """Generate traffic until cancelled, one :meth:`step` every ``step`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            self.step()
            deadline += self.step_seconds
            delay = deadline - loop.time()
            if delay < 0:  # fell behind (a stalled loop): do not catch up in a burst
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)

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
        if self._elapsed >= self._burst_until:
            self._burst_factor = 1.0
            # On average one burst every 20 s, lasting 3-6 s.
            if rng.random() < dt / 20:
                self._burst_until = self._elapsed + rng.uniform(3.0, 6.0)
                self._burst_factor = rng.uniform(3.0, 5.0)
        wave = 1.0 + 0.3 * math.sin(2 * math.pi * self._elapsed / 90)
        current_rate = self.rate * wave * self._burst_factor
        count = self._poisson(current_rate * dt)
        # The first step always carries traffic, so the stream starts alive.
        if self._elapsed <= dt:
            count = max(count, 1)
        self._reset_limits()
        latencies = [self._one_request() for _ in range(count)]
        self._publish_kv()
        # Little's law: requests in the system = arrival rate x time in system.
        mean_latency = (sum(latencies) / len(latencies) / 1000) if latencies else 0.5
        busy = current_rate * mean_latency
        self.collector.update_load(
            active_workers=min(self.workers, round(busy)),
            queue_size=max(0, round(busy - self.workers)),
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
        return max(1, round(self._rng.lognormvariate(math.log(median), 0.5)))

    def _one_request(self) -> float:
        rng = self._rng
        profile = rng.choices(self.profiles, weights=self._weights)[0]
        limit = self._limits[profile.service]
        user = rng.choice(_USERS)
        organization = rng.choice(_ORGS) if user is not None else None
        prompt = self._tokens(profile.prompt_tokens)
        if limit.remaining == 0:
            latency = rng.uniform(1.0, 4.0)
            record = self.collector.record_request(
                profile.name,
                prompt,
                0,
                latency,
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
            return latency
        limit.remaining -= 1
        self._publish_limit(profile.service)
        self._kv_lookup(prompt)

        streaming = rng.random() < profile.streaming_share
        completion = self._tokens(profile.completion_tokens)
        jitter = rng.lognormvariate(0.0, 0.25)
        ttft = profile.ttft_ms * jitter
        latency = 8.0 + ttft + completion * profile.ms_per_token * jitter
        if rng.random() < profile.error_rate:
            error_type, template, severity, _ = rng.choices(
                _FAILURES, weights=[f[3] for f in _FAILURES]
            )[0]
            message = template.format(model=profile.name)
            if error_type == "timeout":
                latency = 30_000.0
            completion = 0 if error_type != "timeout" else completion // 3
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
            return latency
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
            itl_ms=profile.ms_per_token * jitter if streaming else None,
            service=profile.service,
        )
        return latency

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

    def _kv_lookup(self, prompt_tokens: int) -> None:
        rng = self._rng
        # Shared system prompts and multi-turn chats make prefix reuse common.
        hit_probability = 0.55 + 0.2 * math.sin(2 * math.pi * self._elapsed / 45)
        lookup_ms = rng.lognormvariate(math.log(0.08), 0.4)
        self._kv_lookup_ms = 0.95 * self._kv_lookup_ms + 0.05 * lookup_ms
        if rng.random() < hit_probability:
            self._kv_hits += 1
            return
        self._kv_misses += 1
        size = prompt_tokens * _KV_BYTES_PER_TOKEN
        self._kv_entries.append(size)
        self._kv_bytes += size
        while self._kv_bytes > self._kv_capacity and len(self._kv_entries) > 1:
            self._kv_bytes -= self._kv_entries.popleft()
            self._kv_evictions += 1

    def _publish_kv(self) -> None:
        self.collector.update_kv_cache(
            cache_hits=self._kv_hits,
            cache_misses=self._kv_misses,
            cache_size_bytes=self._kv_bytes,
            cache_entries=len(self._kv_entries),
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
