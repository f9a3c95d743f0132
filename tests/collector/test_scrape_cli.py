"""``metricstream serve --scrape URL``: a real server subprocess scraping a stand-in engine."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.collector.engines import serve_engine
from tests.collector.test_scrape import vllm
from tests.support import free_port, scaled, wait_until


async def frames_until(port: int, done: Any) -> list[dict[str, Any]]:
    """Read the stream (reconnecting while the server starts) until ``done(frames)``."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(scaled(60)):
        while True:
            try:
                async with connect(f"ws://127.0.0.1:{port}/metrics/stream", compression=None) as ws:
                    async for raw in ws:
                        frames.append(json.loads(raw))
                        if done(frames):
                            return frames
            except OSError:
                # Not listening yet: the server announces readiness only by answering.
                await asyncio.sleep(0.1)


_INIT_FIELD = {"kv_cache_update": "kv_cache", "system_update": "system"}


def latest(frames: list[dict[str, Any]], mtype: str) -> dict[str, Any] | None:
    """The newest ``mtype`` frame, or the value the ``init`` snapshot held
    (a state published before the connection is not sent again unchanged)."""
    found: dict[str, Any] | None = None
    for frame in frames:
        if frame["type"] == mtype:
            found = frame
        elif frame["type"] == "init" and mtype in _INIT_FIELD:
            value = frame["data"].get(_INIT_FIELD[mtype])
            if value is not None:
                found = {"type": mtype, "data": value}
    return found


def engine_figures_seen(
    frames: list[dict[str, Any]], *, running: int, waiting: int, usage_percentage: float
) -> bool:
    """Whether ``frames`` carry a stand-in vLLM's figures: its KV-cache usage,
    running and waiting requests, and the engines in ``metrics_update``."""
    kv = latest(frames, "kv_cache_update")
    system = latest(frames, "system_update")
    metrics = latest(frames, "metrics_update")
    return (
        kv is not None
        and kv["data"].get("usage_percentage") == usage_percentage
        and system is not None
        and system["data"]["active_workers"] == running
        and system["data"]["queue_size"] == waiting
        and metrics is not None
        and "engines" in (metrics.get("metadata") or {})
    )


async def test_serve_scrape_publishes_the_engines_figures() -> None:
    port = free_port()
    with serve_engine() as engine:
        engine.serve(
            vllm(
                prompt=10,
                generation=10,
                running=7,
                waiting=4,
                usage=0.55,
            )
        )
        server = await asyncio.create_subprocess_exec(
            *[
                sys.executable,
                "-m",
                "metricstream",
                "serve",
                "--port",
                str(port),
                "--scrape",
                engine.url,
                "--scrape-interval",
                "0.1",
                "--interval",
                "0.2",
                "--log-level",
                "warning",
            ],
            start_new_session=True,
        )
        try:

            def done(frames: list[dict[str, Any]]) -> bool:
                return engine_figures_seen(frames, running=7, waiting=4, usage_percentage=55.0)

            frames = await frames_until(port, done)
            # One scrape can satisfy done(); the repeat is checked below, so
            # wait for it here while the server still runs.
            await wait_until(lambda: engine.requests.count("/metrics") >= 2, 10, "a second scrape")
            async with httpx.AsyncClient(timeout=scaled(10)) as http:
                exposition = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            await server.wait()
    metrics = latest(frames, "metrics_update")
    assert metrics is not None
    assert metrics["metadata"]["engines"][engine.url]["engine"] == "vllm"
    assert engine.requests.count("/metrics") >= 2
    # /metrics says the engine is up.
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(exposition)
        for s in f.samples
    }
    assert samples[("metricstream_engine_up", (("engine", "vllm"), ("target", engine.url)))] == 1


def test_scrape_and_demo_do_not_combine() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricstream",
            "serve",
            "--demo",
            "--scrape",
            "http://127.0.0.1:9/metrics",
        ],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 2
    assert "--scrape and --demo" in result.stderr


def test_a_bad_scrape_url_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metricstream", "serve", "--scrape", "localhost:8000"],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 2
    assert "http(s) URL" in result.stderr
