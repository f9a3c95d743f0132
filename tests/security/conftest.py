"""``metricstream serve`` as a real subprocess, attacked over loopback.

Each test starts the command line server it needs (its own options, its own
ephemeral port), attacks it with the raw clients of ``benchmarks._attacks``
while a healthy client keeps reading, and kills it at the end, whatever
happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil  # type: ignore[import-untyped]  # no stubs installed
from benchmarks._attacks import Healthy
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, scaled, wait_until

T = TypeVar("T")

PATH = "/metrics/stream"


@dataclass
class Served:
    """A running ``metricstream serve``."""

    process: asyncio.subprocess.Process
    port: int
    log_path: Path
    #: The server's token, if it has one: ``/metrics`` then requires it too.
    token: str | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss(self) -> int:
        rss: int = psutil.Process(self.process.pid).memory_info().rss
        return rss

    def url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}{PATH}" + (f"?{query}" if query else "")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """An HTTP GET on a new connection: (status, body)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=scaled(timeout)) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def rejections(self) -> dict[str, float]:
        """``metricstream_connections_rejected`` by reason, from ``/metrics``."""
        _, text = self.get("/metrics")
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "metricstream_connections_rejected":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        counts[sample.labels["reason"]] = sample.value
        return counts

    def evictions(self) -> float:
        _, text = self.get("/metrics")
        for family in text_string_to_metric_families(text):
            if family.name == "metricstream_evictions":
                return float(family.samples[0].value)
        raise AssertionError("no metricstream_evictions in /metrics")


@contextlib.asynccontextmanager
async def served(*args: str, nofile: int | None = None) -> AsyncIterator[Served]:
    """Run ``metricstream serve --demo`` with ``args`` until the block ends.

    ``nofile`` lowers the server's open-files limit (in the child only).
    """
    port = free_port()

    def limit() -> None:  # pragma: no cover - runs in the child
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "serve.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *[
                    sys.executable,
                    "-m",
                    "metricstream",
                    "serve",
                    "--port",
                    str(port),
                    "--demo",
                    "--seed",
                    "1",
                    "--interval",
                    "0.2",
                    *args,
                ],
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=limit,
            )
        token = args[args.index("--token") + 1] if "--token" in args else None
        server = Served(process, port, log_path, token)
        try:

            def started() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"serve exited early:\n{server.log}")
                with contextlib.suppress(OSError):
                    return server.get("/healthz", 1.0)[0] == 200
                return False

            await wait_until(started, 20, "serve to answer /healthz", interval=0.1)
            yield server
        finally:
            # SIGTERM first: a graceful stop, and what lets coverage save the
            # child's figures; SIGKILL if it does not stop in time.
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), scaled(10))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await asyncio.wait_for(process.wait(), scaled(10))


async def with_healthy(
    url: str, attack: Callable[[], Awaitable[T]], *, settle: float = 0.5
) -> tuple[T, Healthy]:
    """Run ``attack`` while a healthy client reads ``url``; both results.

    The healthy client connects first and reads ``settle`` seconds before
    and after the attack, so its sequence spans the whole attack.
    """
    healthy = Healthy(url)
    stop = asyncio.Event()
    task = asyncio.ensure_future(healthy.run(stop))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(healthy.receiving.wait(), scaled(10))
    await asyncio.sleep(settle)
    try:
        result = await attack()
        await asyncio.sleep(settle)
    finally:
        stop.set()
        await asyncio.wait_for(task, scaled(10))
    return result, healthy


def assert_unharmed(healthy: Healthy, *, p99_ms: float = 2000.0) -> None:
    """The healthy client kept an unbroken sequence and a sane latency."""
    assert healthy.error is None, healthy.error
    assert healthy.close_code is None, f"healthy client closed with {healthy.close_code}"
    assert len(healthy.sequences) >= 5, "the healthy client received almost nothing"
    assert healthy.gaps == 0, f"sequence gaps: {healthy.sequences}"
    # Generous: this bounds a stall (seconds, as before the fixes), not speed.
    assert healthy.p99_ms < scaled(p99_ms), f"p99 {healthy.p99_ms:.0f} ms"
