"""The browser dashboard in real headless Chromium.

Two kinds of peer serve the page:

- the real server, ``metricstream serve --demo`` in a subprocess, killed
  with SIGKILL and restarted on the same port;
- a scripted stream (the real web router plus a WebSocket route whose every
  connection runs a script of the test) on uvicorn in a thread, for exact
  sequences: duplicates, batches, epochs, silent peers, close codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from metricstream.dashboard.web import CONTENT_SECURITY_POLICY, create_web_router
from metricstream.protocol import close_action

from ..support import free_port, require_executable, scaled, wait_until_sync

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "web-test-token"


# ---------------------------------------------------------------- helpers


def wait_in_page(page: Page, expression: str, seconds: float, what: str) -> Any:
    """Wait until the JavaScript ``expression`` is truthy in the page; return its value."""
    try:
        # As a function: a bare expression would be eval()ed in the page,
        # which its Content-Security-Policy rightly forbids.
        handle = page.wait_for_function(
            f"() => ({expression})", timeout=scaled(seconds) * 1000, polling=50
        )
    except Exception as exc:  # playwright's TimeoutError
        state = page.evaluate("() => JSON.stringify(window.metricstream?.client?.info ?? null)")
        pytest.fail(f"timed out waiting for {what}: {exc}; client: {state}")
    return handle.json_value()


def connection_state(page: Page) -> str:
    state: str = page.evaluate("() => document.body.dataset.connection || ''")
    return state


def request_ids(page: Page) -> list[str]:
    ids: list[str] = page.evaluate(
        "() => [...document.querySelectorAll('#requests-body tr')].map(r => r.dataset.id)"
    )
    return ids


@dataclass
class Console:
    """Console errors and uncaught exceptions of a page."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.errors.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module; each test opens its own context."""
    executable = require_executable(CHROMIUM, "apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., tuple[Page, Console]]]:
    """Open a page in a fresh context; every context is closed after the test."""
    contexts = []

    def opener(url: str, width: int = 1440, height: int = 900) -> tuple[Page, Console]:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        console = Console()
        console.attach(page)
        page.goto(url)
        return page, console

    yield opener
    for context in contexts:
        context.close()


# ------------------------------------------------------ the real server


class ServeProcess:
    """``metricstream serve --demo`` in a subprocess on a fixed port."""

    def __init__(self, port: int, *extra: str) -> None:
        self.port = port
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, seed: int) -> None:
        env = dict(os.environ, METRICSTREAM_TOKEN=TOKEN)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metricstream",
                "serve",
                "--demo",
                "--port",
                str(self.port),
                "--seed",
                str(seed),
                "--interval",
                "0.25",
                "--log-level",
                "warning",
                *self.extra,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until_sync(self._healthy, 20, f"the server on port {self.port} to answer /healthz")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            stderr = self.process.stderr.read().decode() if self.process.stderr else ""
            pytest.fail(f"the server exited with {self.process.returncode}: {stderr[-2000:]}")
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def kill(self) -> None:
        """SIGKILL: no close frame, no goodbye; the kernel resets the sockets."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=scaled(10))
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None


@pytest.fixture
def serve() -> Iterator[ServeProcess]:
    server = ServeProcess(free_port())
    yield server
    server.kill()


def test_page_loads_streams_and_updates(
    serve: ServeProcess, open_page: Callable[..., tuple[Page, Console]]
) -> None:
    serve.start(seed=1)
    with urllib.request.urlopen(f"{serve.base}/?token={TOKEN}") as response:
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    page, console = open_page(f"{serve.base}/?token={TOKEN}")
    wait_in_page(page, "document.body.dataset.connection === 'connected'", 10, "connected")
    status = page.locator("#connection-status")
    assert status.get_attribute("data-state") == "connected"
    assert page.locator("#connection-status .conn-label").text_content() == "Connected"

    # Values update: the total request count moves, rows and models appear.
    card = "document.querySelector('[data-metric=total_requests] .card-value').textContent"
    first = wait_in_page(page, f"{card} !== '—' && {card}", 10, "a first total")
    wait_in_page(page, f"{card} !== {json.dumps(first)}", 10, "the total to change")
    wait_in_page(page, "document.querySelectorAll('#requests-body tr').length >= 5", 10, "rows")
    wait_in_page(page, "document.querySelectorAll('#models-body tr').length >= 2", 10, "models")
    wait_in_page(page, "window.metricstream.store.history.t.length >= 3", 10, "chart samples")
    wait_in_page(
        page,
        "document.querySelector('#connection-status .conn-detail').textContent.endsWith('ms')",
        15,
        "a latency from pong",
    )
    # The latency chart draws the collector's percentiles from the metadata.
    assert page.evaluate(
        "() => window.metricstream.store.history.latency_p99_ms.some(v => v !== null)"
    )
    # The demo's streamed requests carry TTFT and ITL: the latency chart's
    # streaming series, the model table's columns and the request rows fill in.
    wait_in_page(
        page,
        "window.metricstream.store.history.itl_p50_ms.some(v => v !== null)"
        " && window.metricstream.store.history.ttft_p50_ms.some(v => v > 0)",
        10,
        "streaming latency samples",
    )
    for table, column in (("models", 6), ("models", 7), ("requests", 6), ("requests", 7)):
        wait_in_page(
            page,
            f"[...document.querySelectorAll('#{table}-body td:nth-child({column})')]"
            ".some(td => / m?s$/.test(td.textContent))",
            10,
            f"a timing in column {column} of the {table}",
        )
    # The charts are real pixels, not an empty canvas.
    assert page.evaluate(
        """() => {
            const c = document.getElementById('chart-rps');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return true;
            return false;
        }"""
    )
    ids = request_ids(page)
    assert len(ids) == len(set(ids))

    # A few seconds of history make the screenshot show real curves.
    wait_in_page(page, "window.metricstream.store.history.t.length >= 8", 10, "more samples")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-dashboard.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    wait_in_page(
        page,
        "document.getElementById('chart-rps').width <= 390 * (window.devicePixelRatio || 1)",
        5,
        "the charts to follow the phone width",
    )
    # Nothing wider than the phone's screen: no sideways scrolling of the page.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "web-dashboard-phone.png"), full_page=True)
    assert console.errors == []


def test_wrong_token_shows_the_error_and_stops(
    serve: ServeProcess, open_page: Callable[..., tuple[Page, Console]]
) -> None:
    # The page itself is public here, so that the stream is what refuses it.
    serve.extra = ("--no-protect-http",)
    serve.start(seed=2)
    page, _ = open_page(f"{serve.base}/?token=wrong")
    wait_in_page(page, "document.body.dataset.connection === 'error'", 10, "the error state")
    assert page.locator("#connection-status").get_attribute("data-state") == "error"
    banner = page.locator("#banner")
    assert banner.is_visible()
    assert "4001" in (banner.text_content() or "")
    # 4001 is final: no retry is scheduled and no attempt was counted.
    info = page.evaluate(
        "() => ({attempts: window.metricstream.client.info.reconnectAttempts,"
        " retry: window.metricstream.client._retryTimer, code: "
        "window.metricstream.client.info.lastCloseCode})"
    )
    assert info == {"attempts": 0, "retry": None, "code": 4001}
    # The dot is the seed's red.
    colour = page.evaluate(
        "() => getComputedStyle(document.querySelector('#connection-status .dot')).backgroundColor"
    )
    assert colour == "rgb(255, 77, 79)"


# Records, in the page, whether two request rows ever shared an id.
DUPLICATE_WATCH = """() => {
    window.__duplicateRows = [];
    const check = () => {
        const ids = [...document.querySelectorAll('#requests-body tr')].map(r => r.dataset.id);
        if (new Set(ids).size !== ids.length) window.__duplicateRows.push(ids);
    };
    new MutationObserver(check).observe(
        document.getElementById('requests-body'), {childList: true, subtree: true});
}"""


def test_server_killed_and_restarted(
    serve: ServeProcess, open_page: Callable[..., tuple[Page, Console]]
) -> None:
    serve.start(seed=3)
    page, console = open_page(f"{serve.base}/?token={TOKEN}")
    page.evaluate(DUPLICATE_WATCH)
    wait_in_page(page, "document.body.dataset.connection === 'connected'", 10, "connected")
    wait_in_page(page, "document.querySelectorAll('#requests-body tr').length >= 3", 10, "rows")
    old_epoch = page.evaluate("() => window.metricstream.client.tracker.epoch")
    old_ids = set(request_ids(page))

    serve.kill()
    wait_in_page(page, "document.body.dataset.connection === 'reconnecting'", 10, "reconnecting")
    wait_in_page(
        page,
        "document.querySelector('#connection-status .conn-label').textContent"
        ".startsWith('Reconnecting (attempt ')",
        10,
        "the attempt count",
    )
    colour = page.evaluate(
        "() => getComputedStyle(document.querySelector('#connection-status .dot')).backgroundColor"
    )
    assert colour == "rgb(255, 138, 0)"  # orange

    serve.start(seed=4)  # same port, new process: a new epoch
    wait_in_page(page, "document.body.dataset.connection === 'connected'", 30, "connected again")
    new_epoch = page.evaluate("() => window.metricstream.client.tracker.epoch")
    assert new_epoch != old_epoch
    wait_in_page(page, "document.querySelectorAll('#requests-body tr').length >= 3", 10, "rows")
    ids = request_ids(page)
    # The new epoch replaced the state: no row of the dead server's stream is left.
    assert not old_ids & set(ids)
    assert len(ids) == len(set(ids))
    assert page.evaluate("() => window.__duplicateRows") == []
    assert page.evaluate("() => window.metricstream.client.info.reconnectAttempts") == 0
    # The failed attempts while the server was down are not console errors of ours,
    # but Chromium reports each refused WebSocket as one; everything else is.
    assert [e for e in console.errors if "WebSocket connection to" not in e] == []


# ---------------------------------------------------- a scripted stream

Script = Callable[[WebSocket, "Scripted"], Awaitable[None]]


class Scripted:
    """A uvicorn server in a thread: the web router plus a scripted stream.

    Connection *n* runs ``scripts[n]``; every connection's query string and
    the texts it received are recorded. Heartbeats are answered with a
    ``pong``, as the real server does, except on the connections in ``mute``.
    """

    def __init__(self, scripts: list[Script], *, mute: frozenset[int] = frozenset()) -> None:
        self.scripts = scripts
        self.mute = mute
        self.queries: list[dict[str, str]] = []
        self.received: list[list[str]] = []
        self.gates: dict[str, threading.Event] = {}
        self.port = free_port()
        app = FastAPI()
        app.include_router(create_web_router())
        app.router.routes.append(WebSocketRoute("/metrics/stream", self._endpoint))
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", ws="websockets-sansio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gate(self, name: str) -> threading.Event:
        return self.gates.setdefault(name, threading.Event())

    async def wait_gate(self, name: str) -> None:
        """Block this connection's script until the test opens gate ``name``."""
        # In a worker thread, bounded: the test's thread opens the gate.
        if not await asyncio.to_thread(self.gate(name).wait, scaled(30)):
            raise RuntimeError(f"gate {name!r} never opened")

    async def _endpoint(self, ws: WebSocket) -> None:
        index = len(self.queries)
        self.queries.append(dict(ws.query_params))
        self.received.append([])
        await ws.accept()
        reader = asyncio.ensure_future(self._read(ws, index))
        try:
            if index < len(self.scripts):
                await self.scripts[index](ws, self)
            await reader
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await reader

    async def _read(self, ws: WebSocket, index: int) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                text = await ws.receive_text()
                self.received[index].append(text)
                if index not in self.mute and json.loads(text).get("type") == "heartbeat":
                    sent = json.loads(text)["data"]["client_time"]
                    await send(ws, message("pong", None, {"client_time": sent}))

    def __enter__(self) -> Scripted:
        self.thread.start()
        wait_until_sync(lambda: self.server.started, 10, "the scripted server")
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=scaled(10))


