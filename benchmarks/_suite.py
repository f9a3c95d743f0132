"""The seven benchmarks, their baselines and their targets.

Each benchmark starts its servers and load generators as subprocesses (server
pinned to CPU 0, load on CPU 1), measures, kills them in ``finally`` and
returns :class:`Row` objects. Time is bounded by the :class:`Config` and by
every wait's timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from ._proc import LOAD_CPU, SERVER_CPU, Child, ChildError, spawn
from ._report import Row

__all__ = ["BENCHMARKS", "FULL", "QUICK", "SMOKE", "Config", "run_all"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes and durations of one run (``FULL``, ``QUICK`` or ``SMOKE``)."""

    name: str
    #: fan-out: client counts, deliveries per second aimed at, burst for batch=1
    fanout_sizes: tuple[int, ...] = (100, 1000)
    fanout_deliveries: int = 20_000
    fanout_burst: int = 10
    #: the plain comparison (metricstream, broadcast(), FastAPI) is run this
    #: many times, interleaved, and the median taken: a shared machine's
    #: noise is about the size of the differences being measured
    fanout_repeats: int = 3
    warmup: float = 1.5
    measure: float = 5.0
    #: latency at a fixed rate
    latency_clients: int = 100
    latency_rate: float = 100.0
    latency_seconds: float = 8.0
    #: the Redis hop: how many interleaved (Redis, in process) pairs
    redis_repeats: int = 3
    #: idle memory
    idle_clients: int = 1000
    idle_settle: float = 2.0
    #: many idle connections with heartbeats on (the scale-out benchmark)
    many_clients: int = 10_000
    many_heartbeat: float = 1.0
    many_seconds: float = 10.0
    #: slow consumer
    slow_healthy: int = 200
    slow_rate: float = 200.0
    slow_seconds: float = 30.0
    #: bytes added to each message, so the stalled client's kernel buffers
    #: (about 3 MB on loopback) fill within the run
    slow_pad: int = 2048
    #: messages logged before the run: the replay log's capacity (a full log)
    slow_prefill: int = 10_000
    #: resume storm
    storm_clients: int = 1000
    storm_rate: float = 50.0
    storm_timeout: float = 30.0
    storm_outage: float = 1.0
    #: client
    client_count: int = 200_000
    client_warmup: int = 10_000
    #: collector: requests recorded per timed pass
    record_count: int = 200_000
    #: proxy: SSE chunks per response, sequential requests timed, busy
    #: connections and seconds for requests/s, and whether LiteLLM runs too
    proxy_chunks: int = 20
    proxy_latency_count: int = 2000
    proxy_clients: int = 16
    proxy_seconds: float = 8.0
    proxy_litellm: bool = True
    #: attacks: seconds each runs, sockets per attack (unfinished handshakes
    #: apart), messages per second published meanwhile
    attack_seconds: float = 10.0
    attack_sockets: int = 4
    attack_loris: int = 500
    attack_rate: float = 20.0
    #: command-line start-up: interleaved runs of each variant
    cli_runs: int = 21

    @property
    def lifetime(self) -> float:
        """Upper bound on any child's life: it exits by itself after this."""
        return 60.0 + 2 * max(self.measure, self.slow_seconds, self.storm_timeout)


