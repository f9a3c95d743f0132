"""The fleet's figures on every node: the LLM exporter, active connections, the demo."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from metricstream.protocol import CloseCode
from metricstream.server import LLMExporter, RedisLeasedTask, RedisPublisher
from tests.server.conftest import close_code, open_client, recv, request
from tests.support import scaled, wait_until

from .conftest import Node, RedisProcess, ServeProcess, node


async def _requests_counted(port: int) -> int:
    """``metricstream_llm_requests_total`` summed over its series, from ``/metrics``."""
    async with httpx.AsyncClient(timeout=scaled(5)) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "metricstream_llm_requests_total"
        )
    )


def _read_up_to(one: Node, sequence: int) -> bool:
    return one.hub.sequence == sequence


async def _publish(url: str, ids: list[str], **options: Any) -> RedisPublisher:
    async with RedisPublisher(url, **options) as publisher:
        for rid in ids:
            publisher.publish(request(rid))
        async with asyncio.timeout(scaled(10)):
            await publisher.flush()
    return publisher


async def test_every_nodes_exporter_counts_the_fleets_requests_once(
    redis_server: RedisProcess,
) -> None:
    # Already in the log when the nodes start: before their counters began.
    await _publish(redis_server.url, [f"old{i}" for i in range(5)])
    async with (
        node(redis_server.url, exporter=LLMExporter(None)) as one,
        node(redis_server.url, exporter=LLMExporter(None)) as two,
    ):
        nodes = (one, two)
        assert one.hub.sequence == two.hub.sequence == 5
        assert [await _requests_counted(n.port) for n in nodes] == [0, 0]

        async def counted(expected: int, sequence: int) -> None:
            for n in nodes:
                # A node hands each message to its listeners as it takes it:
                # once it has read up to ``sequence``, its count is final.
                await wait_until(partial(_read_up_to, n, sequence), 10, "the node reading")
                assert await _requests_counted(n.port) == expected

        # A gateway worker's requests and each node's own, counted by both
        # nodes once: what a node publishes is counted as it comes back.
        await _publish(redis_server.url, [f"w{i}" for i in range(4)])
        for i in range(3):
            one.hub.publish(request(f"one{i}"))
        for i in range(2):
            two.hub.publish(request(f"two{i}"))
        await counted(9, 14)

        # A hole (a publisher's buffer overflowed): both nodes reload and
        # count what came after the hole, and nothing they had counted.
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(open_client(n.url())) for n in nodes]
            for ws in clients:
                await recv(ws)
            dropping = await _publish(redis_server.url, ["kept", "lost0", "lost1"], max_pending=1)
            assert dropping.dropped == 2
            await counted(10, 17)
            for ws in clients:
                assert await close_code(ws) == CloseCode.SERVICE_RESTART

        # Redis wiped: a new epoch, whose messages are all new.
        from redis.asyncio import Redis

        client = Redis.from_url(redis_server.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        epoch = one.hub.epoch
        await _publish(redis_server.url, ["new0", "new1"])
        await wait_until(lambda: all(n.hub.epoch != epoch for n in nodes), 10, "a new epoch")
        await counted(12, 2)


async def _fleet_connections(ws: Any, expected: int) -> None:
    """Read ``ws`` until a ``metrics_update`` says ``expected`` connections."""
    async with asyncio.timeout(scaled(15)):
        while True:
            message = await recv(ws, 15)
            if (
                message["type"] == "metrics_update"
                and message["data"]["active_connections"] == expected
            ):
                return


async def test_active_connections_counts_every_live_nodes_clients(
    redis_server: RedisProcess, two_nodes: tuple[ServeProcess, ServeProcess]
) -> None:
    doomed, survivor = two_nodes
    await doomed.ready()
    await survivor.ready()
    async with contextlib.AsyncExitStack() as stack:
        on_doomed = [await stack.enter_async_context(open_client(doomed.url())) for _ in range(2)]
        on_survivor = [
            await stack.enter_async_context(open_client(survivor.url())) for _ in range(3)
        ]
        watcher = await stack.enter_async_context(open_client(survivor.url()))
        # Two on one node, three and the watcher on the other.
        await _fleet_connections(watcher, 6)
        await on_doomed[0].close()
        await _fleet_connections(watcher, 5)
        # SIGKILL: the dead node never withdraws its count; it runs out.
        doomed.kill()
        await _fleet_connections(watcher, 4)
        assert len(on_survivor) == 3


async def test_a_stopped_aggregator_withdraws_its_count_at_once(
    redis_server: RedisProcess,
) -> None:
    from metricstream.server import RedisAggregator

    # A lease far longer than the test: only the withdrawal can explain it.
    options: dict[str, Any] = {"interval": 0.05, "lease": 600, "system_stats": False}
    async with node(redis_server.url) as one, node(redis_server.url) as two:
        first = RedisAggregator(one.backend, **options)
        await first.start()
        try:
            await wait_until(lambda: first.leader, 10, "the first aggregator leading")
            async with RedisAggregator(two.backend, **options) as second:
                async with open_client(one.url()) as a, open_client(two.url()) as b:
                    await recv(a)
                    await recv(b)
                    await wait_until(lambda: first.fleet_connections == 2, 10, "both counted")
                await wait_until(lambda: first.fleet_connections == 0, 10, "both gone")
                async with open_client(two.url()) as c:
                    await recv(c)
                    await wait_until(lambda: first.fleet_connections == 1, 10, "two's client")
                    await second.close()
                    await wait_until(lambda: first.fleet_connections == 0, 10, "withdrawn")
        finally:
            await first.close()


class _Runs:
    """A leased task's work: counts its runs, and which are running now."""

    def __init__(self) -> None:
        self.running = 0
        self.started = 0

    async def work(self) -> None:
        self.running += 1
        self.started += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.running -= 1


