"""The relay: byte-exact in both directions, chunk timing kept, errors and
faults turned into the answers docs/proxy.md promises, and recorded."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import tracemalloc
from typing import Any

import httpx
import msgspec
import pytest

from metricstream.protocol import MetricsUpdatePayload, ModelUpdatePayload, RequestUpdatePayload
from tests.proxy.conftest import Exchange, Reply, StandIn, running_proxy, sse_event, watching
from tests.support import free_port, scaled, wait_until

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def _client(proxy_url: str, **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=proxy_url, timeout=scaled(30), **options)


async def test_request_and_response_pass_byte_for_byte() -> None:
    # Bytes no JSON encoder would produce: odd spacing, CRLF event endings,
    # a comment line, invalid UTF-8 in an unknown field.
    body = (
        b'{"model": "m",  "stream":true, "messages":[{"role":"user","content":"hi"}],'
        b' "x":"\xff\xfe"}'
    )
    pieces = [
        b": keep-alive comment\r\n\r\n",
        sse_event("Hel").replace(b"\n\n", b"\r\n\r\n"),
        sse_event("lo", finish="stop"),
        sse_event(None, usage=USAGE),
        b"data: [DONE]\n\n",
    ]

    async def handler(exchange: Exchange) -> Reply:
        return Reply(
            headers=[
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("X-Request-Id", "req-upstream-1"),
                ("Set-Cookie", "session=abc; Path=/"),
                ("Server", "stand-in/1.0"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "only-for-one-hop"),
                ("Keep-Alive", "timeout=5"),
            ],
            pieces=list(pieces),
            chunked=True,
        )

    async with (
        StandIn(handler) as upstream,
        running_proxy(upstream.url) as proxy,
        watching(proxy) as stream,
        _client(proxy.url) as http,
    ):
        request = http.build_request(
            "POST",
            "/v1/chat/completions?api-version=2024-10-21&x=%2F",
            content=body,
            headers={
                "Authorization": "Bearer sk-client-secret",
                "Content-Type": "application/json",
                "X-Custom": "kept",
                "Connection": "keep-alive, X-Client-Hop",
                "X-Client-Hop": "dropped",
                "Proxy-Authorization": "Basic dropped",
                "Expect": "100-continue",
            },
        )
        response = await http.send(request, stream=True)
        received = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
        [record] = await stream.until("request_update", 1)

        [seen] = upstream.exchanges
        # What the upstream got is what the client sent, minus the hop-by-hop fields.
        assert seen.method == "POST"
        assert seen.target == "/v1/chat/completions?api-version=2024-10-21&x=%2F"
        assert seen.body == body
        assert seen.header("Authorization") == ["Bearer sk-client-secret"]
        assert seen.header("X-Custom") == ["kept"]
        assert seen.header("Content-Type") == ["application/json"]
        assert seen.header("Content-Length") == [str(len(body))]
        assert seen.header("Host") == [f"127.0.0.1:{upstream.port}"]
        for hop in ("X-Client-Hop", "Proxy-Authorization", "Expect"):
            assert seen.header(hop) == [], hop
        # httpx added none of its own defaults.
        assert seen.header("User-Agent") == [
            h for k, h in request.headers.items() if k == "user-agent"
        ]

        # What the client got is what the upstream sent.
        assert response.status_code == 200
        assert received == bytes(seen.sent_body) == b"".join(pieces)
        assert response.headers["x-request-id"] == "req-upstream-1"
        assert response.headers.get_list("set-cookie") == ["session=abc; Path=/"]
        assert response.headers.get_list("server") == ["stand-in/1.0"]
        assert "date" not in response.headers
        assert "x-hop" not in response.headers
        assert "keep-alive" not in response.headers

        data = record["data"]
        assert data["endpoint"] == "/v1/chat/completions"
        # The request body is not valid JSON (the test made it so): the model
        # named by the upstream's answer is recorded instead.
        assert data["model"] == "stand-in-model"
        assert data["streaming"] is True
        assert (data["prompt_tokens"], data["completion_tokens"]) == (7, 3)
        assert data["finish_reason"] == "stop"
        assert data["id"] == "chatcmpl-standin"
        assert data["time_to_first_token_ms"] <= data["latency_ms"]
        assert "metadata" not in record or not record["metadata"]


async def test_first_chunk_reaches_the_client_before_the_upstream_sends_its_last() -> None:
    release = asyncio.Event()

    async def handler(exchange: Exchange) -> Reply:
        return Reply(
            headers=[("Content-Type", "text/event-stream")],
            pieces=[
                sse_event("first"),
                release.wait,  # held until the client has the first chunk
                sse_event("second"),
                sse_event("third", finish="stop"),
                b"data: [DONE]\n\n",
            ],
            chunked=True,
        )

    async with (
        StandIn(handler) as upstream,
        running_proxy(upstream.url) as proxy,
        watching(proxy) as stream,
        _client(proxy.url) as http,
    ):
        async with http.stream(
            "POST", "/v1/chat/completions", json={"model": "m", "stream": True}
        ) as response:
            chunks = response.aiter_raw()
            async with asyncio.timeout(scaled(10)):
                first = await anext(chunks)
            assert b'"first"' in first
            [exchange] = upstream.exchanges
            assert not exchange.last_sent.is_set(), "the upstream has not finished"
            release.set()
            rest = b"".join([c async for c in chunks])
        assert first + rest == bytes(exchange.sent_body)
        [record] = await stream.until("request_update", 1)
    data = record["data"]
    # Usage was not asked for: counted from the content chunks, and marked.
    assert data["completion_tokens"] == 3
    assert data["prompt_tokens"] == 0
    assert record["metadata"] == {"usage_estimated": True}
    # The test held the stream between the first and second chunk, so the
    # largest gap is the one it held.
    assert data["inter_token_latency_p95_ms"] >= data["inter_token_latency_p50_ms"] >= 0
    assert data["time_to_first_token_ms"] + data["inter_token_latency_p95_ms"] <= data["latency_ms"]
    assert data["time_per_output_token_ms"] is not None


async def test_upstream_errors_pass_through_and_are_recorded_without_secrets() -> None:
    error = {
        "error": {
            "message": "Incorrect API key provided: sk-proj-abcdefghijklmnop1234. " + "x" * 5000,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    payload = json.dumps(error).encode()

    async def handler(exchange: Exchange) -> Reply:
        status = 401 if b"auth" in exchange.body else 503
        return Reply(
            status=status, headers=[("Content-Type", "application/json")], pieces=[payload]
        )

    async with (
        StandIn(handler) as upstream,
        running_proxy(upstream.url) as proxy,
        watching(proxy) as stream,
        _client(proxy.url) as http,
    ):
        unauthorized = await http.post("/v1/chat/completions", json={"model": "auth"})
        unavailable = await http.post("/v1/chat/completions", json={"model": "m"})
        records = await stream.until("request_update", 2)
        errors = await stream.until("error_update", 2)
    assert (unauthorized.status_code, unavailable.status_code) == (401, 503)
    assert unauthorized.content == unavailable.content == payload
    assert [r["data"]["status"] for r in records] == ["error", "error"]
    for item in errors:
        data = item["data"]
        assert data["error_type"] == "invalid_request_error"
        assert "Incorrect API key provided: sk-proj***" in data["error_message"]
        assert "abcdefghijklmnop1234" not in data["error_message"]
        # Cut at 2000 (every recording path's limit), then masked: a little shorter.
        assert 1900 < len(data["error_message"]) <= 2000
    assert [e["data"]["severity"] for e in errors] == ["low", "high"]


async def test_upstream_down_or_silent_gives_502_or_504_with_an_openai_error() -> None:
    never = asyncio.Event()

    async def silent(exchange: Exchange) -> Reply:
        await never.wait()
        return Reply()

    down = f"http://127.0.0.1:{free_port()}"
    async with running_proxy(down) as proxy, watching(proxy) as stream:
        async with _client(proxy.url) as http:
            response = await http.post("/v1/chat/completions", json={"model": "m"})
        assert response.status_code == 502
        body = response.json()
        assert body["error"]["type"] == "upstream_unreachable"
        assert body["error"]["message"]
        [record] = await stream.until("request_update", 1)
        assert record["data"]["status"] == "error"
        [error] = await stream.until("error_update", 1)
        assert error["data"]["error_type"] == "upstream_unreachable"

    async with (
        StandIn(silent) as upstream,
        running_proxy(upstream.url, read_timeout=0.3) as proxy,
        _client(proxy.url) as http,
    ):
        response = await http.post("/v1/chat/completions", json={"model": "m"})
        assert response.status_code == 504
        assert response.json()["error"]["type"] == "upstream_timeout"
        assert proxy.collector.snapshot().errors_by_type == {"upstream_timeout": 1}
        never.set()


async def test_upstream_breaking_off_mid_stream_breaks_the_client_connection() -> None:
    async def handler(exchange: Exchange) -> Reply:
        return Reply(
            headers=[("Content-Type", "text/event-stream")],
            pieces=[sse_event("a"), sse_event("b")],
            chunked=True,
            hang_up_after=True,
        )

    async with StandIn(handler) as upstream, running_proxy(upstream.url) as proxy:
        async with _client(proxy.url) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post("/v1/chat/completions", json={"model": "m", "stream": True})
        await wait_until(
            lambda: proxy.collector.snapshot().metrics.total_requests >= 1,
            10,
            "the broken request to be recorded",
        )
        assert proxy.collector.snapshot().errors_by_type == {"upstream_broken": 1}
        assert proxy.collector.snapshot().metrics.error_rate == 100.0


async def test_client_leaving_mid_stream_cancels_the_upstream_request() -> None:
    never = asyncio.Event()

    async def handler(exchange: Exchange) -> Reply:
        return Reply(
            headers=[("Content-Type", "text/event-stream")],
            pieces=[sse_event("first"), never.wait, sse_event("never sent")],
            chunked=True,
        )

    async with StandIn(handler) as upstream, running_proxy(upstream.url) as proxy:
        async with watching(proxy) as stream:
            async with (
                _client(proxy.url) as http,
                http.stream(
                    "POST", "/v1/chat/completions", json={"model": "m", "stream": True}
                ) as response,
            ):
                async with asyncio.timeout(scaled(10)):
                    assert b"first" in await anext(response.aiter_raw())
            # The client closed its connection; the proxy must close its own.
            [exchange] = upstream.exchanges
            async with asyncio.timeout(scaled(10)):
                await exchange.closed_by_peer.wait()
            [record] = await stream.until("request_update", 1)
            [error] = await stream.until("error_update", 1)
        never.set()
    data = record["data"]
    assert data["status"] == "error"
    assert data["finish_reason"] == "cancelled"
    assert data["error_message"] == "client disconnected"
    assert data["completion_tokens"] == 1
    assert error["data"]["error_type"] == "client_disconnected"


async def test_fifty_megabytes_pass_with_bounded_memory() -> None:
    size = 50 * 1024 * 1024
    block = bytes(range(256)) * 256  # 64 KiB

    async def handler(exchange: Exchange) -> Reply:
        return Reply(
            headers=[("Content-Type", "application/json")],
            pieces=[block] * (size // len(block)),
            keep_body=False,
        )

    async with StandIn(handler) as upstream, running_proxy(upstream.url) as proxy:
        async with _client(proxy.url) as http:
            digest = hashlib.sha256()
            total = 0
            tracemalloc.start()
            try:
                async with http.stream("GET", "/v1/files/big/content") as response:
                    async for chunk in response.aiter_raw():
                        digest.update(chunk)
                        total += len(chunk)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        [exchange] = upstream.exchanges
        assert total == exchange.sent_length == size
        assert digest.digest() == exchange.sent_digest.digest()
        # Upstream, proxy and client all run in this process: none held the
        # body (the recording copy of a JSON response stops at 4 MiB).
        assert peak < 16 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
        snap = proxy.collector.snapshot()
        assert snap.metrics.total_requests == 1
        assert snap.metrics.error_rate == 0.0


async def test_gzip_json_is_passed_compressed_and_read_for_usage() -> None:
    completion = {
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": "m-2024",
        "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "length"}],
        "usage": USAGE,
    }
    packed = gzip.compress(json.dumps(completion).encode())

    async def handler(exchange: Exchange) -> Reply:
        return Reply(
            headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
            pieces=[packed[:10], packed[10:]],
        )

    async with (
        StandIn(handler) as upstream,
        running_proxy(upstream.url) as proxy,
        watching(proxy) as stream,
        _client(proxy.url) as http,
    ):
        async with http.stream("POST", "/v1/chat/completions", json={"model": "m"}) as r:
            raw = b"".join([c async for c in r.aiter_raw()])
        [record] = await stream.until("request_update", 1)
    assert raw == packed
    data = record["data"]
    assert (data["prompt_tokens"], data["completion_tokens"]) == (7, 3)
    assert data["model"] == "m"  # the name asked for, not the upstream's dated one
    assert data["finish_reason"] == "length"
    assert data["streaming"] is False


async def test_many_concurrent_streams_each_arrive_whole() -> None:
    streams = 40

    async def handler(exchange: Exchange) -> Reply:
        n = json.loads(exchange.body)["n"]
        events = [sse_event(f"{n}-{i}") for i in range(20)]
        events.append(sse_event(None, usage={"prompt_tokens": n, "completion_tokens": 20}))
        return Reply(headers=[("Content-Type", "text/event-stream")], pieces=events, chunked=True)

    async with (
        StandIn(handler) as upstream,
        running_proxy(upstream.url) as proxy,
        watching(proxy) as stream,
        _client(proxy.url) as http,
    ):

        async def one(n: int) -> bytes:
            async with http.stream(
                "POST", "/v1/chat/completions", json={"model": "m", "stream": True, "n": n}
            ) as response:
                return b"".join([c async for c in response.aiter_raw()])

        bodies = await asyncio.gather(*(one(n) for n in range(streams)))
        records = await stream.until("request_update", streams, seconds=30)
        sent = {json.loads(e.body)["n"]: bytes(e.sent_body) for e in upstream.exchanges}
        for n, body in enumerate(bodies):
            assert body == sent[n]
        assert sorted(r["data"]["prompt_tokens"] for r in records) == list(range(streams))
        assert all(r["data"]["completion_tokens"] == 20 for r in records)
        assert proxy.collector.snapshot().metrics.total_requests == streams


async def test_other_paths_are_the_stream_server() -> None:
    async def handler(exchange: Exchange) -> Reply:
        raise AssertionError("nothing outside /v1 reaches the upstream")

    async with (
        StandIn(handler) as upstream,
        running_proxy(upstream.url) as proxy,
        _client(proxy.url) as http,
    ):
        health = await http.get("/healthz")
        page = await http.get("/")
        metrics = await http.get("/metrics")
    assert health.json()["status"] == "ok"
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "metricstream_connections" in metrics.text
    assert upstream.exchanges == []


def _seed_shaped(payload_type: type[Any]) -> type[Any]:
    """The payload as an older client declares it: the seed's fields only."""
    from tests.protocol.test_messages import SEED_FIELDS

    seed = SEED_FIELDS[payload_type]
    fields = [
        (f.name, f.type) if f.required else (f.name, f.type, f.default)
        for f in msgspec.structs.fields(payload_type)
        if f.name in seed
    ]
    return msgspec.defstruct(f"Seed{payload_type.__name__}", fields, kw_only=True)


