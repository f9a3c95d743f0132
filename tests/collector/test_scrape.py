"""EngineScraper against stand-in vLLM, SGLang and TGI servers on loopback.

Each scrape is driven by hand (``scrape_once``) with a manual clock, so rates
and percentiles are exact; one test runs the scraper's own loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from metricstream.collector import OTHER, EngineScraper, MetricsCollector
from metricstream.exceptions import ConfigError
from metricstream.protocol import (
    KVCacheUpdatePayload,
    MessageType,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    SystemUpdatePayload,
    WebSocketMessage,
)
from tests.collector.engines import ITL_BOUNDS, TTFT_BOUNDS, EngineServer, Exposition, serve_engine
from tests.collector.helpers import ManualClock, RecordingPublisher
from tests.support import scaled, wait_until

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
E2E_BOUNDS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0)


@pytest.fixture
def engine() -> Iterator[EngineServer]:
    with serve_engine() as server:
        yield server


def vllm(
    *,
    prompt: int,
    generation: int,
    ttft: list[int] | None = None,
    itl: list[int] | None = None,
    e2e: list[int] | None = None,
    running: int = 3,
    waiting: int = 1,
    usage: float = 0.42,
    queries: int = 10_000,
    hits: int = 4_000,
    older: bool = False,
) -> str:
    """A vLLM V1 exposition (``older``: the names of earlier releases)."""
    # Histograms left out are empty: no request finished in that respect.
    ttft = zeros(TTFT_BOUNDS) if ttft is None else ttft
    itl = zeros(ITL_BOUNDS) if itl is None else itl
    e2e = zeros(E2E_BOUNDS) if e2e is None else e2e
    labels = {"model_name": MODEL, "engine": "0"}
    out = Exposition()
    out.gauge(
        "vllm:num_requests_running",
        running,
        "Number of requests in model execution batches.",
        **labels,
    )
    out.gauge(
        "vllm:num_requests_waiting",
        waiting,
        "Number of requests waiting to be processed.",
        **labels,
    )
    usage_name = "vllm:gpu_cache_usage_perc" if older else "vllm:kv_cache_usage_perc"
    out.gauge(usage_name, usage, "KV-cache usage. 1 means 100 percent usage.", **labels)
    out.counter("vllm:prefix_cache_queries", queries, "Prefix cache queries, in tokens.", **labels)
    out.counter("vllm:prefix_cache_hits", hits, "Prefix cache hits, in tokens.", **labels)
    out.counter("vllm:num_preemptions", 0, "Cumulative number of preemptions.", **labels)
    out.counter("vllm:prompt_tokens", prompt, "Number of prefill tokens processed.", **labels)
    out.counter("vllm:generation_tokens", generation, "Number of generation tokens.", **labels)
    out.counter(
        "vllm:request_success", 7, "Count of successful requests.", finished_reason="stop", **labels
    )
    out.histogram(
        "vllm:time_to_first_token_seconds",
        TTFT_BOUNDS,
        ttft,
        0.1 * sum(ttft),
        "Histogram of time to first token in seconds.",
        **labels,
    )
    itl_name = "vllm:time_per_output_token_seconds" if older else "vllm:inter_token_latency_seconds"
    out.histogram(itl_name, ITL_BOUNDS, itl, 0.03 * sum(itl), "Inter-token latency.", **labels)
    out.histogram(
        "vllm:e2e_request_latency_seconds",
        E2E_BOUNDS,
        e2e,
        1.0 * sum(e2e),
        "Histogram of end to end request latency in seconds.",
        **labels,
    )
    return out.text()


def zeros(bounds: tuple[float, ...]) -> list[int]:
    return [0] * (len(bounds) + 1)


def counts(bounds: tuple[float, ...], **at: int) -> list[int]:
    """Per-bucket counts: ``at`` maps ``b<index>`` to a count (index into bounds + Inf)."""
    values = zeros(bounds)
    for key, count in at.items():
        values[int(key[1:])] = count
    return values


def last(publisher: RecordingPublisher, mtype: MessageType, key: str = "") -> Any:
    for message in reversed(publisher.messages):
        if message.type != mtype:
            continue
        if mtype == MessageType.MODEL_UPDATE and message.data.model != key:
            continue
        return message
    raise AssertionError(f"no {mtype} {key} published")


def of(publisher: RecordingPublisher, mtype: MessageType) -> list[WebSocketMessage[Any]]:
    return publisher.of_type(mtype)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


async def test_vllm_figures_come_from_deltas_between_scrapes(
    engine: EngineServer, clock: ManualClock, publisher: RecordingPublisher
) -> None:
    # Before: 100 first tokens seen since start; then 20 more in the second.
    ttft_before = counts(TTFT_BOUNDS, b3=40, b7=60)
    engine.serve(
        vllm(
            prompt=10_000,
            generation=50_000,
            ttft=ttft_before,
            itl=zeros(ITL_BOUNDS),
            e2e=zeros(E2E_BOUNDS),
            queries=10_000,
            hits=4_000,
        )
    )
    scraper = EngineScraper(publisher, [engine.url], clock=clock)
    async with MetricsCollector(scraper, clock=clock, system_stats=True) as collector:
        try:
            collector.sample_system()
            await scraper.scrape_once()
            collector.flush()
            # A first scrape is a baseline: gauges, but no rate yet.
            kv = last(publisher, MessageType.KV_CACHE_UPDATE).data
            assert isinstance(kv, KVCacheUpdatePayload)
            assert kv.usage_percentage == 42.0
            assert last(publisher, MessageType.METRICS_UPDATE).data.prompt_tokens_per_second is None
            system = last(publisher, MessageType.SYSTEM_UPDATE).data
            assert (system.active_workers, system.queue_size) == (3, 1)

            # Second scrape, 2 s later. TTFT deltas per bucket: 2 in (0.01, 0.02],
            # 8 in (0.02, 0.04], 8 in (0.04, 0.06], 2 in (0.06, 0.08].
            ttft_after = list(ttft_before)
            for index, extra in ((3, 2), (4, 8), (5, 8), (6, 2)):
                ttft_after[index] += extra
            engine.serve(
                vllm(
                    prompt=10_400,
                    generation=51_600,
                    ttft=ttft_after,
                    itl=counts(ITL_BOUNDS, b1=50, b2=50),
                    e2e=counts(E2E_BOUNDS, b3=10),
                    running=5,
                    waiting=2,
                    usage=0.61,
                    queries=11_000,
                    hits=4_750,
                )
            )
            clock.advance(2.0)
            await scraper.scrape_once()
        finally:
            await scraper.aclose()

    metrics = last(publisher, MessageType.METRICS_UPDATE)
    data = metrics.data
    assert isinstance(data, MetricsUpdatePayload)
    assert data.prompt_tokens_per_second == 200.0  # 400 tokens in 2 s
    assert data.generation_tokens_per_second == 800.0
    assert data.tokens_per_second == 1000.0
    # 20 new observations: p50 is rank 10, the end of (0.02, 0.04]; p95 is
    # rank 19, half-way into (0.06, 0.08]; p99 is rank 19.8, 90 % into it.
    assert data.ttft_p50_ms == pytest.approx(40.0)
    assert data.ttft_p95_ms == pytest.approx(70.0)
    assert data.ttft_p99_ms == pytest.approx(78.0)
    # ITL: 50 in (0.01, 0.025], 50 in (0.025, 0.05]: the median ends the first.
    assert data.itl_p50_ms == pytest.approx(25.0)
    assert data.itl_p99_ms == pytest.approx(49.5)
    # End-to-end: 10 requests in (0.8, 1.0]; it has no field, so metadata.
    assert metrics.metadata["engine_e2e_p50_ms"] == pytest.approx(900.0)
    assert metrics.metadata["engines"] == {
        engine.url: {"engine": "vllm", "up": True, "stale": False}
    }
    # Totals stay what metricstream itself recorded: nothing.
    assert data.total_requests == 0
    assert data.total_tokens == 0

    model = last(publisher, MessageType.MODEL_UPDATE, MODEL).data
    assert isinstance(model, ModelUpdatePayload)
    assert model.request_count == 0
    assert model.generation_tokens_per_second == 800.0
    assert model.ttft_p50_ms == pytest.approx(40.0)

    kv = last(publisher, MessageType.KV_CACHE_UPDATE).data
    assert kv.usage_percentage == 61.0
    assert kv.hit_rate == 75.0  # 750 more hits out of 1000 more queried tokens
    assert (kv.cache_hits, kv.cache_misses) == (4_750, 6_250)
    system = last(publisher, MessageType.SYSTEM_UPDATE).data
    assert isinstance(system, SystemUpdatePayload)
    assert (system.active_workers, system.queue_size) == (5, 2)
    assert scraper.targets[0].engine == "vllm"
    assert scraper.targets[0].up


async def test_older_vllm_names_and_a_counter_reset(
    engine: EngineServer, clock: ManualClock, publisher: RecordingPublisher
) -> None:
    scraper = EngineScraper(publisher, [engine.url], clock=clock, window=60.0)
    itl = counts(ITL_BOUNDS, b0=10)
    states = [
        # Steady, then the engine restarts: every counter and bucket falls.
        {
            "prompt": 5_000,
            "generation": 9_000,
            "ttft": counts(TTFT_BOUNDS, b2=10),
            "itl": itl,
            "queries": 900,
            "hits": 300,
        },
        {
            "prompt": 5_300,
            "generation": 9_600,
            "ttft": counts(TTFT_BOUNDS, b2=12),
            "itl": itl,
            "queries": 1_000,
            "hits": 350,
        },
        {
            "prompt": 100,
            "generation": 200,
            "ttft": counts(TTFT_BOUNDS, b8=4),
            "itl": counts(ITL_BOUNDS, b4=4),
            "queries": 40,
            "hits": 30,
        },
    ]
    try:
        for state in states:
            engine.serve(vllm(e2e=zeros(E2E_BOUNDS), older=True, usage=0.3, **state))  # type: ignore[arg-type]
            await scraper.scrape_once()
            clock.advance(1.0)
    finally:
        await scraper.aclose()
    model = last(publisher, MessageType.MODEL_UPDATE, MODEL).data
    # 300 before the restart, then the 100 counted since it: 400 in 2 s.
    assert model.prompt_tokens_per_second == 200.0
    assert model.generation_tokens_per_second == 400.0
    for message in of(publisher, MessageType.MODEL_UPDATE):
        assert (
            message.data.prompt_tokens_per_second is None
            or message.data.prompt_tokens_per_second >= 0
        )
    # The TTFT window holds 2 + 4 new observations, 4 of them after the
    # restart in (0.1, 0.25]: the median lies there.
    assert 100.0 < model.ttft_p50_ms <= 250.0
    # The older ITL name (time_per_output_token_seconds) is read as ITL.
    assert model.itl_p50_ms is not None
    kv = last(publisher, MessageType.KV_CACHE_UPDATE).data
    assert kv.usage_percentage == 30.0  # from gpu_cache_usage_perc
    # (50 + 30) hits out of (100 + 40) queries.
    assert kv.hit_rate == pytest.approx(100 * 80 / 140, abs=0.001)


def sglang(
    *, prompt: int, generation: int, cached: int, ttft: list[int], running: int, queued: int
) -> str:
    labels = {"model_name": "Qwen/Qwen2.5-7B-Instruct", "tp_rank": "0"}
    out = Exposition()
    out.counter("sglang:prompt_tokens", prompt, "Number of prefill tokens processed.", **labels)
    out.counter(
        "sglang:generation_tokens", generation, "Number of generation tokens processed.", **labels
    )
    out.counter("sglang:cached_tokens", cached, "Number of cached prompt tokens.", **labels)
    out.counter("sglang:num_requests", 12, "Number of requests processed.", **labels)
    out.gauge("sglang:num_running_reqs", running, "The number of running requests.", **labels)
    out.gauge(
        "sglang:num_queue_reqs", queued, "The number of requests in the waiting queue.", **labels
    )
    out.gauge("sglang:token_usage", 0.25, "The token usage.", **labels)
    out.gauge("sglang:cache_hit_rate", 0.9, "The prefix cache hit rate.", **labels)
    out.gauge("sglang:gen_throughput", 1234.5, "The generation throughput (token/s).", **labels)
    out.histogram("sglang:time_to_first_token_seconds", TTFT_BOUNDS, ttft, 1.0, **labels)
    out.histogram(
        "sglang:inter_token_latency_seconds", ITL_BOUNDS, counts(ITL_BOUNDS, b2=5), 0.2, **labels
    )
    return out.text()


async def test_sglang(
    engine: EngineServer, clock: ManualClock, publisher: RecordingPublisher
) -> None:
    scraper = EngineScraper(publisher, [engine.url], clock=clock)
    try:
        engine.serve(
            sglang(
                prompt=2_000,
                generation=3_000,
                cached=1_000,
                ttft=zeros(TTFT_BOUNDS),
                running=2,
                queued=0,
            )
        )
        await scraper.scrape_once()
        clock.advance(4.0)
        engine.serve(
            sglang(
                prompt=2_400,
                generation=4_000,
                cached=1_100,
                ttft=counts(TTFT_BOUNDS, b9=10),
                running=6,
                queued=3,
            )
        )
        await scraper.scrape_once()
    finally:
        await scraper.aclose()
    model = last(publisher, MessageType.MODEL_UPDATE, "Qwen/Qwen2.5-7B-Instruct").data
    assert model.prompt_tokens_per_second == 100.0
    assert model.generation_tokens_per_second == 250.0
    # 10 first tokens in (0.25, 0.5]: the median half-way.
    assert model.ttft_p50_ms == pytest.approx(375.0)
    kv = last(publisher, MessageType.KV_CACHE_UPDATE).data
    # 100 of 400 new prompt tokens came from the cache (not the 0.9 gauge,
    # which covers the engine's whole uptime).
    assert kv.hit_rate == 25.0
    assert kv.usage_percentage == 25.0
    assert scraper.targets[0].engine == "sglang"


def tgi(
    *, generated: float, durations: list[int], queue: int, batch: int, per_token: int = 4
) -> str:
    out = Exposition()
    out.counter("tgi_request_count", 30, "Requests received.", suffix="")
    out.counter("tgi_request_success", 29, "Requests succeeded.", suffix="")
    out.counter("tgi_request_failure", 1, "Requests failed.", suffix="", err="validation")
    out.gauge("tgi_queue_size", queue, "Requests waiting.")
    out.gauge("tgi_batch_current_size", batch, "Requests in the batch.")
    out.gauge("tgi_batch_current_max_tokens", 16_000, "Tokens of the batch.")
    out.histogram("tgi_request_duration", E2E_BOUNDS, durations, 12.0)
    out.histogram(
        "tgi_request_mean_time_per_token_duration",
        ITL_BOUNDS,
        counts(ITL_BOUNDS, b1=per_token),
        0.08,
    )
    out.histogram(
        "tgi_request_generated_tokens", (16.0, 64.0, 256.0, 1024.0), [0, 2, 2, 0, 0], generated
    )
    out.histogram("tgi_request_input_length", (16.0, 64.0, 256.0, 1024.0), [0, 0, 4, 0, 0], 800.0)
    return out.text()


async def test_tgi_names_its_model_from_info(
    engine: EngineServer, clock: ManualClock, publisher: RecordingPublisher
) -> None:
    engine.info = {
        "model_id": "mistralai/Mistral-7B-Instruct-v0.3",
        "max_batch_total_tokens": 16000,
    }
    scraper = EngineScraper(publisher, [engine.url], clock=clock)
    collector = MetricsCollector(scraper, clock=clock)
    try:
        engine.serve(tgi(generated=500.0, durations=zeros(E2E_BOUNDS), queue=0, batch=1))
        await scraper.scrape_once()
        clock.advance(2.0)
        engine.serve(
            tgi(generated=900.0, durations=counts(E2E_BOUNDS, b5=4), queue=4, batch=8, per_token=8)
        )
        await scraper.scrape_once()
        collector.flush()
    finally:
        await scraper.aclose()
        await collector.aclose()
    model = last(publisher, MessageType.MODEL_UPDATE, "mistralai/Mistral-7B-Instruct-v0.3").data
    # Generated tokens come from the histogram's _sum: 400 more in 2 s.
    assert model.generation_tokens_per_second == 200.0
    assert model.prompt_tokens_per_second == 0.0
    assert model.ttft_p50_ms is None  # TGI publishes no time to first token
    # 4 new requests' mean time per token, all in (0.01, 0.025].
    assert model.itl_p50_ms == pytest.approx(17.5)
    metrics = last(publisher, MessageType.METRICS_UPDATE)
    assert metrics.metadata["engine_e2e_p50_ms"] == pytest.approx(1750.0)  # in (1.5, 2.0]
    assert "/info" in engine.requests
    assert not of(publisher, MessageType.KV_CACHE_UPDATE)  # TGI has no KV-cache figure


async def test_a_failing_target_is_one_error_then_stale_then_it_resumes(
    clock: ManualClock, publisher: RecordingPublisher
) -> None:
    state = {
        "prompt": 100,
        "generation": 100,
        "ttft": counts(TTFT_BOUNDS, b2=1),
        "itl": zeros(ITL_BOUNDS),
        "e2e": zeros(E2E_BOUNDS),
    }
    with serve_engine() as engine:
        port = engine.port
        url = engine.url
        scraper = EngineScraper(publisher, [url], clock=clock, timeout=5.0)
        collector = MetricsCollector(scraper, clock=clock)
        engine.serve(vllm(**state))  # type: ignore[arg-type]
        await scraper.scrape_once()
        clock.advance(1.0)
        state["generation"] = 300
        engine.serve(vllm(**state))  # type: ignore[arg-type]
        await scraper.scrape_once()
        collector.flush()
        assert (
            last(publisher, MessageType.METRICS_UPDATE).data.generation_tokens_per_second == 200.0
        )
        # The engine answers 500, then garbage, then not at all.
        engine.serve("Internal Server Error", status=500)
        await scraper.scrape_once()
        engine.serve("<html>not an exposition</html>\n")
        await scraper.scrape_once()
    for _ in range(3):
        await scraper.scrape_once()  # connection refused
    errors = of(publisher, MessageType.ERROR_UPDATE)
    assert len(errors) == 1, [e.data.error_message for e in errors]
    assert errors[0].data.error_type == "engine_scrape_failed"
    assert "HTTP 500" in errors[0].data.error_message
    assert url in errors[0].data.error_message
    registry = CollectorRegistry()
    registry.register(scraper)
    assert (
        registry.get_sample_value("metricstream_engine_up", {"target": url, "engine": "vllm"})
        == 0.0
    )
    assert (
        registry.get_sample_value("metricstream_engine_scrape_failures_total", {"target": url})
        == 5.0
    )
    status = scraper.targets[0]
    assert not status.up
    assert status.failures == 5
    assert status.last_error
    # The stale state shows: the engine's figures are gone from metrics_update,
    # and the last KV-cache value is marked stale.
    metrics = last(publisher, MessageType.METRICS_UPDATE)
    assert metrics.data.generation_tokens_per_second is None
    assert metrics.metadata["engines"][url]["stale"] is True
    assert last(publisher, MessageType.KV_CACHE_UPDATE).metadata["engines"][url]["up"] is False

    # The engine comes back (restarted: counters from zero) on the same port.
    with serve_engine(port) as engine:
        engine.serve(
            vllm(
                prompt=10,
                generation=10,
            )
        )
        await scraper.scrape_once()
        clock.advance(1.0)
        engine.serve(
            vllm(
                prompt=10,
                generation=60,
            )
        )
        await scraper.scrape_once()
    await scraper.aclose()
    await collector.aclose()
    assert scraper.targets[0].up
    assert scraper.targets[0].failures == 0
    assert last(publisher, MessageType.METRICS_UPDATE).data.generation_tokens_per_second == 50.0
    assert len(of(publisher, MessageType.ERROR_UPDATE)) == 1
    assert (
        registry.get_sample_value("metricstream_engine_up", {"target": url, "engine": "vllm"})
        == 1.0
    )


async def test_the_collector_keeps_its_totals_and_gets_the_engine_figures(
    engine: EngineServer, clock: ManualClock, publisher: RecordingPublisher
) -> None:
    scraper = EngineScraper(publisher, [engine.url], clock=clock)
    collector = MetricsCollector(scraper, clock=clock)
    try:
        engine.serve(
            vllm(
                prompt=0,
                generation=0,
            )
        )
        await scraper.scrape_once()
        for _ in range(3):
            collector.record_request(MODEL, 100, 50, 900.0, streaming=True, ttft_ms=120.0)
        collector.flush()
        clock.advance(1.0)
        engine.serve(
            vllm(
                prompt=300,
                generation=150,
                ttft=counts(TTFT_BOUNDS, b7=3),
                itl=zeros(ITL_BOUNDS),
                e2e=zeros(E2E_BOUNDS),
            )
        )
        await scraper.scrape_once()
        collector.flush()
    finally:
        await scraper.aclose()
        await collector.aclose()
    models = [m.data for m in of(publisher, MessageType.MODEL_UPDATE) if m.data.model == MODEL]
    # Once the collector has published the model, every later model_update
    # carries its totals: the scraper never publishes competing ones.
    first_real = next(i for i, m in enumerate(models) if m.request_count == 3)
    assert all(m.request_count == 3 for m in models[first_real:])
    assert models[-1].generation_tokens_per_second == 150.0
    assert all(m.data.total_requests == 3 for m in of(publisher, MessageType.METRICS_UPDATE)[-2:])
    assert last(publisher, MessageType.METRICS_UPDATE).data.tokens_per_second == 450.0


async def test_the_scraper_runs_by_itself(engine: EngineServer) -> None:
    publisher = RecordingPublisher()
    engine.serve(
        vllm(
            prompt=0,
            generation=0,
            usage=0.1,
        )
    )
    async with EngineScraper(publisher, [engine.url], interval=0.05) as scraper:
        assert scraper.running

        def usage() -> float | None:
            found = of(publisher, MessageType.KV_CACHE_UPDATE)
            return found[-1].data.usage_percentage if found else None

        await wait_until(lambda: usage() == 10.0, 10)
        engine.serve(
            vllm(
                prompt=0,
                generation=0,
                usage=0.9,
            )
        )
        await wait_until(lambda: usage() == 90.0, 10)
    assert not scraper.running


@pytest.mark.parametrize(
    ("targets", "options"),
    [
        ([], {}),
        (["ftp://example/metrics"], {}),
        (["http://127.0.0.1:1/metrics"], {"interval": 0}),
        (["http://127.0.0.1:1/metrics"], {"window": float("nan")}),
        (["http://127.0.0.1:1/metrics"], {"timeout": -1.0}),
        (["http://127.0.0.1:1/metrics"], {"max_exposition_bytes": 0}),
        ("http://127.0.0.1:1/metrics", {}),
    ],
)
def test_invalid_options_are_a_config_error(targets: Any, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        EngineScraper(RecordingPublisher(), targets, **options)


async def test_a_silent_engine_times_out_and_the_loop_goes_on(
    engine: EngineServer, publisher: RecordingPublisher
) -> None:
    # A peer that accepts the connection and never answers.
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    silent_url = f"http://127.0.0.1:{port}/metrics"
    engine.serve(
        vllm(
            prompt=0,
            generation=0,
            usage=0.2,
        )
    )
    try:
        async with EngineScraper(
            publisher, [silent_url, engine.url], interval=0.05, timeout=scaled(0.3)
        ) as scraper:
            await wait_until(
                lambda: any(
                    e.data.error_type == "engine_scrape_failed"
                    for e in of(publisher, MessageType.ERROR_UPDATE)
                ),
                10,
            )
            await wait_until(lambda: scraper.targets[0].failures >= 3, 10)
            # The healthy engine kept being read meanwhile.
            served = len(engine.requests)
            await wait_until(lambda: len(engine.requests) > served + 2, 10)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert accepted.is_set()
    # One error for the silent peer, however many scrapes it failed.
    errors = [
        e for e in of(publisher, MessageType.ERROR_UPDATE) if silent_url in e.data.error_message
    ]
    assert len(errors) == 1
    assert scraper.targets[0].failures >= 3


async def test_an_oversized_exposition_is_refused(
    engine: EngineServer, publisher: RecordingPublisher
) -> None:
    text = vllm(
        prompt=0,
        generation=0,
    )
    engine.serve(text + "# padding\n" * 2000)
    scraper = EngineScraper(publisher, [engine.url], max_exposition_bytes=len(text) + 100)
    try:
        await scraper.scrape_once()
    finally:
        await scraper.aclose()
    status = scraper.targets[0]
    assert not status.up
    assert "larger than" in (status.last_error or "")


async def test_tgi_without_info_is_named_after_its_address(
    engine: EngineServer, clock: ManualClock, publisher: RecordingPublisher
) -> None:
    scraper = EngineScraper(publisher, [engine.url], clock=clock)
    try:
        engine.serve(tgi(generated=0.0, durations=zeros(E2E_BOUNDS), queue=0, batch=0))
        await scraper.scrape_once()
        clock.advance(1.0)
        engine.serve(tgi(generated=64.0, durations=zeros(E2E_BOUNDS), queue=0, batch=1))
        await scraper.scrape_once()
    finally:
        await scraper.aclose()
    model = last(publisher, MessageType.MODEL_UPDATE, f"127.0.0.1:{engine.port}").data
    assert model.generation_tokens_per_second == 64.0


def _many_models(generation: dict[str, int]) -> str:
    """A vLLM exposition serving several models (one sample per model per family)."""
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        *(f'vllm:num_requests_running{{model_name="{m}",engine="0"}} 1' for m in generation),
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        *(f'vllm:prompt_tokens_total{{model_name="{m}",engine="0"}} 0' for m in generation),
        "# HELP vllm:generation_tokens_total Number of generation tokens.",
        "# TYPE vllm:generation_tokens_total counter",
        *(
            f'vllm:generation_tokens_total{{model_name="{m}",engine="0"}} {n}'
            for m, n in generation.items()
        ),
    ]
    return "\n".join(lines) + "\n"


async def test_models_past_the_cap_are_added_up_under_other(
    engine: EngineServer,
    clock: ManualClock,
    publisher: RecordingPublisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    names = ["m0", "m1", "m2", "m3"]
    engine.serve(_many_models(dict.fromkeys(names, 1000)))
    scraper = EngineScraper(publisher, [engine.url], clock=clock, max_models=2)
    try:
        await scraper.scrape_once()
        # 2 s later: m0..m3 generated 100, 200, 300 and 400 more tokens.
        engine.serve(_many_models({m: 1000 + 100 * (i + 1) for i, m in enumerate(names)}))
        clock.advance(2.0)
        await scraper.scrape_once()
    finally:
        await scraper.aclose()
    rates = {
        m.data.model: m.data.generation_tokens_per_second
        for m in of(publisher, MessageType.MODEL_UPDATE)
    }
    # The first two by name; the other two's tokens added up, none lost.
    assert rates == {"m0": 50.0, "m1": 100.0, OTHER: 350.0}
    folded = [r for r in caplog.records if "more than 2 models" in r.getMessage()]
    assert len(folded) == 1


def test_max_models_must_be_a_positive_integer() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="max_models"):
            EngineScraper(RecordingPublisher(), ["http://127.0.0.1:1/metrics"], max_models=bad)
