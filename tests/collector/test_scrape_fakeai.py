"""EngineScraper against the real FakeAI server's Prometheus endpoints.

FakeAI serves its engine figures at ``/dynamo/metrics`` (queue, batch,
KV-cache hit rate, TTFT/ITL summaries; streamed requests) and per-model
token counters at ``/metrics/by-model/prometheus`` (non-streamed requests).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metricstream.collector import EngineScraper, MetricsCollector
from metricstream.protocol import MessageType
from tests.collector.helpers import ManualClock, RecordingPublisher
from tests.support import fakeai_chat, scaled

pytestmark = [pytest.mark.fakeai, pytest.mark.slow]

MODEL = "openai/gpt-oss-120b"


async def streamed_chat(port: int, count: int) -> None:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    async with httpx.AsyncClient(timeout=scaled(30)) as http:
        for _ in range(count):
            async with http.stream(
                "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body
            ) as response:
                response.raise_for_status()
                async for _ in response.aiter_lines():
                    pass


async def families(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=scaled(10)) as http:
        text = (await http.get(url)).text
    return {f.name: f for f in text_string_to_metric_families(text)}


def completion_tokens(found: dict[str, Any]) -> float:
    return sum(
        s.value
        for s in found["fakeai_model_tokens"].samples
        if s.labels == {"model": MODEL, "type": "completion"}
    )


async def test_scrapes_the_real_fakeai(fakeai: int) -> None:
    base = f"http://127.0.0.1:{fakeai}"
    dynamo, by_model = f"{base}/dynamo/metrics", f"{base}/metrics/by-model/prometheus"
    publisher = RecordingPublisher()
    clock = ManualClock(50.0)
    scraper = EngineScraper(publisher, [dynamo, by_model], clock=clock)
    collector = MetricsCollector(scraper, clock=clock, system_stats=False)
    try:
        await fakeai_chat(fakeai, 1)  # so the per-model counters exist
        await scraper.scrape_once()
        before = completion_tokens(await families(by_model))
        await fakeai_chat(fakeai, 3)
        await streamed_chat(fakeai, 3)
        clock.advance(2.0)
        await scraper.scrape_once()
        collector.flush()
        after = await families(by_model)
        engine = await families(dynamo)
    finally:
        await scraper.aclose()
        await collector.aclose()

    assert [t.engine for t in scraper.targets] == ["fakeai", "fakeai"]
    assert all(t.up for t in scraper.targets)
    generated = completion_tokens(after) - before
    assert generated > 0
    model = [m.data for m in publisher.of_type(MessageType.MODEL_UPDATE) if m.data.model == MODEL]
    assert model[-1].generation_tokens_per_second == pytest.approx(generated / 2.0)
    # FakeAI computes its own TTFT quantiles (a summary): p50 and p99 are
    # passed on as they are; it has no 0.95 quantile, so no p95 is made up.
    ttft = {
        float(s.labels["quantile"]): s.value * 1000
        for s in engine["fakeai_dynamo_ttft_seconds"].samples
    }
    metrics = publisher.of_type(MessageType.METRICS_UPDATE)[-1].data
    assert metrics.ttft_p50_ms == pytest.approx(ttft[0.5], abs=0.001)
    assert metrics.ttft_p99_ms == pytest.approx(ttft[0.99], abs=0.001)
    assert metrics.ttft_p95_ms is None
    hit_rate = engine["fakeai_dynamo_kv_cache_hit_rate"].samples[0].value
    kv = publisher.of_type(MessageType.KV_CACHE_UPDATE)[-1].data
    assert kv.hit_rate == pytest.approx(hit_rate)
