"""The attack benchmark: memory held and a healthy client's p99 under each attack.

Each attack of :mod:`benchmarks._attacks` runs, in the same run, against
metricstream as ``metricstream serve`` runs it (the ``serve`` server kind:
default settings, guarded protocols) and against a plain ``websockets``
``serve()`` broadcasting the same messages (the ``broadcast`` kind). Both
publish at ``attack_rate``. A healthy client (on 127.0.0.1, attackers on
127.0.0.2) reads throughout; the server's RSS is sampled every 50 ms.

- memory held: the peak RSS during the attack minus the RSS just before it;
- healthy p99: receive time minus the message's own timestamp, over the
  messages received during the attack (both clocks are this machine's);
- gaps: messages the healthy client missed (its sequence must stay unbroken).

The stream embedded in an app on plain uvicorn (the ``metricstream`` kind:
only what the endpoint applies by itself) is measured too and reported in
each row's details.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._attacks import Healthy, big_subscribe, ping_flood, slowloris, url_trickle
from ._report import Row

__all__ = ["bench_attacks"]

MB = 1024 * 1024
PATH = "/metrics/stream"

# metricstream is expected to hold no more than this during any attack.
_TARGET_MB = 20.0


def _attacks(cfg: Any, port: int) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each attack, as a coroutine that keeps attacking for ``attack_seconds``:
    an attacker whose socket is cut or refused opens another."""
    seconds = cfg.attack_seconds

    def persistent(one: Callable[[float], Awaitable[object]]) -> Callable[[], Awaitable[int]]:
        async def attack() -> int:
            rounds = 0
            deadline = time.monotonic() + seconds
            while (remaining := deadline - time.monotonic()) > 0:
                await one(remaining)
                rounds += 1
            return rounds

        return attack

    async def flood(remaining: float) -> object:
        return await ping_flood(port, PATH, sockets=cfg.attack_sockets, seconds=remaining)

    async def trickle(remaining: float) -> object:
        return await asyncio.gather(
            *(url_trickle(port, seconds=remaining) for _ in range(cfg.attack_sockets))
        )

    async def subscribe(remaining: float) -> object:
        return await asyncio.gather(
            *(
                big_subscribe(port, PATH, models=3700, seconds=remaining)
                for _ in range(cfg.attack_sockets)
            ),
            return_exceptions=True,
        )

    async def loris() -> object:
        sockets = await slowloris(port, sockets=cfg.attack_loris, seconds=seconds)
        try:
            await asyncio.sleep(seconds)
        finally:
            for raw in sockets:
                raw.close()
        return len(sockets)

    return {
        "PING flood, never reading": persistent(flood),
        "endless request line": persistent(trickle),
        "unfinished handshakes": loris,
        "59 KB subscribe": persistent(subscribe),
    }


def _measure(server: Any, port: int, attack: Callable[[], Awaitable[object]]) -> dict[str, Any]:
    """Run ``attack`` while a healthy client reads; memory and latency figures."""
    peak = [server.rss()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            try:
                peak[0] = max(peak[0], server.rss())
            except Exception:  # the process may be gone at the very end
                return

    async def run() -> tuple[Healthy, int]:
        healthy = Healthy(f"ws://127.0.0.1:{port}{PATH}")
        stop = asyncio.Event()
        task = asyncio.ensure_future(healthy.run(stop))
        await asyncio.wait_for(healthy.receiving.wait(), 30)
        await asyncio.sleep(0.5)
        before = server.rss()
        peak[0] = before
        healthy.latencies_ms.clear()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        try:
            await asyncio.wait_for(attack(), 120)
        finally:
            # What is still held shortly after the attack counts too.
            await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
            done.set()
            sampler.join()
            stop.set()
            await asyncio.wait_for(task, 30)
        return healthy, before

    healthy, before = asyncio.run(run())
    return {
        "held_mb": (peak[0] - before) / MB,
        "p99_ms": healthy.p99_ms,
        "gaps": healthy.gaps,
        "received": len(healthy.sequences),
        "error": healthy.error,
        "close_code": healthy.close_code,
    }


def bench_attacks(cfg: Any, server: Callable[..., Any]) -> list[Row]:
    """Every attack against ``serve`` and against plain ``websockets``, same run.

    ``server`` is the suite's server context manager (``_suite._server``).
    """
    results: dict[str, dict[str, dict[str, Any]]] = {}
    # "metricstream" is the stream embedded in an app on plain uvicorn:
    # only what the endpoint applies by itself (shown in the details).
    for kind in ("serve", "broadcast", "metricstream"):
        with server(cfg, kind, rate=cfg.attack_rate) as (child, port):
            for name, attack in _attacks(cfg, port).items():
                results.setdefault(name, {})[kind] = _measure(child, port, attack)
    rows: list[Row] = []
    for name, by_kind in results.items():
        ours, plain, embedded = by_kind["serve"], by_kind["broadcast"], by_kind["metricstream"]
        rows.append(
            Row(
                "attacks",
                f"{name}: memory held",
                ours["held_mb"],
                "MB",
                baseline="websockets serve()",
                baseline_value=plain["held_mb"],
                target=f"< {_TARGET_MB:g} MB",
                passed=ours["held_mb"] < _TARGET_MB,
                details={"serve": ours, "websockets": plain, "embedded": embedded},
            )
        )
        rows.append(
            Row(
                "attacks",
                f"{name}: healthy client p99",
                ours["p99_ms"],
                "ms",
                baseline="websockets serve()",
                baseline_value=plain["p99_ms"],
                target="no gaps",
                passed=ours["gaps"] == 0 and ours["error"] is None,
                details={"serve": ours, "websockets": plain, "embedded": embedded},
            )
        )
    return rows
