"""The terminal dashboard: snapshots of its screens, its keys, and a live server."""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace
from textual.widgets import Static

from metricstream.client import WebSocketConfig, WebSocketService
from metricstream.dashboard.tui import STATE_COLOURS, ConnectionStatus, MetricsDashboard
from metricstream.protocol import MessageType, make_message
from metricstream.store import MetricsStore

from ..protocol.test_messages import COST, ERROR, KV, METRICS, MODEL, RATE, REQUEST, SYSTEM
from ..support import fakeai_chat, free_port, wait_until

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("METRICSTREAM_UPDATE_SNAPSHOTS") == "1"
SIZE = (160, 45)
CELL_WIDTH = 12.2  # Textual's SVG export: pixels per terminal column

_TEXT = re.compile(r'<text class="[^"]*" x="([\d.]+)" y="[\d.]+"[^>]*line-(\d+)\)">([^<]*)</text>')


def screen_text(app: MetricsDashboard) -> str:
    """The screen as plain text, rebuilt from Textual's SVG screenshot."""
    lines: dict[int, list[str]] = {}
    for x, line, text in _TEXT.findall(app.export_screenshot()):
        row = lines.setdefault(int(line), [" "] * SIZE[0])
        col = round(float(x) / CELL_WIDTH)
        for i, char in enumerate(html.unescape(text).replace("\xa0", " ")):
            if col + i < SIZE[0]:
                row[col + i] = char
    return "\n".join("".join(lines[n]).rstrip() for n in sorted(lines)) + "\n"


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE or not path.exists():
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"snapshot {path.name} was missing and has been written; run again")
    assert text == path.read_text(), (
        f"screen differs from {path} (update with METRICSTREAM_UPDATE_SNAPSHOTS=1)"
    )


def recorded_store() -> MetricsStore:
    store = MetricsStore()
    messages: list[tuple[MessageType, Any]] = [
        (MessageType.METRICS_UPDATE, replace(METRICS, ttft_p50_ms=85.0, itl_p50_ms=21.0)),
        (MessageType.MODEL_UPDATE, replace(MODEL, ttft_p50_ms=92.0, itl_p50_ms=23.0)),
        (
            MessageType.MODEL_UPDATE,
            replace(
                MODEL, model="meta-llama/Llama-3.1-8B-Instruct", request_count=42, error_rate=0.0
            ),
        ),
        (MessageType.SYSTEM_UPDATE, SYSTEM),
        (MessageType.RATE_LIMIT_UPDATE, RATE),
        (MessageType.COST_UPDATE, COST),
        (MessageType.KV_CACHE_UPDATE, KV),
        (MessageType.ERROR_UPDATE, ERROR),
    ]
    messages += [
        (
            MessageType.REQUEST_UPDATE,
            replace(
                REQUEST,
                id=f"r{i}",
                latency_ms=100.0 + i,
                # Every other one streamed with timings: the rest show "—".
                time_to_first_token_ms=40.0 + i if i % 2 else None,
                inter_token_latency_ms=11.0 if i % 2 else None,
            ),
        )
        for i in range(5)
    ]
    for sequence, (mtype, data) in enumerate(messages, start=1):
        store.apply(make_message(mtype, data, sequence=sequence, timestamp=1_000 + sequence))
    return store


async def test_main_screen_snapshot() -> None:
    app = MetricsDashboard(recorded_store(), source="ws://127.0.0.1:8765/metrics/stream")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        text = screen_text(app)
    for expected in (
        "Requests",
        "1.00k",
        "openai/gpt-oss-120b",
        "rate_limit",
        "Hit rate",
        "/v1/chat/completions",
        "Projected month",
        "Disconnected",
        "TTFT p50    85 ms",
        "ITL p50     21 ms",
        "92 ms",
        "43 ms",
    ):
        assert expected in text
    check_snapshot("main", text)


async def test_kv_cache_usage_shows_only_when_an_engine_reports_it() -> None:
    for usage, shown in ((None, False), (73.5, True)):
        store = MetricsStore()
        kv = replace(KV, usage_percentage=usage)
        store.apply(make_message(MessageType.KV_CACHE_UPDATE, kv, sequence=1))
        app = MetricsDashboard(store)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            text = screen_text(app)
        assert "Hit rate" in text
        assert ("Usage" in text) is shown
        assert ("73.5%" in text) is shown


