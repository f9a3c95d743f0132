"""``/metrics`` exports the LLM figures of the published requests.

A real server on loopback, requests recorded by a real collector (and one
published by hand with streaming timings), ``/metrics`` read over HTTP and
parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from metricstream.collector import MetricsCollector
from metricstream.protocol import MessageType, RequestUpdatePayload, make_message
from metricstream.server import (
    LLM_METRIC_NAMES,
    LLMExporter,
    MetricsHub,
    StreamServer,
    create_app,
    uvicorn_config,
)
from tests.support import free_port, scaled, wait_until

BIG = "openai/gpt-oss-120b"
SMALL = "openai/gpt-oss-20b"


@asynccontextmanager
async def exporting() -> AsyncIterator[tuple[LLMExporter, str]]:
    """A real server whose /metrics carries an LLMExporter; yields it and the base URL."""
    hub = MetricsHub(heartbeat_interval=None)
    exporter = LLMExporter(hub)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(exporter)
    app = create_app(hub, registry=registry, dashboard=False)
    server = StreamServer(
        uvicorn_config(app, host="127.0.0.1", port=0, log_level="warning"), hub, close_timeout=1.0
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), 10, "server start")
    if task.done():
        task.result()
    try:
        yield exporter, f"http://127.0.0.1:{server.bound_port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, scaled(30))


async def scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``: (name, labels) -> value."""
    async with httpx.AsyncClient(timeout=scaled(10)) as http:
        response = await http.get(f"{base}/metrics")
    response.raise_for_status()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_metrics_counts_the_requests_made() -> None:
    async with exporting() as (exporter, base):
        collector = MetricsCollector(exporter, system_stats=False)
        try:
            for _ in range(3):
                collector.record_request(BIG, 100, 50, 800.0, cost=0.01)
            collector.record_request(
                BIG, 70, 0, 30_000.0, status="error", error_message="timed out", cost=0.0
            )
            collector.record_error("timeout", "upstream timed out", model=BIG, severity="high")
            collector.record_request(SMALL, 10, 5, 40.0, cost=0.002)
            collector.record_request(SMALL, 10, 0, 0.0, status="in_progress", request_id="r-1")
            # A streamed request with its timings, as a recording proxy publishes it.
            exporter.publish(
                make_message(
                    MessageType.REQUEST_UPDATE,
                    RequestUpdatePayload(
                        id="r-2",
                        model=BIG,
                        created=1_700_000_000.0,
                        prompt_tokens=20,
                        completion_tokens=200,
                        total_tokens=220,
                        latency_ms=2_300.0,
                        streaming=True,
                        status="success",
                        cost=0.004,
                        endpoint="/v1/chat/completions",
                        time_to_first_token_ms=150.0,
                        inter_token_latency_ms=12.0,
                    ),
                )
            )
            during = await scrape(base)
            collector.record_request(SMALL, 10, 30, 900.0, request_id="r-1", cost=0.001)
            after = await scrape(base)
        finally:
            await collector.aclose()

    m = "metricstream_llm_"
    assert value(during, f"{m}requests_total", model=BIG, status="success") == 4
    assert value(during, f"{m}requests_total", model=BIG, status="error") == 1
    assert value(during, f"{m}requests_total", model=SMALL, status="success") == 1
    assert value(during, f"{m}prompt_tokens_total", model=BIG) == 3 * 100 + 70 + 20
    assert value(during, f"{m}completion_tokens_total", model=BIG) == 3 * 50 + 200
    assert value(during, f"{m}cost_usd_total", model=BIG) == pytest.approx(0.034)
    assert value(during, f"{m}errors_total", model=BIG, error_type="timeout") == 1
    # Latency in seconds: 3 x 0.8 s and 2.3 s at or below 2.5 s, the 30 s
    # timeout above 20 s.
    duration = f"{m}request_duration_seconds"
    assert value(during, f"{duration}_bucket", model=BIG, le="0.5") == 0
    assert value(during, f"{duration}_bucket", model=BIG, le="1.0") == 3
    assert value(during, f"{duration}_bucket", model=BIG, le="2.5") == 4
    assert value(during, f"{duration}_bucket", model=BIG, le="20.0") == 4
    assert value(during, f"{duration}_bucket", model=BIG, le="+Inf") == 5
    assert value(during, f"{duration}_count", model=BIG) == 5
    assert value(during, f"{duration}_sum", model=BIG) == pytest.approx(3 * 0.8 + 30 + 2.3)
    ttft = f"{m}time_to_first_token_seconds"
    assert value(during, f"{ttft}_bucket", model=BIG, le="0.1") == 0
    assert value(during, f"{ttft}_bucket", model=BIG, le="0.2") == 1
    assert value(during, f"{ttft}_sum", model=BIG) == pytest.approx(0.15)
    itl = f"{m}inter_token_latency_seconds"
    assert value(during, f"{itl}_bucket", model=BIG, le="0.01") == 0
    assert value(during, f"{itl}_bucket", model=BIG, le="0.015") == 1
    assert value(during, f"{ttft}_count", model=SMALL) == 0  # nothing streamed
    # r-1 is in flight until its final update.
    assert value(during, f"{m}requests_in_flight", model=SMALL) == 1
    assert value(after, f"{m}requests_in_flight", model=SMALL) == 0
    assert value(after, f"{m}requests_total", model=SMALL, status="success") == 2
    # The hub's own figures are still served beside them.
    assert ("metricstream_connections", frozenset()) in after


async def test_every_family_is_exported_before_the_first_request() -> None:
    async with exporting() as (_, base), httpx.AsyncClient(timeout=scaled(10)) as http:
        text = (await http.get(f"{base}/metrics")).text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["metricstream_llm_requests"] == "counter"
    assert families["metricstream_llm_request_duration_seconds"] == "histogram"
    assert families["metricstream_llm_requests_in_flight"] == "gauge"
    for name in LLM_METRIC_NAMES:
        family = name.removesuffix("_total")
        for suffix in ("_bucket", "_sum", "_count"):
            family = family.removesuffix(suffix)
        assert family in families, name


async def test_distinct_model_names_are_bounded() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    exporter = LLMExporter(hub, max_models=3)
    registry = CollectorRegistry()
    registry.register(exporter)
    collector = MetricsCollector(exporter, system_stats=False, max_models=1000)
    for i in range(10):
        collector.record_request(f"model-{i}", 1, 1, 10.0, cost=0.0)
    await collector.aclose()
    models = {
        s.labels["model"]
        for f in registry.collect()
        if f.name == "metricstream_llm_requests"
        for s in f.samples
    }
    assert models == {"model-0", "model-1", "model-2", "(other)"}
    assert (
        registry.get_sample_value(
            "metricstream_llm_requests_total", {"model": "(other)", "status": "success"}
        )
        == 7
    )


async def test_serve_exports_the_demo_traffic() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "metricstream",
        "serve",
        "--demo",
        "--seed",
        "3",
        "--port",
        str(port),
        "--interval",
        "0.2",
        "--log-level",
        "warning",
        start_new_session=True,
    )

    async def five_requests() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        try:
            samples = await scrape(f"http://127.0.0.1:{port}")
        except httpx.TransportError:
            return {}
        total = sum(
            v for (name, _), v in samples.items() if name == "metricstream_llm_requests_total"
        )
        return samples if total >= 5 else {}

    try:
        # Polling: the demo's traffic arrives at its own pace.
        samples = await wait_until(five_requests, 60, "five requests counted", interval=0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    tokens = sum(
        v for (name, _), v in samples.items() if name == "metricstream_llm_prompt_tokens_total"
    )
    assert tokens > 0
