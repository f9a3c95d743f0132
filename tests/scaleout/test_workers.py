"""Exact aggregates across the workers of a real ``uvicorn --workers 4`` gateway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs installed
import pytest

from metricstream.server import MetricsHub, RedisAggregator
from tests.server.conftest import open_client, recv
from tests.support import answers, free_port, scaled, wait_until

from .conftest import RedisProcess, node

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
MODELS = ("m0", "m1", "m2")


@pytest.fixture
def gateway(redis_server: RedisProcess) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.scaleout.gateway:app",
            "--workers",
            str(WORKERS),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, "GATEWAY_REDIS": redis_server.url},
        start_new_session=True,
    )
    try:
        yield port, process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _workers(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    # The master's children: the workers and multiprocessing's resource tracker.
    return [
        p
        for p in psutil.Process(process.pid).children()
        if p.is_running() and "spawn_main" in " ".join(p.cmdline())
    ]


async def _send(http: httpx.AsyncClient, port: int, start: int, count: int) -> dict[str, int]:
    """``count`` requests over the models; the tokens each model was sent."""
    sent = dict.fromkeys(MODELS, 0)

    async def one(i: int) -> None:
        model = MODELS[i % len(MODELS)]
        response = await http.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"id": f"q{i}", "model": model, "tokens": i % 7 + 1},
        )
        assert response.status_code == 200
        sent[model] += i % 7 + 1

    await asyncio.gather(*(one(i) for i in range(start, start + count)))
    return sent


async def _latest(ws: Any, want: Any, seconds: float) -> dict[str, Any]:
    """Read until ``want(message)``; the matching message."""
    async with asyncio.timeout(scaled(seconds)):
        while True:
            message = await recv(ws, seconds)
            if want(message):
                return dict(message)


async def test_every_dashboard_sees_the_whole_fleet_even_after_a_worker_is_killed(
    redis_server: RedisProcess, gateway: tuple[int, subprocess.Popen[bytes]]
) -> None:
    port, process = gateway
    n = 25
    async with httpx.AsyncClient(timeout=scaled(10)) as http:
        await wait_until(lambda: len(_workers(process)) == WORKERS, 60, "the workers")
        # Polling: the gateway announces readiness only by answering.
        await wait_until(
            lambda: answers(http, f"http://127.0.0.1:{port}/pid"),
            60,
            "the gateway to answer",
            interval=0.05,
        )
        hub = MetricsHub(heartbeat_interval=None)

        def total_requests() -> int:
            metrics = hub.snapshot().metrics
            return -1 if metrics is None else metrics.total_requests

        async with (
            node(redis_server.url, hub=hub) as one,
            RedisAggregator(one.backend, interval=0.1, system_stats=False) as agg,
        ):
            await wait_until(lambda: agg.leader, 10, "the aggregator taking the lease")
            sent = await _send(http, port, 0, WORKERS * n)
            # One slow request: the fleet's percentiles must include it,
            # whichever worker served it.
            slow = await http.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"id": "slow", "model": "m0", "tokens": 1, "sleep": 0.4},
            )
            assert slow.status_code == 200
            sent["m0"] += 1
            total = WORKERS * n + 1
            async with open_client(one.url()) as ws:
                metrics = await _latest(
                    ws,
                    lambda m: (
                        m["type"] == "metrics_update" and m["data"]["total_requests"] == total
                    ),
                    30,
                )
            # Percentiles over every worker's requests: the slow one is the max.
            # (An event loop's timer may wake a fraction of a millisecond
            # before the 400 ms it was asked for.)
            assert metrics["metadata"]["latency_max_ms"] >= 395
            assert metrics["metadata"]["latency_p50_ms"] < 395
            state = hub.snapshot()
            assert state.metrics is not None
            assert state.metrics.total_tokens == 3 * sum(sent.values())
            for i, model in enumerate(MODELS):
                count = len([j for j in range(WORKERS * n) if j % len(MODELS) == i])
                count += model == "m0"
                figures = state.models[model]
                assert figures.request_count == count
                assert figures.total_prompt_tokens == sent[model]
                assert figures.total_completion_tokens == 2 * sent[model]
            async with open_client(one.url()) as ws:
                init = await recv(ws)
                assert init["data"]["metrics"]["total_requests"] == total
            # Several workers did publish: each has its own batch record.
            publishers = redis_server.command(
                "EVAL", "\"return #redis.call('KEYS','metricstream:pub:*')\"", "0"
            )
            assert int(publishers[1:]) > 1, publishers

            # SIGKILL a worker once its share is recorded, then go on.
            victim = _workers(process)[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait(scaled(10))
            more = await _send(http, port, 1000, WORKERS * n)
            await wait_until(
                lambda: total_requests() == total + WORKERS * n, 30, "the total after the kill"
            )
            state = hub.snapshot()
            assert state.metrics is not None
            assert state.metrics.total_tokens == 3 * (sum(sent.values()) + sum(more.values()))
            assert sum(m.request_count for m in state.models.values()) == total + WORKERS * n