async def test_a_seed_shaped_client_decodes_the_new_messages() -> None:
    release = asyncio.Event()

    async def handler(exchange: Exchange) -> Reply:
        return Reply(
            headers=[("Content-Type", "text/event-stream")],
            pieces=[
                sse_event("a"),
                release.wait,
                sse_event("b", finish="stop"),
                sse_event(None, usage=USAGE),
            ],
            chunked=True,
        )

    async with (
        StandIn(handler) as upstream,
        running_proxy(upstream.url) as proxy,
        watching(proxy) as stream,
        _client(proxy.url) as http,
        http.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True}) as r,
    ):
        chunks = r.aiter_raw()
        await anext(chunks)
        release.set()
        async for _ in chunks:
            pass
        await stream.until("request_update", 1)
        # Wait for the state messages that carry the new percentiles.
        async with asyncio.timeout(scaled(10)):
            while not any(
                m["data"].get("itl_p50_ms") is not None for m in stream.of_type("model_update")
            ) or not any(
                m["data"].get("ttft_p50_ms") is not None for m in stream.of_type("metrics_update")
            ):
                stream.messages.append(json.loads(await stream.ws.recv()))
    checked = 0
    for mtype, payload_type in (
        ("request_update", RequestUpdatePayload),
        ("metrics_update", MetricsUpdatePayload),
        ("model_update", ModelUpdatePayload),
    ):
        seed_type = _seed_shaped(payload_type)
        for message in stream.of_type(mtype):
            raw = json.dumps(message["data"]).encode()
            new_fields = set(message["data"]) - set(seed_type.__struct_fields__)
            old = msgspec.json.decode(raw, type=seed_type)
            current = msgspec.json.decode(raw, type=payload_type)
            for name in seed_type.__struct_fields__:
                assert getattr(old, name) == getattr(current, name)
            checked += bool(new_fields)
    assert checked >= 3, "messages with the new fields were decoded by the seed's shape"