FULL = Config(name="full")
QUICK = Config(
    name="quick",
    fanout_sizes=(100, 500),
    fanout_repeats=1,
    warmup=1.0,
    measure=2.0,
    latency_seconds=2.0,
    idle_clients=500,
    idle_settle=1.0,
    many_clients=2000,
    many_seconds=4.0,
    slow_seconds=10.0,
    storm_clients=200,
    storm_timeout=15.0,
    client_count=40_000,
    client_warmup=5_000,
    record_count=50_000,
    proxy_latency_count=500,
    proxy_seconds=3.0,
    attack_seconds=4.0,
    attack_loris=200,
    cli_runs=9,
)
SMOKE = Config(
    name="smoke",
    fanout_sizes=(4,),
    fanout_deliveries=200,
    fanout_repeats=1,
    warmup=0.2,
    measure=0.4,
    latency_clients=4,
    latency_rate=50.0,
    latency_seconds=0.4,
    idle_clients=4,
    idle_settle=0.2,
    many_clients=4,
    many_heartbeat=0.2,
    many_seconds=0.5,
    slow_healthy=4,
    slow_rate=50.0,
    slow_seconds=0.5,
    slow_pad=0,
    slow_prefill=0,
    storm_clients=4,
    storm_rate=50.0,
    storm_timeout=10.0,
    storm_outage=0.2,
    redis_repeats=1,
    client_count=300,
    client_warmup=50,
    record_count=500,
    proxy_chunks=3,
    proxy_latency_count=20,
    proxy_clients=2,
    proxy_seconds=0.3,
    # The tests (and CI) do not install LiteLLM's ~750 MB: make bench does.
    proxy_litellm=False,
    attack_seconds=0.5,
    attack_sockets=1,
    attack_loris=5,
    cli_runs=1,
)

Runner = Callable[[Config], list[Row]]


# -- children -------------------------------------------------------------------


@contextlib.contextmanager
def _server(
    cfg: Config, kind: str, *, rate: float = 0.0, burst: int = 1, extra: tuple[str, ...] = ()
) -> Iterator[tuple[Child, int]]:
    args = [kind, "--rate", str(rate), "--burst", str(burst), "--lifetime", str(cfg.lifetime)]
    with spawn(f"server {kind}", "benchmarks._servers", [*args, *extra], cpu=SERVER_CPU) as child:
        ready = child.read_event(timeout=30)
        yield child, int(ready["port"])


@contextlib.contextmanager
def _loadgen(
    cfg: Config, port: int, clients: int, *, batch: bool = False, stalled: int = 0
) -> Iterator[Child]:
    args = ["--port", str(port), "--clients", str(clients), "--stalled", str(stalled)]
    args += ["--lifetime", str(cfg.lifetime)]
    if batch:
        args.append("--batch")
    with spawn("loadgen", "benchmarks._loadgen", args, cpu=LOAD_CPU) as child:
        ready = child.read_event(timeout=30 + clients / 20)
        if ready["connected"] != clients + stalled:
            raise ChildError(
                f"only {ready['connected']} of {clients + stalled} clients connected: "
                f"{ready.get('errors')} {child.stderr_tail()}"
            )
        yield child


def _window(server: Child, gen: Child, seconds: float) -> dict[str, Any]:
    """Server CPU and client deliveries over ``seconds``."""
    gen.ask("mark")
    (user0, sys0), cpu0, t0 = server.cpu_split(), server.cpu_seconds(), time.monotonic()
    gen0 = gen.cpu_seconds()
    time.sleep(seconds)
    (user1, sys1), cpu1, t1 = server.cpu_split(), server.cpu_seconds(), time.monotonic()
    gen1 = gen.cpu_seconds()
    mark = gen.ask("mark")
    elapsed = t1 - t0
    messages = mark["messages"]
    cpu = cpu1 - cpu0
    return {
        "server_user_s": user1 - user0,
        "server_system_s": sys1 - sys0,
        "seconds": elapsed,
        "server_cpu_s": cpu,
        "server_cpu_share": cpu / elapsed,
        # The load generator's own share of its CPU: near 1 would mean it,
        # not the server, limits the figures.
        "loadgen_cpu_share": (gen1 - gen0) / elapsed,
        "messages": messages,
        "frames": mark["frames"],
        "deliveries_per_s": messages / elapsed,
        "cpu_us_per_message": cpu / messages * 1e6 if messages else float("nan"),
        "cpu_us_per_frame": cpu / mark["frames"] * 1e6 if mark["frames"] else float("nan"),
        "latency_ms": mark["latency_ms"],
        "gaps": mark["gaps"],
        "duplicates": mark["duplicates"],
        "closes": mark["closes"],
    }


