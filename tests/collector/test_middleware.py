"""MetricsMiddleware on a real FastAPI app served by uvicorn, called with httpx."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from metricstream.collector import MetricsCollector, MetricsMiddleware, ModelPrice
from metricstream.protocol import MessageType, decode, encode
from tests.collector.helpers import RecordingPublisher
from tests.support import scaled, wait_until

MODEL = "openai/gpt-oss-120b"
_PRICE = ModelPrice(1.0, 2.0)
LEAKY_ERROR = "key sk-live-0123456789abcdef rejected (Bearer abc.def.ghi, api_key=s3cr3t)"


class Gate:
    """Lets the test hold a streamed response between two chunks."""

    def __init__(self) -> None:
        self.first_sent = asyncio.Event()
        self.release = asyncio.Event()


def _chunk(
    content: str | None, *, usage: dict[str, int] | None = None, finish: str | None = None
) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    chunk: dict[str, Any] = {
        "id": "chatcmpl-stream-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [] if content is None else [choice],
    }
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def build_app(collector: MetricsCollector, gate: Gate) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        if body.get("model") == "overloaded":
            return JSONResponse(
                {"error": {"message": "Too many requests", "type": "rate_limit_exceeded"}},
                status_code=429,
            )
        if body.get("model") == "leaky":
            # An upstream that quotes the credentials it was given.
            error = {"message": LEAKY_ERROR, "type": "invalid_api_key"}
            return JSONResponse({"error": error}, status_code=502)
        if body.get("model") == "verbose":
            # An upstream that puts a whole page into its error.
            error = {"message": "upstream said: " + "x" * 100_000, "type": "t" * 5000}
            return JSONResponse({"error": error}, status_code=503)
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                yield _chunk("Hel")
                gate.first_sent.set()
                # The test reads the first chunk before letting the rest go:
                # a middleware that buffered the stream would deadlock here.
                await gate.release.wait()
                yield _chunk("lo")
                yield _chunk("!", finish="length")
                yield _chunk(None, usage={"prompt_tokens": 12, "completion_tokens": 3})
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return {
            "id": "chatcmpl-42",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
        }

    @app.post("/v1/split-stream")
    async def split_stream() -> StreamingResponse:
        # Three content events and no usage chunk, cut at awkward places.
        raw = _chunk("a") + _chunk("b") + _chunk("") + _chunk("c") + b"data: [DONE]\n\n"
        pieces = [raw[i : i + 37] for i in range(0, len(raw), 37)]

        async def events() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    app.add_middleware(MetricsMiddleware, collector=collector)
    return app


@pytest.fixture
async def served(
    publisher: RecordingPublisher,
) -> AsyncIterator[tuple[str, MetricsCollector, Gate]]:
    collector = MetricsCollector(publisher, system_stats=False, prices={MODEL: _PRICE})
    gate = Gate()
    app = build_app(collector, gate)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", ws="none", log_level="critical", http="h11")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        # uvicorn offers a flag, not an event, for "listening".
        await wait_until(lambda: server.started, 10, "uvicorn to listen")
        yield f"http://127.0.0.1:{port}", collector, gate
    finally:
        server.should_exit = True
        async with asyncio.timeout(scaled(10)):
            await task
        sock.close()


def _requests(publisher: RecordingPublisher) -> list[Any]:
    return [m.data for m in publisher.of_type(MessageType.REQUEST_UPDATE)]


async def test_non_streamed_completion_records_model_and_tokens(
    served: tuple[str, MetricsCollector, Gate], publisher: RecordingPublisher
) -> None:
    url, collector, _ = served
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "user": "ada"},
            headers={"OpenAI-Organization": "org-x"},
        )
    assert response.status_code == 200
    (record,) = _requests(publisher)
    assert record.model == MODEL
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (9, 4, 13)
    assert record.status == "success"
    assert record.streaming is False
    assert record.id == "chatcmpl-42"
    assert record.user_id == "ada"
    assert record.organization_id == "org-x"
    assert record.cost == pytest.approx((9 * 1.0 + 4 * 2.0) / 1e6)
    assert record.latency_ms > 0
    assert collector.snapshot().costs.breakdown_by_service == {
        "/v1/chat/completions": pytest.approx(17e-6)
    }


async def test_streamed_completion_passes_through_and_records_usage(
    served: tuple[str, MetricsCollector, Gate], publisher: RecordingPublisher
) -> None:
    url, collector, gate = served
    received: list[bytes] = []
    async with (
        httpx.AsyncClient(base_url=url) as client,
        client.stream(
            "POST", "/v1/chat/completions", json={"model": MODEL, "stream": True}
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = response.aiter_raw()
        async with asyncio.timeout(scaled(10)):
            # The first event arrives while the app still holds the rest.
            received.append(await anext(chunks))
            assert b'"Hel"' in received[0]
            assert not gate.release.is_set()
            assert _requests(publisher) == []  # not finished yet
            gate.release.set()
            received.extend([chunk async for chunk in chunks])
    body = b"".join(received)
    assert body.endswith(b"data: [DONE]\n\n")
    assert body.count(b"data: ") == 5

    (record,) = _requests(publisher)
    assert record.streaming is True
    assert record.model == MODEL
    assert (record.prompt_tokens, record.completion_tokens) == (12, 3)
    assert record.status == "success"
    assert record.id == "chatcmpl-stream-1"
    snap = collector.snapshot()
    assert snap.ttft.count == 1
    assert 0 < snap.ttft.p50 <= record.latency_ms
    assert snap.metrics.streaming_percentage == 100.0
    # The streaming timings: the test held the rest back after "Hel", so at
    # least one gap was measured, and everything fits inside the request.
    assert record.time_to_first_token_ms == pytest.approx(snap.ttft.p50, abs=1e-3)
    assert record.inter_token_latency_ms is not None
    assert record.inter_token_latency_p50_ms is not None
    assert record.inter_token_latency_p95_ms is not None
    assert record.inter_token_latency_p50_ms <= record.inter_token_latency_p95_ms
    assert record.time_to_first_token_ms + record.inter_token_latency_p95_ms <= record.latency_ms
    assert record.time_per_output_token_ms is not None
    assert record.finish_reason == "length"
    assert record.endpoint == "/v1/chat/completions"
    assert snap.metrics.ttft_p50_ms is not None
    assert snap.metrics.itl_p50_ms == pytest.approx(record.inter_token_latency_ms, abs=1e-3)


async def test_huge_error_texts_from_a_response_are_cut(
    served: tuple[str, MetricsCollector, Gate], publisher: RecordingPublisher
) -> None:
    # They go into every client's stream: a 100 kB message must not.
    url, _, _ = served
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json={"model": "verbose"})
        assert response.status_code == 503
    (record,) = _requests(publisher)
    assert record.error_message is not None
    assert record.error_message.startswith("upstream said: xxx")
    assert len(record.error_message) == 2000
    (error,) = [m.data for m in publisher.of_type(MessageType.ERROR_UPDATE)]
    assert len(error.error_message) == 2000
    assert len(error.error_type) == 200


async def test_credentials_in_an_error_body_are_masked_on_the_stream(
    served: tuple[str, MetricsCollector, Gate], publisher: RecordingPublisher
) -> None:
    url, _, _ = served
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json={"model": "leaky"})
    assert response.status_code == 502
    assert response.json()["error"]["message"] == LEAKY_ERROR  # the client's own answer is intact
    (record,) = _requests(publisher)
    masked = "key sk-live*** rejected (Bearer ***, api_key=***)"
    assert record.error_message == masked
    (error,) = [m.data for m in publisher.of_type(MessageType.ERROR_UPDATE)]
    assert error.error_message == masked
    for secret in ("0123456789abcdef", "abc.def.ghi", "s3cr3t"):
        assert all(secret not in encode(m).decode() for m in publisher.messages)


async def test_plain_requests_errors_and_exceptions_are_recorded(
    served: tuple[str, MetricsCollector, Gate], publisher: RecordingPublisher
) -> None:
    url, collector, _ = served
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/missing")).status_code == 404
        assert (await client.get("/items/1")).status_code == 200
        assert (await client.get("/items/2")).status_code == 200
        limited = await client.post("/v1/chat/completions", json={"model": "overloaded"})
        assert limited.status_code == 429
        assert (await client.get("/boom")).status_code == 500

    health, missing, _, _, overloaded, boom = _requests(publisher)
    assert (health.model, health.status, health.total_tokens) == ("http", "success", 0)
    assert (missing.status, missing.error_message) == ("error", "HTTP 404")
    # A failed completion is still attributed to the model that was asked for.
    assert (overloaded.model, overloaded.status) == ("overloaded", "error")
    assert overloaded.error_message == "Too many requests"
    assert (boom.status, boom.error_message) == ("error", "RuntimeError")

    errors = [m.data for m in publisher.of_type(MessageType.ERROR_UPDATE)]
    # Every failed request has its event, as through the proxy: a client
    # error is "low", a rate limit "medium", an exception "critical".
    assert [(e.error_type, e.severity) for e in errors] == [
        ("http_404", "low"),
        ("rate_limit_exceeded", "medium"),
        ("RuntimeError", "critical"),
    ]
    assert errors[0].request_id == missing.id
    assert errors[2].request_id == boom.id
    # Exception text and stack traces stay out of the stream by default.
    assert all("secret" not in encode(m).decode() for m in publisher.messages)
    assert errors[2].stack_trace is None

    snap = collector.snapshot()
    assert snap.metrics.total_requests == 6
    assert snap.metrics.error_rate == 50.0
    # Services are route templates; unmatched paths share one service.
    assert set(snap.costs.breakdown_by_service) == {
        "/health",
        "(unmatched)",
        "/items/{item_id}",
        "/v1/chat/completions",
        "/boom",
    }
    assert collector.in_flight == 0
    for message in publisher.messages:
        assert decode(encode(message)).data == message.data
    assert publisher.threads == {threading.get_ident()}


async def test_websocket_and_excluded_paths_pass_untouched(publisher: RecordingPublisher) -> None:
    collector = MetricsCollector(publisher, system_stats=False)
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    middleware = MetricsMiddleware(app, collector=collector, exclude_paths=["/metrics"])
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/metrics")).status_code == 204
        assert (await client.get("/other")).status_code == 204
    await middleware({"type": "lifespan"}, _never, _discard)
    assert seen == ["http", "http", "lifespan"]
    assert [r.model for r in _requests(publisher)] == ["http"]


async def _never() -> Any:
    raise AssertionError("not called")


async def _discard(message: Any) -> None:
    return None


async def test_stream_without_usage_is_estimated_from_content_events(
    served: tuple[str, MetricsCollector, Gate], publisher: RecordingPublisher
) -> None:
    url, _, _ = served
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/split-stream",
            json={"model": "asked", "messages": [{"role": "user", "content": "a" * 9}]},
        )
    assert response.text.count("data: ") == 5
    (message,) = publisher.of_type(MessageType.REQUEST_UPDATE)
    record = message.data
    assert record.streaming is True
    # The name the client asked for wins over the response's (the price
    # table and the reader know that one), as through the proxy.
    assert record.model == "asked"
    # Three content events; 9 characters of prompt at 4 a token: 3.
    assert (record.prompt_tokens, record.completion_tokens) == (3, 3)
    assert message.metadata == {"usage_estimated": True}


async def test_client_leaving_mid_stream_is_a_failed_request(
    served: tuple[str, MetricsCollector, Gate], publisher: RecordingPublisher
) -> None:
    url, collector, _ = served
    async with (
        httpx.AsyncClient(base_url=url) as client,
        client.stream(
            "POST", "/v1/chat/completions", json={"model": MODEL, "stream": True}
        ) as response,
    ):
        async with asyncio.timeout(scaled(10)):
            first = await anext(response.aiter_raw())
        assert b'"Hel"' in first
    # Leaving the block closed the connection with the stream half sent.
    await wait_until(lambda: len(_requests(publisher)) == 1, 10)
    (record,) = _requests(publisher)
    assert (record.status, record.error_message) == ("error", "client disconnected")
    assert record.streaming is True
    (error,) = [m.data for m in publisher.of_type(MessageType.ERROR_UPDATE)]
    assert (error.error_type, error.severity) == ("client_disconnected", "low")
    assert collector.in_flight == 0


async def test_oversized_json_is_passed_on_but_not_read(publisher: RecordingPublisher) -> None:
    collector = MetricsCollector(publisher, system_stats=False)
    body = json.dumps(
        {"model": MODEL, "usage": {"prompt_tokens": 5, "completion_tokens": 5}, "pad": "x" * 500}
    ).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body[:300], "more_body": True})
        await send({"type": "http.response.body", "body": body[300:]})

    middleware = MetricsMiddleware(app, collector=collector, max_body_bytes=256)
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/v1/chat/completions", json={"model": "requested"})
    assert response.content == body
    (record,) = _requests(publisher)
    assert (record.model, record.total_tokens, record.status) == ("requested", 0, "success")