async def test_a_client_that_stops_reading_an_event_stream_stops_the_upstream() -> None:
    # 64 MB of events: far more than every socket buffer on the way holds.
    event = sse_event("x" * 4000)
    count = 64 * 1024 * 1024 // len(event)

    async def handler(exchange: Exchange) -> Reply:
        return Reply(
            headers=[("Content-Type", "text/event-stream")],
            pieces=[event] * count,
            chunked=True,
            keep_body=False,
        )

    async with (
        StandIn(handler) as upstream,
        running_proxy(upstream.url) as proxy,
        _client(proxy.url) as http,
        http.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True}) as r,
    ):
        # Held until the end: a dropped iterator would be finalised, closing
        # the response (the client leaving, which another test covers).
        chunks = r.aiter_raw()
        async with asyncio.timeout(scaled(10)):
            await anext(chunks)
        [exchange] = upstream.exchanges
        # The client reads no more. Nothing signals "the upstream is blocked",
        # so watch its progress until it stops moving.
        last = -1
        async with asyncio.timeout(scaled(30)):
            while exchange.sent_length != last:
                last = exchange.sent_length
                await asyncio.sleep(0.5)
        # The proxy paused reading: the upstream could not send more than
        # what the kernel buffers and the proxy's bounded read-ahead hold.
        assert exchange.sent_length < 32 * 1024 * 1024, exchange.sent_length
        assert not exchange.last_sent.is_set()
        assert not exchange.closed_by_peer.is_set()
        assert proxy.collector.snapshot().metrics.total_requests == 0  # still in flight


