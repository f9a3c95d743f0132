"""``metricstream dashboard`` (the terminal UI) and ``metricstream demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = ["add_parser", "dashboard", "demo", "run_dashboard"]

DEFAULT_URL = "ws://127.0.0.1:8765/metrics/stream"


def add_parser(subparsers: Any) -> None:
    """Add the ``dashboard`` and ``demo`` subcommands."""
    parser = subparsers.add_parser(
        "dashboard",
        help="live terminal dashboard of a stream",
        description=(
            "Open the terminal dashboard on a metrics stream (metricstream's own or, "
            "with --dialect fakeai, a FakeAI server's). It keeps retrying while the "
            "server is down. Keys: q quit, p pause, c clear history, r reconnect, ? help."
        ),
    )
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help="default: %(default)s")
    parser.add_argument(
        "--dialect",
        choices=["auto", "native", "fakeai"],
        default="auto",
        help="server protocol (default %(default)s: decided by the first frame)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("METRICSTREAM_TOKEN"),
        help="bearer token (default: $METRICSTREAM_TOKEN)",
    )
    parser.set_defaults(func=dashboard)

    demo_parser = subparsers.add_parser(
        "demo",
        help="run a demo server and open the dashboard on it",
        description=(
            "Start 'metricstream serve --demo' in the background, then open the "
            "terminal dashboard on it (or, when not on a terminal, print a summary "
            "line a second). The web dashboard is served too. Ctrl-C or q stops both."
        ),
    )
    demo_parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    demo_parser.add_argument(
        "--port",
        type=int,
        default=8765,
        help="default: %(default)s, or a free port when that one is taken",
    )
    demo_parser.add_argument("--seed", type=int, default=None, help="seed of the demo traffic")
    demo_parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: run until stopped)",
    )
    demo_parser.add_argument(
        "--no-tui", action="store_true", help="print summary lines even on a terminal"
    )
    demo_parser.set_defaults(func=demo)


async def run_dashboard(url: str, *, dialect: str = "auto", token: str | None = None) -> None:
    """Connect to ``url`` and run the terminal dashboard until the user quits."""
    from ..client import WebSocketConfig, WebSocketService
    from .tui import MetricsDashboard

    config = WebSocketConfig(url=url, dialect=dialect, token=token)  # type: ignore[arg-type]
    service = WebSocketService(config)
    app = MetricsDashboard.for_service(service, source=url)
    await service.start()
    try:
        await app.run_async()
    finally:
        await service.aclose()


def dashboard(args: argparse.Namespace) -> int:
    """Run ``metricstream dashboard``."""
    asyncio.run(run_dashboard(args.url, dialect=args.dialect, token=args.token))
    return 0


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(url: str, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the demo server exited with status {server.returncode}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the demo server did not answer {url} within {timeout:.0f} s")


async def _print_summaries(url: str, duration: float | None) -> None:
    """Print one line per ``metrics_update`` (the demo's view without a terminal)."""
    from ..client import WebSocketConfig, WebSocketService
    from ..protocol import MessageType, MetricsUpdatePayload, WebSocketMessage

    def show(data: MetricsUpdatePayload, message: WebSocketMessage[Any]) -> None:
        print(
            f"seq {message.sequence:>6}  requests {data.total_requests:>7}  "
            f"{data.requests_per_second:6.1f} req/s  {data.tokens_per_second:8.1f} tok/s  "
            f"latency {data.avg_latency_ms:7.1f} ms  errors {data.error_rate:5.1f}%  "
            f"cost ${data.total_cost:,.4f}",
            flush=True,
        )

    service = WebSocketService(WebSocketConfig(url=url))
    service.subscribe(MessageType.METRICS_UPDATE, show)
    await service.start()
    try:
        if duration is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration)
    finally:
        await service.close()


def _require(*modules: str) -> None:
    """Raise ModuleNotFoundError (the command line names the extra) if one is missing."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def demo(args: argparse.Namespace) -> int:
    """Run ``metricstream demo``: a demo server plus a dashboard on it.

    The server child ends with this process however it ends: on ``q``,
    Ctrl-C or a normal exit the ``finally`` below stops it (SIGTERM, so its
    clients get 1001); on SIGTERM, SIGHUP or SIGKILL of this process, which
    run no ``finally``, the child sees the pipe it watches close
    (``serve --exit-with-fd``). A pipe rather than Linux's
    ``PR_SET_PDEATHSIG``: it works on every POSIX system, has no window
    between fork and setup in which the parent's death goes unseen, and is
    not tied to the thread that started the child.
    """
    _require("fastapi", "uvicorn", "prometheus_client", "psutil")
    host, port = args.host, args.port
    if not _port_free(host, port):
        port = _free_port(host)
        print(f"port {args.port} is taken; using {port}", file=sys.stderr)
    watch_fd, keep_fd = os.pipe()
    command = [sys.executable, "-m", "metricstream", "serve", "--demo"]
    command += ["--host", host, "--port", str(port), "--log-level", "warning"]
    command += ["--exit-with-fd", str(watch_fd)]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    try:
        # Its own POSIX session: a Ctrl-C in the terminal reaches this process
        # only, which then stops the server in order.
        # Without the user's METRICSTREAM_* settings: they configure a serve
        # of their own (a token, a scrape target, TLS), not this demo's,
        # whose dashboard would then be refused or look elsewhere.
        env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSTREAM_")}
        server = subprocess.Popen(command, start_new_session=True, pass_fds=(watch_fd,), env=env)
    finally:
        os.close(watch_fd)
    # keep_fd stays open (and is not inherited: pipes are close-on-exec)
    # for as long as this process lives.
    base = f"http://{host}:{port}"
    url = f"ws://{host}:{port}/metrics/stream"
    try:
        _wait_healthy(f"{base}/healthz", server, timeout=30)
        print(f"demo server: {url}\nweb dashboard: {base}/", file=sys.stderr, flush=True)
        use_tui = sys.stdin.isatty() and sys.stdout.isatty() and not args.no_tui
        if use_tui and importlib.util.find_spec("textual") is None:
            print(
                "the terminal dashboard needs the 'tui' extra "
                "(pip install 'metricstream[tui]'); printing summaries instead",
                file=sys.stderr,
            )
            use_tui = False
        if use_tui and args.duration is None:
            asyncio.run(run_dashboard(url))
        else:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_print_summaries(url, args.duration))
    finally:
        # SIGTERM lets the server close its clients with 1001.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        os.close(keep_fd)
    return 0