def message(mtype: str, sequence: int | None, data: Any, **metadata: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": mtype, "timestamp": int(time.time() * 1000), "data": data}
    if sequence is not None:
        msg["sequence"] = sequence
    if metadata:
        msg["metadata"] = metadata
    return msg


def request(rid: str, **changes: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "model": "openai/gpt-oss-120b",
        "created": time.time(),
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "latency_ms": 120.5,
        "streaming": True,
        "status": "success",
        "cost": 0.0001,
        **changes,
    }


def init(
    epoch: str, sequence: int, *, resumed: bool, requests: Sequence[str] = ()
) -> dict[str, Any]:
    data: dict[str, Any] = (
        {}
        if resumed
        else {
            "metrics": None,
            "models": {},
            "rate_limits": {},
            "costs": None,
            "kv_cache": None,
            "system": None,
            "recent_requests": [request(r) for r in requests],
            "recent_errors": [],
        }
    )
    return message("init", sequence, data, epoch=epoch, resumed=resumed)


async def send(ws: WebSocket, *messages: dict[str, Any] | list[dict[str, Any]] | str) -> None:
    for item in messages:
        await ws.send_text(item if isinstance(item, str) else json.dumps(item))


HOSTILE = '<img src=x onerror="window.__pwned=1">'


def rows_are(ids: list[str]) -> str:
    """A page expression: the request rows are exactly ``ids``, in order."""
    return (
        "JSON.stringify([...document.querySelectorAll('#requests-body tr')]"
        f".map(r => r.dataset.id)) === {json.dumps(json.dumps(ids, separators=(',', ':')))}"
    )


def sent_by_page(texts: list[str]) -> list[dict[str, Any]]:
    """What the page sent on one connection, heartbeats left out."""
    messages = [json.loads(text) for text in texts]
    return [m for m in messages if m.get("type") != "heartbeat"]


def test_duplicates_batches_queue_and_a_new_epoch(
    open_page: Callable[..., tuple[Page, Console]],
) -> None:
    async def first(ws: WebSocket, script: Scripted) -> None:
        await send(
            ws,
            init("epoch-a", 10, resumed=False, requests=["r-old"]),
            # Hostile text and wrong field types: shown as text or "—", never run.
            message("request_update", 11, request("r-1", model=HOSTILE, latency_ms="fast")),
            message("request_update", 11, request("dup-1")),  # the same sequence again
            message("request_update", 10, request("dup-2")),  # older than the snapshot
            [  # a batch=1 frame, with a duplicate inside
                message("request_update", 12, request("r-2")),
                message("request_update", 12, request("dup-3")),
                message("request_update", 13, request("r-3")),
            ],
            "this is not JSON",
            message("a_future_type", 14, {"anything": 1}),  # unknown: skipped, still counted
        )
        await script.wait_gate("close-first")
        await ws.close(1012)

    async def second(ws: WebSocket, script: Scripted) -> None:
        await script.wait_gate("answer-second")
        # "Resumed", but in an epoch the page never saw: it must not mix streams.
        await send(ws, init("epoch-b", 2, resumed=True))

    async def third(ws: WebSocket, script: Scripted) -> None:
        await send(
            ws,
            init("epoch-b", 2, resumed=False, requests=["n-1"]),
            message("request_update", 3, request("n-2")),
        )

    # The second connection stays silent until the test lets it answer.
    with Scripted([first, second, third], mute=frozenset({1})) as server:
        # A long heartbeat timeout: the muted connection must not be abandoned.
        page, console = open_page(server.base + "/?heartbeat_timeout=60")
        wait_in_page(page, rows_are(["r-3", "r-2", "r-1", "r-old"]), 10, "the first stream")
        figures = page.evaluate(
            "() => ({dup: window.metricstream.client.tracker.duplicates,"
            " invalid: window.metricstream.client.info.invalidFrames,"
            " last: window.metricstream.client.tracker.last})"
        )
        assert figures == {"dup": 3, "invalid": 1, "last": 14}
        hostile = page.locator("#requests-body tr[data-id='r-1'] td").nth(1)
        assert hostile.text_content() == HOSTILE
        assert page.locator("#requests-body tr[data-id='r-1'] td").nth(4).text_content() == "—"
        assert page.evaluate("() => document.querySelectorAll('main img').length") == 0
        assert page.evaluate("() => window.__pwned") is None
        assert page.locator("[data-stat=duplicates]").text_content() == "3"
        assert server.queries[0].get("batch") == "1"
        assert "since" not in server.queries[0]

        server.gate("close-first").set()
        wait_until_sync(lambda: len(server.queries) >= 2, 10, "a reconnect after 1012")
        assert server.queries[1]["since"] == "14"
        assert server.queries[1]["epoch"] == "epoch-a"
        # The second connection has sent nothing yet: sends are queued, and
        # the bounded queue drops its oldest entry.
        queued = page.evaluate(
            """() => {
                const c = window.metricstream.client;
                c.config.offlineQueueSize = 2;
                const sent = [1, 2, 3].map(n => c.send({type: "ping", data: {n}}));
                return {sent, queued: c.queued, dropped: c.info.droppedSends};
            }"""
        )
        assert queued == {"sent": [False, False, False], "queued": 2, "dropped": 1}

        server.gate("answer-second").set()
        wait_until_sync(lambda: len(server.queries) >= 3, 10, "a fresh connection after the resync")
        assert "since" not in server.queries[2]
        wait_in_page(page, rows_are(["n-2", "n-1"]), 10, "the new epoch's state")
        assert page.evaluate("() => window.metricstream.client.tracker.epoch") == "epoch-b"
        wait_until_sync(lambda: len(sent_by_page(server.received[2])) >= 2, 10, "the queued sends")
        assert [m["data"]["n"] for m in sent_by_page(server.received[2])] == [2, 3]
        assert sent_by_page(server.received[1]) == []
        page.close()
    assert console.errors == []


def test_silent_peer_is_abandoned_and_4008_reconnects_at_once(
    open_page: Callable[..., tuple[Page, Console]],
) -> None:
    async def evicted(ws: WebSocket, _: Scripted) -> None:
        await send(
            ws,
            init("epoch-c", 5, resumed=False, requests=["a"]),
            message("request_update", 6, request("b")),
        )
        await ws.close(4008)

    async def silent(ws: WebSocket, _: Scripted) -> None:
        # Resumes, then never says another word (no pong either).
        await send(ws, init("epoch-c", 6, resumed=True))

    async def healthy(ws: WebSocket, _: Scripted) -> None:
        await send(
            ws,
            init("epoch-c", 6, resumed=True),
            message("request_update", 7, request("c", status="in_progress")),
            # The same request finished: its row is updated, not repeated.
            message("request_update", 8, request("c", status="success")),
        )

    with Scripted([evicted, silent, healthy], mute=frozenset({1})) as server:
        page, console = open_page(server.base + "/?heartbeat=0.3&heartbeat_timeout=1.5")
        page.evaluate(
            "() => { window.__attempts = [];"
            " window.metricstream.client.on('reconnecting', a => window.__attempts.push(a)); }"
        )
        wait_until_sync(lambda: len(server.queries) >= 3, 15, "three connections")
        wait_in_page(page, rows_are(["c", "b", "a"]), 10, "the resumed stream")
        wait_in_page(
            page,
            "document.querySelector('#requests-body tr[data-id=c] .pill').textContent"
            " === 'success'",
            10,
            "the finished request",
        )
        assert server.queries[1]["since"] == "6"
        assert server.queries[2]["since"] == "6"
        assert server.queries[2]["epoch"] == "epoch-c"
        # 4008 reconnected without a backoff attempt; only the silent peer cost one.
        assert page.evaluate("() => window.__attempts") == [1]
        # The healthy peer answers heartbeats: the page stays on it.
        wait_in_page(
            page,
            "document.querySelector('#connection-status .conn-detail').textContent.endsWith('ms')",
            10,
            "a latency from the healthy peer's pong",
        )
        info = page.evaluate("() => window.metricstream.client.info")
        assert info["resumes"] == 2
        assert info["snapshots"] == 1
        assert info["state"] == "CONNECTED"
        heartbeats = [json.loads(t) for t in server.received[1]]
        assert heartbeats
        assert all(m["type"] == "heartbeat" for m in heartbeats)
        assert all(isinstance(m["data"]["client_time"], int) for m in heartbeats)
        page.close()
    assert console.errors == []


def test_backoff_and_close_code_table_of_the_js_client(
    open_page: Callable[..., tuple[Page, Console]],
) -> None:
    with Scripted([]) as server:
        page, console = open_page(server.base + "/")
        table = page.evaluate(
            """async () => {
                const m = await import('./static/js/client.js');
                const attempts = [1, 2, 3, 4, 9, 10, 11, 50];
                return {
                    high: attempts.map(n => m.backoffDelay(n, m.DEFAULTS, () => 0)),
                    low: attempts.map(n => m.backoffDelay(n, m.DEFAULTS, () => 1)),
                    actions: [1000, 1001, 1006, 1008, 1009, 1011, 1012, 4001, 4008, 4029]
                        .map(code => [code, m.closeAction(code)]),
                    seconds: m.normaliseTimestamp(1234567890),
                    millis: m.normaliseTimestamp(1732780800123),
                    negative: m.normaliseTimestamp(-1),
                };
            }"""
        )
        page.close()
    # min(1 s x 1.5^(n-1), 30 s), times a factor in [1 - 0.5, 1]: jitter after the cap.
    expected = [min(1000 * 1.5 ** (n - 1), 30000) for n in (1, 2, 3, 4, 9, 10, 11, 50)]
    assert table["high"] == pytest.approx(expected)
    assert table["low"] == pytest.approx([d / 2 for d in expected])
    # The page's table is the protocol's (generated into protocol.js).
    assert dict(table["actions"]) == {
        code: close_action(code).value
        for code in (1000, 1001, 1006, 1008, 1009, 1011, 1012, 4001, 4008, 4029)
    }
    assert table["actions"][8] == [4008, "reset_and_retry"]
    assert table["seconds"] == 1234567890000
    assert table["millis"] == 1732780800123
    assert table["negative"] is None
    assert console.errors == []


def test_connecting_state_and_a_gap_answered_by_a_resume(
    open_page: Callable[..., tuple[Page, Console]],
) -> None:
    async def gapped(ws: WebSocket, script: Scripted) -> None:
        await script.wait_gate("start")
        await send(
            ws,
            init("epoch-d", 1, resumed=False),
            message("request_update", 2, request("g-2")),
            message("request_update", 5, request("g-5")),  # 3 and 4 never came
        )

    async def replay(ws: WebSocket, _: Scripted) -> None:
        await send(
            ws,
            init("epoch-d", 5, resumed=True),
            message("request_update", 3, request("g-3")),
            message("request_update", 4, request("g-4")),
            message("request_update", 5, request("g-5")),
        )

    with Scripted([gapped, replay], mute=frozenset({0})) as server:
        page, console = open_page(server.base + "/?heartbeat_timeout=60")
        # The handshake is done but no init came yet: the seed's yellow "connecting".
        wait_until_sync(lambda: len(server.queries) >= 1, 10, "the first connection")
        wait_in_page(page, "document.body.dataset.connection === 'connecting'", 10, "connecting")
        assert page.locator("#connection-status .conn-label").text_content() == "Connecting…"
        colour = page.evaluate(
            "() => getComputedStyle(document.querySelector('#connection-status .dot'))"
            ".backgroundColor"
        )
        assert colour == "rgb(245, 196, 0)"
        assert page.locator("#connection-badge").get_attribute("data-state") == "connecting"

        server.gate("start").set()
        wait_until_sync(lambda: len(server.queries) >= 2, 10, "a resume after the gap")
        # The message after the gap was not applied; the resume starts before it.
        assert server.queries[1]["since"] == "2"
        assert server.queries[1]["epoch"] == "epoch-d"
        wait_in_page(page, rows_are(["g-5", "g-4", "g-3", "g-2"]), 10, "the filled gap")
        figures = page.evaluate(
            "() => ({gaps: window.metricstream.client.tracker.gaps,"
            " last: window.metricstream.client.tracker.last,"
            " resumes: window.metricstream.client.info.resumes})"
        )
        assert figures == {"gaps": 0, "last": 5, "resumes": 1}
        page.close()
    assert console.errors == []


def test_kv_cache_usage_bar_appears_only_when_an_engine_reports_it(
    open_page: Callable[..., tuple[Page, Console]],
) -> None:
    kv = {
        "cache_hits": 40,
        "cache_misses": 10,
        "hit_rate": 80.0,
        "cache_size_bytes": 1024,
        "cache_entries": 3,
        "evictions": 0,
        "avg_lookup_time_ms": 0.1,
    }

    async def stream(ws: WebSocket, script: Scripted) -> None:
        await send(ws, init("epoch-kv", 1, resumed=False), message("kv_cache_update", 2, kv))
        await script.wait_gate("usage")
        await send(ws, message("kv_cache_update", 3, {**kv, "usage_percentage": 93.5}))
        await script.wait_gate("done")

    with Scripted([stream]) as server:
        page, console = open_page(server.base + "/")
        usage = "document.querySelectorAll('#kv-cache .bar-row')[1]"
        wait_in_page(page, f"{usage}.hidden === true", 10, "no usage bar without a figure")
        server.gate("usage").set()
        wait_in_page(page, f"{usage}.hidden === false", 10, "the usage bar")
        assert page.evaluate(f"() => {usage}.querySelector('.bar-value').textContent") == "93.5%"
        level = page.evaluate(f"() => {usage}.querySelector('.bar-fill').dataset.level")
        assert level == "bad"
        server.gate("done").set()
        assert console.errors == []