async def test_estimates_encodings_and_masking_in_the_records() -> None:
    async def handler(exchange: Exchange) -> Reply:
        request = json.loads(exchange.body)
        if request.get("model") == "br":
            # An encoding the proxy cannot read: passed on, recorded without tokens.
            return Reply(
                headers=[("Content-Type", "application/json"), ("Content-Encoding", "br")],
                pieces=[b"\x1b\x00\x00not really brotli"],
            )
        if request.get("model") == "leaky":
            error = {"error": {"message": "rejected Bearer abc.def.ghi and api_key=s3cr3t"}}
            return Reply(
                status=400,
                headers=[("Content-Type", "application/json")],
                pieces=[json.dumps(error).encode()],
            )
        text = {"id": "cmpl-1", "object": "text_completion", "model": "m"}
        events = [
            b"data: "
            + json.dumps({**text, "choices": [{"index": 0, "text": t}]}).encode()
            + b"\n\n"
            for t in ("Once", " upon")
        ]
        return Reply(headers=[("Content-Type", "text/event-stream")], pieces=events, chunked=True)

    async with (
        StandIn(handler) as upstream,
        running_proxy(upstream.url) as proxy,
        watching(proxy) as stream,
        _client(proxy.url) as http,
    ):
        completion = await http.post(
            "/v1/completions", json={"model": "m", "stream": True, "prompt": ["abcd" * 10, "xy"]}
        )
        chat = await http.post(
            "/v1/chat/completions",
            json={
                "model": "m",
                "stream": True,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "a" * 8}]}],
            },
        )
        raw = await http.post("/v1/chat/completions", json={"model": "br"})
        leaky = await http.post("/v1/chat/completions", json={"model": "leaky"})
        records = await stream.until("request_update", 4)
        [error] = await stream.until("error_update", 1)
    assert completion.status_code == chat.status_code == raw.status_code == 200
    assert raw.headers["content-encoding"] == "br"
    assert leaky.status_code == 400
    by_order = [r["data"] for r in records]
    # 42 characters of prompt: 11 tokens at 4 a token; two content events.
    assert (by_order[0]["prompt_tokens"], by_order[0]["completion_tokens"]) == (11, 2)
    assert by_order[0]["endpoint"] == "/v1/completions"
    assert records[0]["metadata"] == {"usage_estimated": True}
    assert by_order[1]["prompt_tokens"] == 2
    assert (by_order[2]["prompt_tokens"], by_order[2]["completion_tokens"]) == (0, 0)
    assert by_order[2]["status"] == "success"
    message = error["data"]["error_message"]
    assert message == "rejected Bearer *** and api_key=***"
    assert error["data"]["error_type"] == "http_400"