def _runs_alone(task: RedisLeasedTask, runs: _Runs) -> bool:
    return task.holding and runs.running == 1


@contextlib.asynccontextmanager
async def _leased(one: Node, runs: _Runs, **options: Any) -> AsyncIterator[RedisLeasedTask]:
    async with RedisLeasedTask(one.backend, "job", runs.work, **options) as task:
        yield task


async def test_a_leased_task_runs_on_one_node_and_moves_when_handed_back(
    redis_server: RedisProcess,
) -> None:
    runs = _Runs()
    async with (
        node(redis_server.url) as one,
        node(redis_server.url) as two,
        _leased(one, runs, interval=0.05, lease=600) as first,
    ):
        await wait_until(lambda: first.holding and runs.running == 1, 10, "the first holder")
        async with _leased(two, runs, interval=0.05, lease=600) as second:
            # The lease is far from running out: the second waits.
            await wait_until(lambda: second.attempts >= 3, 10, "the second trying")
            assert (second.holding, second.starts, runs.started) == (False, 0, 1)
            from redis.asyncio import Redis

            client = Redis.from_url(redis_server.url)
            try:
                holder: Any = await client.get(first.key)
                assert holder.decode() == first.id
                await first.close()
                await wait_until(lambda: second.holding, 10, "the lease taken over")
                holder = await client.get(first.key)
                assert holder.decode() == second.id
            finally:
                await client.aclose()
            assert runs.running == 1
            assert runs.started == 2


async def test_a_leased_task_stops_when_its_lease_runs_out_unrenewed(
    redis_server: RedisProcess,
) -> None:
    runs = _Runs()
    async with node(redis_server.url) as one, _leased(one, runs, interval=0.1, lease=0.4) as task:
        await wait_until(lambda: _runs_alone(task, runs), 10, "holding")
        redis_server.pause()
        try:
            # Redis cannot say whether another node took the lease: stop.
            await wait_until(lambda: runs.running == 0, 10, "the task stopped")
            assert not task.holding
        finally:
            redis_server.resume()
        await wait_until(lambda: _runs_alone(task, runs), 10, "holding again")
        assert runs.started >= 2


async def _log(redis_url: str) -> list[dict[str, Any]]:
    """The shared log: each entry's sequence, type and message."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        entries: Any = await client.xrange("metricstream:log")
    finally:
        await client.aclose()
    return [
        {"s": int(f[b"s"]), "t": f[b"t"].decode(), "m": json.loads(f[b"b"])} for _i, f in entries
    ]


async def _holder_is(redis_url: str, pid: int, task: str = "demo") -> bool:
    return await _lease_holder(redis_url, task) == pid


async def _lease_holder(redis_url: str, task: str = "demo") -> int | None:
    """The process id in a leased task's lease (``host:pid:random``), if held."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        holder: Any = await client.get(f"metricstream:lease:{task}")
    finally:
        await client.aclose()
    return None if holder is None else int(holder.decode().split(":")[1])