def _stream_run(
    cfg: Config,
    kind: str,
    clients: int,
    rate: float,
    *,
    burst: int = 1,
    batch: bool = False,
    seconds: float | None = None,
) -> dict[str, Any]:
    with (
        _server(cfg, kind, rate=rate, burst=burst) as (server, port),
        _loadgen(cfg, port, clients, batch=batch) as gen,
    ):
        time.sleep(cfg.warmup)
        result = _window(server, gen, cfg.measure if seconds is None else seconds)
    expected = rate * clients * result["seconds"]
    result.update(
        kind=kind, clients=clients, rate=rate, burst=burst, batch=batch, expected=expected
    )
    result["delivered_fraction"] = result["messages"] / expected if expected else float("nan")
    return result


def _metric(text: str, name: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# -- 1. fan-out -----------------------------------------------------------------


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median CPU per message, with every sample's figure attached."""
    ordered = sorted(runs, key=lambda r: r["cpu_us_per_message"])
    median = dict(ordered[len(ordered) // 2])
    median["samples_cpu_us_per_message"] = [r["cpu_us_per_message"] for r in runs]
    return median


def bench_fanout(cfg: Config) -> list[Row]:
    """Server CPU per delivery and deliveries/s, against broadcast() and FastAPI."""
    rows: list[Row] = []
    for clients in cfg.fanout_sizes:
        rate = max(1.0, cfg.fanout_deliveries / clients)
        burst = cfg.fanout_burst
        # Batching only pays when several messages are pending at once, so
        # the batch comparison publishes bursts; the plain one does not.
        samples: dict[str, list[dict[str, Any]]] = {
            "metricstream": [],
            "broadcast": [],
            "fastapi": [],
        }
        for _ in range(cfg.fanout_repeats):
            for kind, runs in samples.items():
                runs.append(_stream_run(cfg, kind, clients, rate))
        ms, bc, fa = (
            _median_run(samples[kind]) for kind in ("metricstream", "broadcast", "fastapi")
        )
        ms_b = _stream_run(cfg, "metricstream", clients, rate, burst=burst, batch=True)
        bc_b = _stream_run(cfg, "broadcast", clients, rate, burst=burst)
        ms_p = _stream_run(cfg, "metricstream", clients, rate, burst=burst)
        cpu = "cpu_us_per_message"
        rows.append(
            Row(
                "fan-out",
                f"server CPU/delivery, {clients} clients",
                ms[cpu],
                "µs",
                "broadcast()",
                bc[cpu],
                f"≤1.3x and < FastAPI naive ({fa[cpu]:.1f})",
                ms[cpu] <= 1.3 * bc[cpu] and ms[cpu] < fa[cpu],
                {"metricstream": ms, "broadcast": bc, "fastapi": fa},
            )
        )
        rows.append(
            Row(
                "fan-out",
                f"FastAPI naive CPU/delivery, {clients} clients",
                fa[cpu],
                "µs",
                "broadcast()",
                bc[cpu],
            )
        )
        rows.append(
            Row(
                "fan-out",
                f"deliveries/s, {clients} clients",
                ms["deliveries_per_s"],
                "/s",
                "broadcast()",
                bc["deliveries_per_s"],
                details={"fastapi": fa["deliveries_per_s"], "expected": rate * clients},
            )
        )
        rows.append(
            Row(
                "fan-out",
                f"CPU/message batch=1, bursts of {burst}, {clients} clients",
                ms_b[cpu],
                "µs",
                f"broadcast() bursts of {burst}",
                bc_b[cpu],
                "≤0.3x",
                ms_b[cpu] <= 0.3 * bc_b[cpu],
                {"metricstream_batch": ms_b, "broadcast_burst": bc_b},
            )
        )
        rows.append(
            Row(
                "fan-out",
                f"CPU/delivery plain, bursts of {burst}, {clients} clients",
                ms_p[cpu],
                "µs",
                f"broadcast() bursts of {burst}",
                bc_b[cpu],
                details={"metricstream_plain_burst": ms_p},
            )
        )
    return rows


# -- 2. latency -----------------------------------------------------------------


def bench_latency(cfg: Config) -> list[Row]:
    """End-to-end latency p50/p99 at a fixed publish rate."""
    clients, rate, seconds = cfg.latency_clients, cfg.latency_rate, cfg.latency_seconds
    runs = {
        "metricstream": _stream_run(cfg, "metricstream", clients, rate, seconds=seconds),
        "metricstream batch=1": _stream_run(
            cfg, "metricstream", clients, rate, batch=True, seconds=seconds
        ),
        "broadcast()": _stream_run(cfg, "broadcast", clients, rate, seconds=seconds),
        "FastAPI naive": _stream_run(cfg, "fastapi", clients, rate, seconds=seconds),
    }
    base = runs["broadcast()"]["latency_ms"]
    return [
        Row(
            "latency",
            f"{name} {point}, {clients} clients @ {rate:.0f} msg/s",
            runs[name]["latency_ms"][point],
            "ms",
            "broadcast()",
            base[point],
            details=runs[name] if point == "p50" else {},
        )
        for name in ("metricstream", "metricstream batch=1", "FastAPI naive")
        for point in ("p50", "p99")
    ]


# -- 3. idle memory -------------------------------------------------------------


def _idle_kib(cfg: Config, kind: str) -> dict[str, Any]:
    clients = cfg.idle_clients
    with _server(cfg, kind) as (server, port):
        time.sleep(cfg.idle_settle)
        before = server.rss()
        with _loadgen(cfg, port, clients):
            time.sleep(cfg.idle_settle)
            after = server.rss()
    return {
        "rss_before": before,
        "rss_after": after,
        "clients": clients,
        "kib_per_connection": (after - before) / clients / 1024,
    }


def bench_memory(cfg: Config) -> list[Row]:
    """RSS per idle connection: RSS with N idle clients minus RSS with none."""
    ms = _idle_kib(cfg, "metricstream")
    bc = _idle_kib(cfg, "broadcast")
    fa = _idle_kib(cfg, "fastapi")
    n = cfg.idle_clients
    return [
        Row(
            "memory",
            f"RSS per idle connection, 0 vs {n}",
            ms["kib_per_connection"],
            "KiB",
            "broadcast()",
            bc["kib_per_connection"],
            "≤32 KiB",
            ms["kib_per_connection"] <= 32,
            {"metricstream": ms, "broadcast": bc, "fastapi": fa},
        ),
        Row(
            "memory",
            f"FastAPI RSS per idle connection, 0 vs {n}",
            fa["kib_per_connection"],
            "KiB",
            "broadcast()",
            bc["kib_per_connection"],
        ),
    ]


# -- 4. slow consumer -----------------------------------------------------------


def _slow_run(cfg: Config, kind: str, stalled: int) -> dict[str, Any]:
    healthy, rate = cfg.slow_healthy, cfg.slow_rate
    pad = ("--pad", str(cfg.slow_pad), "--prefill", str(cfg.slow_prefill))
    with (
        _server(cfg, kind, rate=rate, extra=pad) as (server, port),
        _loadgen(cfg, port, healthy, stalled=stalled) as gen,
    ):
        time.sleep(cfg.warmup)
        gen.ask("mark")
        rss0 = peak = server.rss()
        t0 = time.monotonic()
        deadline = t0 + cfg.slow_seconds
        samples = []
        while (now := time.monotonic()) < deadline:
            time.sleep(min(0.5, deadline - now))
            rss = server.rss()
            samples.append(rss)
            peak = max(peak, rss)
        mark = gen.ask("mark")
        elapsed = time.monotonic() - t0
        evictions = 0.0
        if kind == "metricstream":
            evictions = _metric(server.http_get(port, "/metrics"), "metricstream_evictions_total")
    expected = rate * healthy * elapsed
    return {
        "kind": kind,
        "stalled": stalled,
        "latency_ms": mark["latency_ms"],
        "messages": mark["messages"],
        "delivered_fraction": mark["messages"] / expected if expected else float("nan"),
        "rss_start": rss0,
        "rss_peak": peak,
        "rss_growth_mb": (peak - rss0) / 1e6,
        "rss_samples": samples,
        "gaps": mark["gaps"],
        "duplicates": mark["duplicates"],
        "closes": mark["closes"],
        "evictions": evictions,
    }


def bench_slow_consumer(cfg: Config) -> list[Row]:
    """One client that never reads beside healthy ones: their p99, server RSS."""
    rows = []
    for kind, label in (("metricstream", "metricstream"), ("fastapi", "FastAPI naive")):
        calm = _slow_run(cfg, kind, 0)
        stall = _slow_run(cfg, kind, 1)
        targets = kind == "metricstream"
        p99, p99_calm = stall["latency_ms"]["p99"], calm["latency_ms"]["p99"]
        rows.append(
            Row(
                "slow consumer",
                f"{label}: healthy p99 with a stalled client",
                p99,
                "ms",
                "same, no stalled client",
                p99_calm,
                "≤2x" if targets else "",
                (p99 <= 2 * p99_calm) if targets else None,
                {"with_stalled": stall, "without": calm},
            )
        )
        rows.append(
            Row(
                "slow consumer",
                f"{label}: healthy deliveries with a stalled client",
                stall["delivered_fraction"] * 100,
                "% of published",
                "same, no stalled client",
                calm["delivered_fraction"] * 100,
            )
        )
        rows.append(
            Row(
                "slow consumer",
                f"{label}: server RSS growth over {cfg.slow_seconds:.0f} s",
                stall["rss_growth_mb"],
                "MB",
                "same, no stalled client",
                calm["rss_growth_mb"],
                "<16 MB" if targets else "",
                (stall["rss_growth_mb"] < 16) if targets else None,
            )
        )
    return rows


# -- 5. resume storm ------------------------------------------------------------


def bench_resume_storm(cfg: Config) -> list[Row]:
    """Drop every connection at once while publishing; all resume with since/epoch."""
    clients = cfg.storm_clients
    with (
        _server(cfg, "metricstream", rate=cfg.storm_rate) as (server, port),
        _loadgen(cfg, port, clients) as gen,
    ):
        time.sleep(max(cfg.warmup, 1.0))
        gen.ask("mark")
        cpu0 = server.cpu_seconds()
        gen.ask(f"drop {cfg.storm_outage}")
        status = _await_storm(gen, clients, cfg.storm_timeout)
        storm_cpu = server.cpu_seconds() - cpu0
        # A little longer, so that late duplicates or gaps would be seen too.
        time.sleep(min(1.0, cfg.warmup))
        final = gen.ask("storm")
        metrics = server.http_get(port, "/metrics")
    final["server_cpu_s"] = storm_cpu
    final["replay_hits"] = _metric(metrics, "metricstream_replay_hits_total")
    final["replay_misses"] = _metric(metrics, "metricstream_replay_misses_total")
    done = status["caught_up"] == clients
    catch_up = status["catch_up_max_s"] - status["outage_s"] if done else float("nan")
    return [
        Row(
            "resume storm",
            f"all {clients} caught up, after a {cfg.storm_outage:g} s outage",
            catch_up,
            "s after reconnect",
            target="all catch up",
            passed=done,
            details=final,
        ),
        Row("resume storm", "messages replayed", float(final["replayed"]), "msgs"),
        *storm_integrity_rows("resume storm", final),
    ]


def _await_storm(gen: Any, clients: int, timeout: float) -> dict[str, Any]:
    """Poll the load generator's storm status until every client caught up, or ``timeout``."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = gen.ask("storm")
    while status["caught_up"] < clients and time.monotonic() < deadline:
        time.sleep(0.1)
        status = gen.ask("storm")
    return status


def storm_integrity_rows(name: str, final: dict[str, Any]) -> list[Row]:
    """The rows of a resume storm's gaps and duplicates, both required to be zero."""
    return [
        Row(
            name,
            "gaps seen (messages missing)",
            float(final["gaps"]),
            "",
            target="0",
            passed=final["gaps"] == 0 and final["snapshots_after_drop"] == 0,
            details={"missing": final["missing"], "snapshots": final["snapshots_after_drop"]},
        ),
        Row(
            name,
            "duplicates seen",
            float(final["duplicates"]),
            "",
            target="0",
            passed=final["duplicates"] == 0,
        ),
    ]


# -- 6. client ------------------------------------------------------------------


def _client_run(cfg: Config, kind: str, batch: int) -> dict[str, Any]:
    extra = ("--batch", str(batch))
    with _server(cfg, "feed", extra=extra) as (_, port):
        args = [kind, "--port", str(port), "--count", str(cfg.client_count)]
        args += ["--warmup", str(cfg.client_warmup), "--lifetime", str(cfg.lifetime)]
        if batch > 1:
            args.append("--batch")
        with spawn(f"client {kind}", "benchmarks._clientbench", args, cpu=LOAD_CPU) as child:
            result = child.read_event(timeout=cfg.lifetime)
    if result.get("event") != "result":
        raise ChildError(f"client {kind}: {result}")
    return result


def bench_client(cfg: Config) -> list[Row]:
    """Decode + dispatch + sequence tracking per message, against a raw loop."""
    raw = _client_run(cfg, "raw", 1)
    ms = _client_run(cfg, "metricstream", 1)
    raw_b = _client_run(cfg, "raw", 10)
    ms_b = _client_run(cfg, "metricstream", 10)
    key = "cpu_us_per_message"
    return [
        Row(
            "client",
            "CPU/message (decode, dispatch, sequence)",
            ms[key],
            "µs",
            "websockets + json.loads",
            raw[key],
            "≤1.5x",
            ms[key] <= 1.5 * raw[key],
            {"metricstream": ms, "raw": raw},
        ),
        Row(
            "client",
            "messages/s on one core",
            ms["messages_per_s"],
            "/s",
            "websockets + json.loads",
            raw["messages_per_s"],
        ),
        Row(
            "client",
            "CPU/message, batch=1 frames of 10",
            ms_b[key],
            "µs",
            "websockets + json.loads",
            raw_b[key],
            details={"metricstream": ms_b, "raw": raw_b},
        ),
    ]


def bench_record(cfg: Config) -> list[Row]:
    """The collector's cost per recorded request, against prometheus-client."""
    from ._recordbench import measure

    result = measure(cfg.record_count)
    return [
        Row(
            "collector",
            "CPU/record_request (windows, costs, event published)",
            result["collector_us"],
            "µs",
            "prometheus-client counters + histogram",
            result["prometheus_us"],
            "≤2x",
            result["collector_us"] <= 2 * result["prometheus_us"],
            result,
        )
    ]


def bench_export(cfg: Config) -> list[Row]:
    """LLMExporter's cost per exported request, against prometheus-client by hand."""
    from ._exportbench import measure

    result = measure(cfg.record_count)
    return [
        Row(
            "export",
            "CPU/request_update counted by LLMExporter",
            result["exporter_us"],
            "µs",
            "prometheus-client counters + 3 histograms by hand",
            result["prometheus_us"],
            "≤1.5x",
            result["exporter_us"] <= 1.5 * result["prometheus_us"],
            result,
        )
    ]


def bench_cli(cfg: Config) -> list[Row]:
    """``metricstream --help`` against the same with every command module imported."""
    from ._clibench import measure

    result = measure(cfg.cli_runs)
    return [
        Row(
            "cli",
            "wall time of metricstream --help",
            result["help_ms"],
            "ms",
            "the same, every command module imported",
            result["eager_ms"],
            "≤0.7x",
            result["help_ms"] <= 0.7 * result["eager_ms"],
            result,
        ),
        Row(
            "cli",
            "wall time of python -c pass (context)",
            result["python_ms"],
            "ms",
            details=result,
        ),
    ]


def bench_proxy(cfg: Config) -> list[Row]:
    """The recording proxy vs a direct connection and vs LiteLLM's proxy."""
    from ._proxybench import LITELLM, measure

    r = measure(
        chunks=cfg.proxy_chunks,
        latency_count=cfg.proxy_latency_count,
        clients=cfg.proxy_clients,
        seconds=cfg.proxy_seconds,
        lifetime=cfg.lifetime,
        litellm=cfg.proxy_litellm,
    )
    direct, ms = r["direct"], r["metricstream"]
    peer = r.get("litellm")
    if cfg.proxy_litellm and peer is None:
        raise ChildError(f"LiteLLM is not installed at {LITELLM}: run `make litellm`")

    def added(path: dict[str, float], key: str) -> float:
        return path[key] - direct[key]

    rows: list[Row] = []
    for key, label, limit in (
        ("p50_ms", "added latency p50 (streamed, 1 connection)", 1.0),
        ("p99_ms", "added latency p99", None),
        ("ttft_p50_ms", "added time to first chunk p50", None),
    ):
        value = added(ms, key)
        baseline = None if peer is None else added(peer, key)
        targets = (["≤1 ms"] if limit is not None else []) + (["< LiteLLM"] if peer else [])
        target = " and ".join(targets)
        ok = (limit is None or value <= limit) and (baseline is None or value < baseline)
        rows.append(
            Row(
                "proxy",
                label,
                value,
                "ms",
                "LiteLLM proxy" if peer else "",
                baseline,
                target,
                ok if target else None,
                {"direct": direct, "metricstream": ms, "litellm": peer},
            )
        )
    rows.append(
        Row(
            "proxy",
            f"requests/s on one core ({cfg.proxy_clients} connections)",
            ms["requests_per_s"],
            "/s",
            "direct to the upstream",
            direct["requests_per_s"],
            "≥0.8x",
            ms["requests_per_s"] >= 0.8 * direct["requests_per_s"],
        )
    )
    if peer is not None:
        rows.append(
            Row(
                "proxy",
                "requests/s vs LiteLLM",
                ms["requests_per_s"],
                "/s",
                "LiteLLM proxy",
                peer["requests_per_s"],
                ">1x",
                ms["requests_per_s"] > peer["requests_per_s"],
            )
        )
    return rows


def bench_attacks(cfg: Config) -> list[Row]:
    """Memory held and a healthy client's p99 under attack, against plain websockets."""
    from ._attackbench import bench_attacks as run

    return run(cfg, _server)


from ._scaleoutbench import bench_many_idle, bench_redis, bench_redis_storm  # noqa: E402

BENCHMARKS: dict[str, Runner] = {
    "fanout": bench_fanout,
    "latency": bench_latency,
    "memory": bench_memory,
    "slow": bench_slow_consumer,
    "storm": bench_resume_storm,
    "client": bench_client,
    "record": bench_record,
    "export": bench_export,
    "proxy": bench_proxy,
    "cli": bench_cli,
    "attacks": bench_attacks,
    "redis": bench_redis,
    "redis-storm": bench_redis_storm,
    "many-idle": bench_many_idle,
}


def run_all(
    cfg: Config,
    only: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Row], dict[str, str]]:
    """Run the chosen benchmarks; return their rows and the errors by benchmark.

    A benchmark that fails is reported as an error and the others still run;
    an interrupt (Ctrl-C) propagates after its children are killed.
    """
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for name in only or list(BENCHMARKS):
        started = time.monotonic()
        if progress:
            progress(f"{name}: running")
        try:
            rows.extend(BENCHMARKS[name](cfg))
        except Exception as exc:  # a failed benchmark must not stop the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            rows.append(Row(name, "FAILED (see errors)", float("nan"), "", passed=False))
        if progress:
            progress(f"{name}: {time.monotonic() - started:.0f} s")
    return rows, errors