async def test_odd_events_pass_through_untouched_and_are_skipped_in_the_record() -> None:
    # The middleware's reader is the same (tests/collector/test_exchange.py):
    # no event, however odd, fails the response or the record.
    odd = [
        b"data: not json\n\n",
        b"data: [1, 2]\n\n",
        b'data: {"choices": "not a list"}\n\n',
        b'data: {"usage": {"prompt_tokens": "5"}}\n\n',
        b"data: {\xff\xfe}\n\n",
    ]

    async def handler(exchange: Exchange) -> Reply:
        pieces = [sse_event("a"), *odd, sse_event("b", finish="stop"), b"data: [DONE]\n\n"]
        return Reply(headers=[("Content-Type", "text/event-stream")], pieces=pieces, chunked=True)

    async with (
        StandIn(handler) as upstream,
        running_proxy(upstream.url) as proxy,
        watching(proxy) as stream,
        _client(proxy.url) as http,
    ):
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "user": "ada"},
            headers={"OpenAI-Organization": "org-x"},
        )
        [record] = await stream.until("request_update", 1)
        [exchange] = upstream.exchanges
    assert response.status_code == 200
    assert response.content == bytes(exchange.sent_body)
    data = record["data"]
    assert data["status"] == "success"
    assert data["completion_tokens"] == 2
    assert data["finish_reason"] == "stop"
    assert (data["user_id"], data["organization_id"]) == ("ada", "org-x")
    assert record["metadata"] == {"usage_estimated": True}
