"""The scale-out benchmarks: nodes and publishers sharing a stream through Redis.

- ``redis``: the end-to-end latency the Redis hop adds, measured against
  the same processes in process (one node + Redis vs one node, two nodes +
  Redis vs two nodes, each with its own load generator, same rate and
  clients, repeated and interleaved), with the time a message takes to
  reach each stage on the publishing node, and the bare hop (no clients)
  at the rate and at five times it; server CPU per delivery per
  node, two nodes + Redis vs one node; and the publish throughput of
  :class:`RedisPublisher` against a raw redis-py pipelined ``XADD`` loop,
  in the same run;
- ``many-idle``: one node holding ``many_clients`` idle connections with
  heartbeats on (10,000 in the full run): RSS per connection and CPU per
  idle connection per second, against websockets' ``serve()`` pinging as
  often;
- ``redis-storm``: every client of a node moved to the other node when the
  first is SIGKILLed; gaps, duplicates and the time until all caught up.

Redis is Debian's ``redis-server``, started on a free port without
persistence and killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._proc import ChildError
from ._report import Row

if TYPE_CHECKING:
    from ._suite import Config

__all__ = ["bench_many_idle", "bench_redis", "bench_redis_storm"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A ``redis-server`` on a free loopback port; yields its URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise ChildError("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise ChildError("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


def _windows(pairs: list[tuple[Any, Any]], seconds: float) -> list[dict[str, Any]]:
    """Server CPU and deliveries of several (server, load generator) pairs, one window."""
    for _, gen in pairs:
        gen.ask("mark")
    start = [(server.cpu_seconds(), time.monotonic()) for server, _ in pairs]
    time.sleep(seconds)
    results = []
    for (server, gen), (cpu0, t0) in zip(pairs, start, strict=True):
        cpu, elapsed = server.cpu_seconds() - cpu0, time.monotonic() - t0
        mark = gen.ask("mark")
        messages = mark["messages"]
        results.append(
            {
                "seconds": elapsed,
                "server_cpu_s": cpu,
                "messages": messages,
                "cpu_us_per_message": cpu / messages * 1e6 if messages else float("nan"),
                "latency_ms": mark["latency_ms"],
                "gaps": mark["gaps"],
                "duplicates": mark["duplicates"],
            }
        )
    return results


def _publish_rates(url: str, count: int) -> dict[str, float]:
    """Messages/s into Redis: RedisPublisher, and a raw pipelined XADD loop."""
    from redis.asyncio import Redis

    from metricstream.protocol import encode
    from metricstream.server import RedisPublisher

    from ._servers import sample_message

    messages = [sample_message(i) for i in range(count)]

    async def ours() -> float:
        async with RedisPublisher(url, prefix="bench") as publisher:
            started = time.perf_counter()
            for message in messages:
                publisher.publish(message)
            await publisher.flush()
            return count / (time.perf_counter() - started)

    async def raw() -> float:
        client = Redis.from_url(url)
        try:
            started = time.perf_counter()
            for first in range(0, count, 256):
                pipe = client.pipeline(transaction=False)
                # The same work a publisher must do at least: encode, append.
                for message in messages[first : first + 256]:
                    pipe.xadd("raw:log", {"b": encode(message)}, maxlen=10_000)
                await pipe.execute()
            return count / (time.perf_counter() - started)
        finally:
            await client.aclose()

    rates: dict[str, list[float]] = {"metricstream": [], "raw": []}
    for _ in range(3):
        rates["metricstream"].append(asyncio.run(ours()))
        rates["raw"].append(asyncio.run(raw()))
    return {name: sorted(values)[1] for name, values in rates.items()}


def _hop_run(cfg: Config, nodes: int, shared: bool, clients: int, rate: float) -> dict[str, Any]:
    """``nodes`` servers with ``clients`` each, and a load generator per node.

    ``shared``: the nodes share one stream through Redis and the first one
    publishes ``rate`` messages/s into it; otherwise each node publishes
    ``rate`` in process. Either way every client gets ``rate`` messages/s
    and the same processes run on the same CPUs (servers on the server CPU,
    load generators on the load CPU), apart from Redis itself.
    """
    from ._suite import _loadgen, _server

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(redis_server()) if shared else None
        servers = []
        for index in range(nodes):
            extra: tuple[str, ...] = ("--trace",)
            if url is not None:
                extra += ("--redis", url)
            node_rate = rate if url is None or index == 0 else 0.0
            servers.append(
                stack.enter_context(_server(cfg, "metricstream", rate=node_rate, extra=extra))
            )
        gens = [stack.enter_context(_loadgen(cfg, port, clients)) for _, port in servers]
        time.sleep(cfg.warmup)
        for server, _ in servers:
            server.ask("stages")
        results = _windows(
            [(server, gen) for (server, _), gen in zip(servers, gens, strict=True)],
            cfg.latency_seconds,
        )
        for (server, _), result in zip(servers, results, strict=True):
            result["stages"] = server.ask("stages")["stages"]
    return {
        "nodes": results,
        "p50": max(r["latency_ms"]["p50"] for r in results),
        "p99": max(r["latency_ms"]["p99"] for r in results),
        "gaps": sum(r["gaps"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _hop_comparison(cfg: Config, nodes: int, clients: int, rate: float) -> dict[str, Any]:
    """Redis against in process, ``nodes`` each, repeated and interleaved.

    Each repeat runs both set-ups one after the other (their order
    alternating, so that a drift of the machine's load favours neither);
    the figure is the median over repeats of the difference in p99.
    """
    pairs = []
    for repeat in range(cfg.redis_repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        runs = {shared: _hop_run(cfg, nodes, shared, clients, rate) for shared in order}
        pairs.append(
            {
                "load_average": os.getloadavg()[0],
                "in_process": runs[False],
                "redis": runs[True],
                "added_p50": runs[True]["p50"] - runs[False]["p50"],
                "added_p99": runs[True]["p99"] - runs[False]["p99"],
            }
        )
    return {
        "added_p50": _median([p["added_p50"] for p in pairs]),
        "added_p99": _median([p["added_p99"] for p in pairs]),
        "p99_in_process": _median([p["in_process"]["p99"] for p in pairs]),
        "p99_redis": _median([p["redis"]["p99"] for p in pairs]),
        "samples_added_p99": [p["added_p99"] for p in pairs],
        "gaps": sum(p["redis"]["gaps"] for p in pairs),
        "duplicates": sum(p["redis"]["duplicates"] for p in pairs),
        "repeats": pairs,
    }


def _stage_rows(one: dict[str, Any], clients: int) -> list[Row]:
    """Where a message's time goes on the publishing node (medians over repeats)."""
    rows = []
    labels = (
        ("script_start", "publish() to the script call sent"),
        ("script_done", "publish() to the script's reply read"),
        ("ingested", "publish() to the node's reader handing it to the hub"),
        ("flushed", "publish() to the frame written to every client"),
    )
    base = [p["in_process"]["nodes"][0]["stages"].get("flushed") for p in one["repeats"]]
    for stage, label in labels:
        values = [p["redis"]["nodes"][0]["stages"].get(stage) for p in one["repeats"]]
        if any(v is None or not v["count"] for v in values):
            continue
        baseline = None
        if stage == "flushed" and all(b is not None and b["count"] for b in base):
            baseline = _median([b["p99"] for b in base])
        rows.append(
            Row(
                "redis",
                f"stage p99, one node + Redis, {clients} clients: {label}",
                _median([v["p99"] for v in values]),
                "ms",
                "one node in process (publish() to written)" if baseline is not None else "",
                baseline,
                details={"p50": _median([v["p50"] for v in values])},
            )
        )
    return rows


def _bare_hop(cfg: Config, rate: float) -> dict[str, Any]:
    """The hop alone: one node + Redis, no clients, ``publish()`` to the hub."""
    from ._suite import _server

    with (
        redis_server() as url,
        _server(cfg, "metricstream", rate=rate, extra=("--trace", "--redis", url)) as (node, _),
    ):
        time.sleep(cfg.warmup)
        node.ask("stages")
        time.sleep(cfg.latency_seconds)
        stages: dict[str, Any] = node.ask("stages")["stages"]
    return stages.get("ingested") or {"p50": float("nan"), "p99": float("nan"), "count": 0}


def _bare_rows(cfg: Config, rate: float) -> list[Row]:
    """The bare hop when the processes sleep between messages (``rate``) and
    when they hardly do (five times the rate): the difference is waking
    Redis and the node up from idle."""
    slow, fast = _bare_hop(cfg, rate), _bare_hop(cfg, 5 * rate)
    return [
        Row(
            "redis",
            f"bare hop {point}, publish() to the hub, no clients, {rate:.0f} msg/s",
            slow[point],
            "ms",
            f"same at {5 * rate:.0f} msg/s",
            fast[point],
            details={"slow": slow, "fast": fast} if point == "p50" else {},
        )
        for point in ("p50", "p99")
    ]


def bench_redis(cfg: Config) -> list[Row]:
    """The latency the Redis hop adds; CPU per delivery; publish throughput."""
    from ._suite import _loadgen, _server, _stream_run

    # Latency: ``latency_clients`` per node at ``latency_rate``, each
    # set-up against the same processes in process, so that the difference
    # is the hop and not a busier machine.
    clients, rate = cfg.latency_clients, max(1.0, cfg.latency_rate)
    one = _hop_comparison(cfg, 1, clients, rate)
    two = _hop_comparison(cfg, 2, clients, rate)
    bare = _bare_rows(cfg, rate)
    # CPU: the largest fan-out size: a node's own cost per message (one
    # XREAD, one decode) is shared by its clients, and a node serves many.
    cpu_clients = cfg.fanout_sizes[-1]
    single = _stream_run(cfg, "metricstream", cpu_clients, rate, seconds=cfg.latency_seconds)
    with (
        redis_server() as url,
        _server(cfg, "metricstream", rate=rate, extra=("--redis", url)) as (a, port_a),
        _server(cfg, "metricstream", extra=("--redis", url)) as (b, port_b),
        _loadgen(cfg, port_a, cpu_clients) as gen_a,
        _loadgen(cfg, port_b, cpu_clients) as gen_b,
    ):
        time.sleep(cfg.warmup)
        node_a, node_b = _windows([(a, gen_a), (b, gen_b)], cfg.latency_seconds)
    with redis_server() as url:
        publish = _publish_rates(url, max(1000, cfg.record_count // 5))
    cpu = "cpu_us_per_message"
    integrity = (
        node_a["gaps"] + node_b["gaps"] + node_a["duplicates"] + node_b["duplicates"]
    ) + sum(c["gaps"] + c["duplicates"] for c in (one, two))
    return [
        Row(
            "redis",
            f"server CPU/delivery, publishing node, {cpu_clients} clients @ {rate:.0f} msg/s",
            node_a[cpu],
            "µs",
            "one node, in process",
            single[cpu],
            "≤1.2x",
            node_a[cpu] <= 1.2 * single[cpu],
            {"node": node_a, "single": single},
        ),
        Row(
            "redis",
            f"server CPU/delivery, second node, {cpu_clients} clients @ {rate:.0f} msg/s",
            node_b[cpu],
            "µs",
            "one node, in process",
            single[cpu],
            "≤1.2x",
            node_b[cpu] <= 1.2 * single[cpu],
            {"node": node_b},
        ),
        Row(
            "redis",
            f"end-to-end p99 added by the Redis hop, one node + Redis vs one node, "
            f"{clients} clients @ {rate:.0f} msg/s",
            one["added_p99"],
            "ms",
            f"one node in process p99 {one['p99_in_process']:.2f} ms",
            None,
            "≤2 ms",
            one["added_p99"] <= 2.0,
            one,
        ),
        Row(
            "redis",
            f"end-to-end p99 added by the Redis hop, two nodes + Redis vs two nodes, "
            f"{clients} clients each",
            two["added_p99"],
            "ms",
            f"two nodes in process p99 {two['p99_in_process']:.2f} ms",
            None,
            details=two,
        ),
        Row(
            "redis",
            "end-to-end p50 added by the Redis hop, one node + Redis vs one node",
            one["added_p50"],
            "ms",
        ),
        *_stage_rows(one, clients),
        *bare,
        Row(
            "redis",
            "gaps + duplicates on the Redis nodes",
            float(integrity),
            "",
            target="0",
            passed=integrity == 0,
        ),
        Row(
            "redis",
            "publish throughput into Redis (RedisPublisher)",
            publish["metricstream"],
            "/s",
            "redis-py pipelined XADD",
            publish["raw"],
            "≥0.8x",
            publish["metricstream"] >= 0.8 * publish["raw"],
        ),
    ]


def bench_redis_storm(cfg: Config) -> list[Row]:
    """Every client of a SIGKILLed node resumes on the other node."""
    from ._suite import _await_storm, _loadgen, _server, storm_integrity_rows

    clients = cfg.storm_clients
    with (
        redis_server() as url,
        # The survivor publishes: the stream goes on while the other dies.
        _server(cfg, "metricstream", rate=cfg.storm_rate, extra=("--redis", url)) as (b, port_b),
        _server(cfg, "metricstream", extra=("--redis", url)) as (a, port_a),
        _loadgen(cfg, port_a, clients) as gen,
    ):
        time.sleep(max(cfg.warmup, 1.0))
        gen.ask("mark")
        cpu0 = b.cpu_seconds()
        a.kill()
        gen.ask(f"move {port_b} 0")
        status = _await_storm(gen, clients, cfg.storm_timeout)
        storm_cpu = b.cpu_seconds() - cpu0
        time.sleep(min(1.0, cfg.warmup))
        final = gen.ask("storm")
    final["survivor_cpu_s"] = storm_cpu
    done = status["caught_up"] == clients
    return [
        Row(
            "redis storm",
            f"all {clients} moved to the surviving node and caught up",
            status["catch_up_max_s"] if done else float("nan"),
            "s after the kill",
            target="all catch up",
            passed=done,
            details=final,
        ),
        *storm_integrity_rows("redis storm", final),
    ]


def _many_idle(cfg: Config, kind: str) -> dict[str, Any]:
    from ._suite import _loadgen, _server

    clients = cfg.many_clients
    extra = ("--heartbeat", str(cfg.many_heartbeat))
    with _server(cfg, kind, extra=extra) as (server, port):
        time.sleep(cfg.idle_settle)
        before = server.rss()
        with _loadgen(cfg, port, clients) as gen:
            time.sleep(cfg.idle_settle)
            after = server.rss()
            cpu0, t0 = server.cpu_seconds(), time.monotonic()
            time.sleep(cfg.many_seconds)
            cpu, elapsed = server.cpu_seconds() - cpu0, time.monotonic() - t0
            mark = gen.ask("mark")
    return {
        "clients": clients,
        "rss_before": before,
        "rss_after": after,
        "kib_per_connection": (after - before) / clients / 1024,
        "cpu_s": cpu,
        "seconds": elapsed,
        "cpu_us_per_connection_s": cpu / elapsed / clients * 1e6,
        "closes": mark["closes"],
    }


def bench_many_idle(cfg: Config) -> list[Row]:
    """RSS and CPU of many idle connections with heartbeats on, vs websockets."""
    ms = _many_idle(cfg, "metricstream")
    ws = _many_idle(cfg, "broadcast")
    clients, beat = cfg.many_clients, cfg.many_heartbeat
    # Every connection must have stayed up: a heartbeat that closed them
    # would make the CPU figure meaningless.
    dropped = sum(ms["closes"].values()) + sum(ws["closes"].values())
    return [
        Row(
            "many idle",
            f"RSS per connection, {clients} connections, heartbeat {beat:g} s",
            ms["kib_per_connection"],
            "KiB",
            "websockets serve()",
            ws["kib_per_connection"],
            details={"metricstream": ms, "websockets": ws},
        ),
        Row(
            "many idle",
            f"CPU per idle connection per second, heartbeat {beat:g} s",
            ms["cpu_us_per_connection_s"],
            "µs",
            "websockets serve() pings",
            ws["cpu_us_per_connection_s"],
        ),
        Row(
            "many idle",
            "connections closed during the idle window",
            float(dropped),
            "",
            target="0",
            passed=dropped == 0,
        ),
    ]