async def test_help_screen_snapshot_and_keys() -> None:
    store = recorded_store()
    app = MetricsDashboard(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        text = screen_text(app)
        assert "reconnect now" in text
        check_snapshot("help", text)
        await pilot.press("x")  # any key closes it
        await pilot.pause()
        assert "reconnect now" not in screen_text(app)

        # c clears the history: no request rows left.
        assert "r4" not in text
        assert len(store.state.recent_requests) == 5
        await pilot.press("c")
        await pilot.pause()
        assert store.state.recent_requests == ()
        assert "success" not in screen_text(app)

        # p freezes the display while the store keeps up; p again shows the news.
        await pilot.press("p")
        store.apply(
            make_message(
                MessageType.METRICS_UPDATE, replace(METRICS, total_requests=777_000), sequence=99
            )
        )
        await pilot.pause(0.4)
        assert "777.00k" not in screen_text(app)
        assert store.state.metrics is not None
        assert store.state.metrics.total_requests == 777_000
        await pilot.press("p")
        await pilot.pause()
        assert "777.00k" in screen_text(app)

        await pilot.press("q")
    assert app.return_code == 0


async def test_reconnect_key_calls_the_client() -> None:
    calls: list[str] = []

    async def reconnect() -> None:
        calls.append("reconnect")

    app = MetricsDashboard(MetricsStore(), reconnect=reconnect)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await pilot.pause()
    assert calls == ["reconnect"]


# -- against a real demo server ------------------------------------------------------------------


def start_server(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metricstream",
            "serve",
            "--demo",
            "--seed",
            "7",
            "--port",
            str(port),
            "--interval",
            "0.2",
            "--log-level",
            "warning",
        ],
        start_new_session=True,
    )


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def server(port: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [start_server(port)]
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def test_live_dashboard_follows_a_server_that_dies_and_returns(
    port: int, server: list[subprocess.Popen[bytes]]
) -> None:
    url = f"ws://127.0.0.1:{port}/metrics/stream"
    service = WebSocketService(
        WebSocketConfig(url=url, reconnect_interval=0.1, max_reconnect_interval=0.5)
    )
    app = MetricsDashboard.for_service(service, source=url, refresh_interval=0.1)
    store = app.store
    await service.start()
    try:
        async with app.run_test(size=SIZE) as pilot:
            status = app.query_one(ConnectionStatus)

            def card() -> str:
                return str(app.query_one("#card-requests").render())

            await wait_until(
                lambda: store.state.metrics is not None and card() != "—", 20, "the first metrics"
            )
            first = card()
            await wait_until(lambda: card() != first, 20, "the metrics to change")
            assert status.status is not None
            assert status.status.state == "CONNECTED"
            assert "Connected" in screen_text(app)

            os.killpg(server[0].pid, signal.SIGKILL)
            server[0].wait()
            await wait_until(
                lambda: status.status is not None and status.status.state == "RECONNECTING",
                10,
                "the dashboard to show reconnecting",
            )
            await pilot.pause(0.3)
            assert "Reconnecting" in screen_text(app)

            server.append(start_server(port))
            await wait_until(
                lambda: status.status is not None and status.status.state == "CONNECTED",
                30,
                "the dashboard to reconnect",
            )
            epoch = service.connection_info().epoch
            assert epoch is not None
            await wait_until(lambda: card() != first, 20, "fresh metrics after the restart")
    finally:
        await service.aclose()


@pytest.mark.fakeai
@pytest.mark.slow
async def test_dashboard_on_a_fakeai_server(fakeai: int) -> None:
    # The real FakeAI server's own stream, adapted by the client's fakeai dialect.
    url = f"ws://127.0.0.1:{fakeai}/metrics/stream"
    service = WebSocketService(
        WebSocketConfig(url=url, dialect="fakeai", heartbeat_interval=0.5, reconnect_interval=0.1)
    )
    app = MetricsDashboard.for_service(service, source=url, refresh_interval=0.1)
    await service.start()
    try:
        async with app.run_test(size=SIZE) as pilot:
            await fakeai_chat(fakeai, 3)
            await wait_until(
                lambda: (
                    app.store.state.metrics is not None
                    and app.store.state.metrics.requests_per_second > 0
                ),
                30,
                "FakeAI's request rate on the dashboard",
            )
            await pilot.pause(0.3)
            text = screen_text(app)
            assert "Connected" in text
            assert "Requests/s" in text
            # FakeAI reports no cost and no stream share: "n/a", not "$0.00"
            # or "0.0%"; its request total is derived from rates: "~".
            assert app.store.state.metrics_unknown == {"total_cost", "streaming_percentage"}
            assert str(app.query_one("#card-cost", Static).render()) == "n/a"
            assert str(app.query_one("#card-streaming", Static).render()) == "n/a"
            assert str(app.query_one("#card-requests", Static).render()).startswith("~")
            assert service.connection_info().parse_errors == 0
    finally:
        await service.aclose()


@pytest.mark.parametrize(
    ("state", "attempts", "latency", "full", "compact"),
    [
        ("CONNECTED", 0, 0.012, "● Connected  12 ms", "● 12 ms"),
        ("RECONNECTING", 3, None, "● Reconnecting (attempt 3)", "●"),
        ("ERROR", 0, None, "● Error", "●"),
        ("DISCONNECTED", 0, None, "● Disconnected", "●"),
    ],
)
async def test_connection_status_full_and_compact(
    state: str, attempts: int, latency: float | None, full: str, compact: str
) -> None:
    from metricstream.store import ConnectionStatus as Status

    status = Status(state, state == "CONNECTED", attempts, latency)
    widgets = [ConnectionStatus(), ConnectionStatus(compact=True)]
    for widget in widgets:
        widget.status = status
    assert widgets[0].render().plain == full
    assert widgets[1].render().plain == compact
    # The seed's colours: green, orange, red, gray.
    colour = str(widgets[0].render().spans[0].style)
    assert STATE_COLOURS[state].lower() in colour.lower()