def _demo_runs(entries: list[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """Per demo (its request ids' prefix): first and last sequence, requests."""
    runs: dict[str, tuple[int, int, int]] = {}
    for e in entries:
        if e["t"] != "request_update" or not e["m"]["data"]["id"].startswith("req-"):
            continue
        prefix = e["m"]["data"]["id"].rsplit("-", 1)[0]
        first, _last, count = runs.get(prefix, (e["s"], e["s"], 0))
        runs[prefix] = (first, e["s"], count + 1)
    return runs


async def test_serve_demo_on_two_redis_nodes_runs_one_demo_and_moves_it_when_killed(
    redis_server: RedisProcess,
) -> None:
    # Requests no demo sees: every fleet total counts them.
    outside = 200
    await _publish(redis_server.url, [f"ext{i}" for i in range(outside)])
    nodes = [ServeProcess(redis_server.url, "--demo") for _ in range(2)]
    try:
        for one in nodes:
            await one.ready()
        holder = await wait_until(
            lambda: _lease_holder(redis_server.url), 20, "a node running the demo", interval=0.05
        )
        doomed = next(n for n in nodes if n.process.pid == holder)
        survivor = next(n for n in nodes if n is not doomed)

        async def demo_requests(count: int) -> bool:
            runs = _demo_runs(await _log(redis_server.url))
            return len(runs) >= 1 and list(runs.values())[-1][2] >= count

        await wait_until(lambda: demo_requests(30), 30, "the demo's requests", interval=0.1)
        assert len(_demo_runs(await _log(redis_server.url))) == 1, "two demos at once"
        doomed.kill()
        pid = survivor.process.pid
        await wait_until(
            lambda: _holder_is(redis_server.url, pid), 20, "the demo taken over", interval=0.05
        )
        await wait_until(
            lambda: _demo_runs_count(redis_server.url, 2), 30, "the second demo", interval=0.1
        )
        await wait_until(lambda: demo_requests(30), 30, "the second demo's requests", interval=0.1)
        async with open_client(survivor.url()) as ws:
            await recv(ws)
            # A fleet aggregate published after the takeover.
            async with asyncio.timeout(scaled(15)):
                while (message := await recv(ws, 15))["type"] != "metrics_update":
                    pass
            last_total = message["data"]["total_requests"]
    finally:
        for one in nodes:
            one.kill()
    entries = await _log(redis_server.url)
    runs = _demo_runs(entries)
    assert len(runs) == 2, runs
    (first_start, first_end, _), (second_start, _, _) = runs.values()
    # One demo at a time: the second began after the first's last request.
    assert first_start < first_end < second_start
    types = {e["t"] for e in entries}
    # The state only the demo has goes out with its requests.
    assert {"kv_cache_update", "rate_limit_update"} <= types
    totals = [e["m"]["data"]["total_requests"] for e in entries if e["t"] == "metrics_update"]
    assert totals, "no fleet aggregate"
    # Every metrics_update is the fleet's (it counts the outside requests no
    # demo's own collector saw), and never goes back.
    assert min(totals) >= outside
    assert totals == sorted(totals)
    assert last_total >= outside
    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url)
    try:
        numbered: Any = await client.hget("metricstream:agg", "requests")
    finally:
        await client.aclose()
    finals = sum(
        1
        for e in entries
        if e["t"] == "request_update" and e["m"]["data"]["status"] != "in_progress"
    )
    # The demo's requests are in the fleet's exact totals, each once.
    assert int(numbered) == finals


async def _demo_runs_count(redis_url: str, count: int) -> bool:
    return len(_demo_runs(await _log(redis_url))) >= count


def test_the_dashboard_lets_a_redis_fleet_take_one_nodes_view() -> None:
    from tests.server.test_prometheus_grafana import DASHBOARD, queries

    dashboard = json.loads(DASHBOARD.read_text())
    (agg,) = [v for v in dashboard["templating"]["list"] if v["name"] == "agg"]
    assert [o["value"] for o in agg["options"]] == ["sum", "max"]
    assert agg["current"]["value"] == "sum"
    llm = [q for q in queries(dashboard["panels"]) if "metricstream_llm_" in q]
    assert llm
    # Every LLM figure goes through the choice before anything else adds
    # series up: with "max", a request counted by every node counts once.
    for query in llm:
        assert query.count("$agg by (") == query.count("metricstream_llm_"), query


async def test_serve_scrape_on_two_redis_nodes_scrapes_from_one_node_at_a_time(
    redis_server: RedisProcess,
) -> None:
    from tests.collector.engines import serve_engine
    from tests.collector.test_scrape import vllm

    exposition = vllm(
        prompt=10,
        generation=10,
        running=1,
        waiting=0,
        usage=0.5,
    )
    # Each node is given its own stand-in engine, so which engine is asked
    # says which node scrapes.
    with serve_engine() as first, serve_engine() as second:
        engines = (first, second)
        for engine in engines:
            engine.serve(exposition)
        nodes = [
            ServeProcess(redis_server.url, "--scrape", engine.url, "--scrape-interval", "0.1")
            for engine in engines
        ]
        try:
            for one in nodes:
                await one.ready()
            holder = await wait_until(
                lambda: _lease_holder(redis_server.url, "scrape"),
                20,
                "a node scraping",
                interval=0.05,
            )
            index = next(i for i, n in enumerate(nodes) if n.process.pid == holder)
            scraping, idle = engines[index], engines[1 - index]
            await wait_until(lambda: len(scraping.requests) >= 5, 20, "scrapes by the holder")
            assert idle.requests == [], "two nodes scraped at once"
            nodes[index].kill()
            survivor = nodes[1 - index].process.pid
            await wait_until(
                lambda: _holder_is(redis_server.url, survivor, "scrape"),
                20,
                "the scrape taken over",
            )
            await wait_until(lambda: len(idle.requests) >= 3, 20, "scrapes by the survivor")
            async with open_client(nodes[1 - index].url()) as ws:
                await recv(ws)
                async with asyncio.timeout(scaled(15)):
                    while (message := await recv(ws, 15))["type"] != "metrics_update":
                        pass
            # The scraping node's collector publishes the engines' figures.
            assert "engines" in (message.get("metadata") or {})
        finally:
            for one in nodes:
                one.kill()
