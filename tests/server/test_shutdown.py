"""Graceful shutdown: clients are told the server is going away (1001)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from metricstream.server import MetricsHub
from tests.server.conftest import (
    close_code,
    open_client,
    recv,
    recv_type,
    request,
    running,
)
from tests.support import free_port, scaled, wait_healthy, wait_until

ROOT = Path(__file__).resolve().parents[2]


async def test_shutdown_closes_every_client_with_1001_after_pending_messages() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    async with running(hub) as server:
        async with open_client(server.url()) as a, open_client(server.url("batch=1")) as b:
            await recv(a)
            await recv(b)
            hub.publish(request("last"))
            server.server.should_exit = True
            # The message published just before shutdown is still delivered.
            assert (await recv(a))["data"]["id"] == "last"
            codes = await asyncio.gather(close_code(a), close_code(b))
        assert list(codes) == [1001, 1001]
        await wait_until(lambda: hub.connection_count == 0)


def start_serve(port: int, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("METRICSTREAM_TOKEN", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metricstream",
            "serve",
            "--port",
            str(port),
            *("--interval", "0.1", "--heartbeat-interval", "0.2", "--log-level", "warning"),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=scaled(10))


@pytest.mark.slow
async def test_serve_command_streams_demo_traffic_and_goes_away_on_sigterm() -> None:
    port = free_port()
    proc = start_serve(port, "--demo", "--seed", "7", "--token", "tok")
    try:
        await asyncio.to_thread(wait_healthy, f"http://127.0.0.1:{port}/healthz", proc)
        url = f"ws://127.0.0.1:{port}/metrics/stream?token=tok"
        async with open_client(url) as ws:
            init = await recv(ws, 10)
            assert init["type"] == "init"
            await recv_type(ws, "request_update", 20)
            await recv_type(ws, "system_update", 20)
            await recv_type(ws, "heartbeat", 20)
            proc.send_signal(signal.SIGTERM)
            assert await close_code(ws) == 1001
        proc.wait(timeout=scaled(20))
        _, stderr = proc.communicate(timeout=scaled(10))
        assert b"Traceback" not in stderr
    finally:
        stop(proc)


@pytest.mark.slow
async def test_serve_command_without_demo_publishes_host_statistics() -> None:
    port = free_port()
    proc = start_serve(port)
    try:
        await asyncio.to_thread(wait_healthy, f"http://127.0.0.1:{port}/healthz", proc)
        async with open_client(f"ws://127.0.0.1:{port}/metrics/stream") as ws:
            await recv(ws, 10)
            update = await recv_type(ws, "system_update", 20)
            assert 0 <= update["data"]["cpu_usage"] <= 100
    finally:
        stop(proc)


def test_serve_command_rejects_bad_settings() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "metricstream", "serve", "--max-connections", "0"],
        env=env,
        capture_output=True,
        timeout=scaled(30),
        check=False,
    )
    assert result.returncode == 2
    assert b"max_connections" in result.stdout + result.stderr
    assert b"Traceback" not in result.stderr
