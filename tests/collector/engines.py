"""Stand-in inference engines: a real HTTP server on loopback serving
Prometheus exposition text built from vLLM's, SGLang's and TGI's documented
metric names, which a test changes between scrapes.

The text is written by hand here, line by line (HELP, TYPE, labels, histogram
``_bucket``/``_sum``/``_count``), the way the engines write it, so the scraper
reads the real format rather than something prometheus-client produced.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["EngineServer", "Exposition", "serve_engine"]

TTFT_BOUNDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)
ITL_BOUNDS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "{" + inner + "}"


def _number(value: float) -> str:
    return repr(float(value))


@dataclass
class Exposition:
    """Builds one exposition, family by family."""

    lines: list[str] = field(default_factory=list)

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def gauge(self, name: str, value: float, help_text: str = "A gauge.", **labels: str) -> None:
        self.family(name, "gauge", help_text)
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def counter(
        self,
        name: str,
        value: float,
        help_text: str = "A counter.",
        suffix: str = "_total",
        **labels: str,
    ) -> None:
        """``name`` without ``_total``. Python engines (prometheus-client)
        write ``_total`` in HELP, TYPE and the sample; TGI's Rust exporter
        writes no suffix (``suffix=""``)."""
        self.family(name + suffix, "counter", help_text)
        self.lines.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")

    def histogram(
        self,
        name: str,
        bounds: Sequence[float],
        counts: Sequence[int],
        total: float,
        help_text: str = "A histogram.",
        **labels: str,
    ) -> None:
        """``counts`` per bucket (not cumulative), the last one for ``+Inf``."""
        assert len(counts) == len(bounds) + 1
        self.family(name, "histogram", help_text)
        running = 0
        for bound, count in zip((*bounds, float("inf")), counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            self.lines.append(f"{name}_bucket{_labels({**labels, 'le': le})} {_number(running)}")
        self.lines.append(f"{name}_sum{_labels(labels)} {_number(total)}")
        self.lines.append(f"{name}_count{_labels(labels)} {_number(running)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    server: EngineServer

    def do_GET(self) -> None:
        engine = self.server
        with engine.lock:
            engine.requests.append(self.path)
            status, body, content_type = engine.status, engine.body, engine.content_type
            info = engine.info
        if self.path == "/info" and info is not None:
            status, body, content_type = 200, json.dumps(info), "application/json"
        elif self.path != "/metrics":
            status, body = 404, "not found"
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is not the place for access logs."""


class EngineServer(ThreadingHTTPServer):
    """The stand-in engine: ``/metrics`` answers ``body`` with ``status``;
    ``/info`` answers ``info`` (TGI's) when set."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.lock = threading.Lock()
        self.status = 200
        self.body = ""
        self.content_type = "text/plain; version=0.0.4; charset=utf-8"
        self.info: dict[str, object] | None = None
        self.requests: list[str] = []

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def serve(self, text: str, status: int = 200) -> None:
        with self.lock:
            self.body = text
            self.status = status


@contextmanager
def serve_engine(port: int = 0) -> Iterator[EngineServer]:
    """Run an :class:`EngineServer` in a thread until the block ends."""
    server = EngineServer(port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
