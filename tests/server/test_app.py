"""The HTTP side and embedding: /healthz, /metrics, a router in someone's app."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from metricstream.server import (
    MetricsHub,
    ServerSettings,
    create_app,
    create_router,
    uvicorn_config,
)
from tests.server.conftest import metrics, open_client, recv, request, running
from tests.support import scaled, wait_until


def scrape(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def test_healthz_reports_the_stream() -> None:
    async with running() as server:
        server.hub.publish(metrics())
        async with httpx.AsyncClient(base_url=f"http://{server.base}") as http:
            response = await http.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "connections": 0,
            "sequence": 1,
            "epoch": server.hub.epoch,
        }


async def test_prometheus_metrics_count_what_the_server_did() -> None:
    settings = ServerSettings(token="t")
    async with running(settings=settings) as server:
        hub = server.hub
        async with open_client(server.url("token=t")) as ws:
            await recv(ws)
            for i in range(5):
                hub.publish(request(str(i)))
            for _ in range(5):
                await recv(ws)
            async with httpx.AsyncClient(
                base_url=f"http://{server.base}", headers={"Authorization": "Bearer t"}
            ) as http:
                live = scrape((await http.get("/metrics")).text)
        async with open_client(server.url()) as rejected:
            await asyncio.wait_for(rejected.wait_closed(), scaled(5))
        async with open_client(server.url(f"token=t&since=2&epoch={hub.epoch}")) as ws:
            assert (await recv(ws))["metadata"]["resumed"] is True
        async with httpx.AsyncClient(base_url=f"http://{server.base}") as http:
            response = await http.get("/metrics", params={"token": "t"})
        assert response.headers["content-type"].startswith("text/plain")
        after = scrape(response.text)
    assert live["metricstream_connections"] == 1
    assert live["metricstream_messages_sent_total"] == 6  # init + 5
    assert live["metricstream_messages_published_total"] == 5
    assert live["metricstream_bytes_sent_total"] > 5 * 200
    assert live["metricstream_client_buffer_bytes_count"] == 1
    assert after["metricstream_replay_hits_total"] == 1
    assert after['metricstream_connections_rejected_total{reason="token"}'] == 1
    assert after["metricstream_evictions_total"] == 0
    # uvicorn's internals are as _wire expects: every client written directly.
    assert after["metricstream_direct_write_fallbacks_total"] == 0
    assert after["metricstream_sequence"] == 5


async def test_router_embeds_in_an_existing_app_under_a_prefix() -> None:
    hub = MetricsHub(heartbeat_interval=None)
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, Any]:
        return {"hello": "world"}

    app.include_router(create_router(hub), prefix="/ops")
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        await wait_until(lambda: server.started, 10, "server start")
        port = server.servers[0].sockets[0].getsockname()[1]
        async with open_client(f"ws://127.0.0.1:{port}/ops/metrics/stream") as ws:
            assert (await recv(ws))["type"] == "init"
            hub.publish(metrics())
            assert (await recv(ws))["sequence"] == 1
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/hello")).json() == {"hello": "world"}
            assert (await http.get("/ops/healthz")).status_code == 200
            assert "metricstream_connections" in (await http.get("/ops/metrics")).text
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, scaled(30))


async def test_two_apps_keep_separate_registries() -> None:
    # Each router gets its own CollectorRegistry: no duplicate-metric errors.
    hub = MetricsHub()
    first, second = create_router(hub), create_router(hub)
    assert first is not second


async def test_healthz_turns_503_once_shutdown_began() -> None:
    async with running() as server:
        await server.hub.close_all(grace=0.1)
        async with httpx.AsyncClient(base_url=f"http://{server.base}") as http:
            response = await http.get("/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == "shutting_down"


async def test_create_app_serves_the_dashboard_page_unless_told_not_to() -> None:
    for dashboard, status in ((True, 200), (False, 404)):
        app = create_app(MetricsHub(), dashboard=dashboard)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await http.get("/")).status_code == status
            assert (await http.get("/healthz")).status_code == 200
