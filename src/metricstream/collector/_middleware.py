"""MetricsMiddleware: every request of an ASGI app, recorded by a collector."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final

import msgspec

from ._collector import MetricsCollector

__all__ = ["UNMATCHED", "MetricsMiddleware"]

logger = logging.getLogger(__name__)

# The ASGI types, spelled out so this module needs no web framework.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_json: Final = msgspec.json.Decoder()
_MAX_SSE_LINE: Final = 1 << 20
# Names taken from request or response bodies are cut to this length: they
# end up in every client's stream.
_MAX_NAME: Final = 200
# Texts taken from responses and exceptions go into every client's stream
# too; past these lengths they are cut (a stack trace keeps its end, where
# the error is).
_MAX_MESSAGE: Final = 2000
_MAX_TRACE: Final = 8000
# Inter-token gaps kept per stream for its percentiles; a longer stream keeps
# its running mean exact and its percentiles over the first gaps only.
_MAX_GAPS: Final = 65536
#: Service of a request that matched no route (a 404 scan must not create
#: one service per probed path).
UNMATCHED: Final = "(unmatched)"


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _decode_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = _json.decode(data)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class _Exchange:
    """What one request/response pair revealed, gathered as its bytes pass."""

    __slots__ = (
        "complete",
        "completion_tokens",
        "content_events",
        "disconnected",
        "error_message",
        "error_type",
        "finish_reason",
        "first_token_at",
        "gap_count",
        "gap_sum",
        "gaps",
        "last_token_at",
        "model",
        "prompt_tokens",
        "request_body",
        "request_capture",
        "request_id",
        "response_body",
        "response_kind",
        "sse_tail",
        "status",
        "usage_seen",
    )

    def __init__(self, capture_request: bool) -> None:
        self.request_capture = capture_request
        self.request_body = bytearray()
        self.status = 0
        self.complete = False  # the last body chunk was sent
        self.disconnected = False  # the client went away
        self.response_kind = ""  # "json", "sse" or "" (anything else)
        self.response_body: bytearray | None = None
        self.sse_tail = b""
        self.model: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.usage_seen = False
        self.content_events = 0
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.gaps: list[float] = []
        self.gap_count = 0
        self.gap_sum = 0.0
        self.finish_reason: str | None = None
        self.request_id: str | None = None
        self.error_message: str | None = None
        self.error_type: str | None = None

    def take_completion(self, obj: dict[str, Any]) -> bool:
        """Read an OpenAI-style completion (or chunk); whether it had content."""
        model = obj.get("model")
        if isinstance(model, str) and model:
            self.model = model
        ident = obj.get("id")
        if self.request_id is None and isinstance(ident, str) and ident:
            self.request_id = ident
        usage = obj.get("usage")
        if isinstance(usage, dict):
            prompt = _count(usage.get("prompt_tokens"))
            completion = _count(usage.get("completion_tokens"))
            if prompt is not None:
                self.prompt_tokens = prompt
                self.completion_tokens = completion or 0
                self.usage_seen = True
        error = obj.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            self.error_message = message[:_MAX_MESSAGE] if isinstance(message, str) else "error"
            etype = error.get("type") or error.get("code")
            if isinstance(etype, str) and etype:
                self.error_type = etype[:_MAX_NAME]
        has_content = False
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                reason = choice.get("finish_reason")
                if isinstance(reason, str) and reason:
                    self.finish_reason = reason[:_MAX_NAME]
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    # Reasoning models stream their thinking before any content:
                    # it is output the client waits for, so it counts as a token.
                    text = delta.get("content") or delta.get("reasoning_content")
                    if not text and delta.get("tool_calls"):
                        text = "tool_calls"
                else:
                    text = choice.get("text")
                if isinstance(text, str) and text:
                    has_content = True
        return has_content

    def feed_sse(self, body: bytes, now: Callable[[], float]) -> None:
        """Read the ``data:`` events of one more piece of an event stream.

        ``now`` is read once per piece that carries content: every event of
        one piece arrived at the same moment, so only the first of them
        starts a gap (the rest are zero-length gaps, which is what the client
        saw too).
        """
        data = self.sse_tail + body
        lines = data.split(b"\n")
        tail = lines.pop()
        self.sse_tail = tail if len(tail) <= _MAX_SSE_LINE else b""
        at: float | None = None
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            obj = _decode_object(payload)
            if obj is None:
                continue
            if self.take_completion(obj):
                self.content_events += 1
                if at is None:
                    at = now()
                last = self.last_token_at
                if last is None:
                    self.first_token_at = at
                else:
                    gap = (at - last) * 1000
                    self.gap_count += 1
                    self.gap_sum += gap
                    if len(self.gaps) < _MAX_GAPS:
                        self.gaps.append(gap)
                self.last_token_at = at

    def timings(self, started: float) -> tuple[float | None, list[float] | None, float | None]:
        """TTFT (ms from ``started``), the inter-token gaps (ms) and their mean."""
        if self.first_token_at is None:
            return None, None, None
        ttft = max(0.0, (self.first_token_at - started) * 1000)
        if not self.gap_count:
            return ttft, None, None
        return ttft, self.gaps, max(0.0, self.gap_sum / self.gap_count)


class MetricsMiddleware:
    """Pure ASGI middleware that records every HTTP request of the app it wraps.

    Add it with one line: ``app.add_middleware(MetricsMiddleware,
    collector=collector)``. Each request is recorded with its latency (until
    the app finished sending the response), its status (``error`` for an
    HTTP status >= 400 or an exception) and its path as the service. When the
    response is an OpenAI-style completion -- a JSON object with ``model`` and
    ``usage``, or a ``text/event-stream`` of ``chat.completion.chunk`` events
    -- the model, prompt and completion tokens, streaming flag and time to
    first token are recorded too. A stream without a usage chunk counts its
    content events as completion tokens (an estimate: one token per event).

    Streamed responses pass through chunk by chunk as the app sends them; only
    JSON bodies up to ``max_body_bytes`` are copied (not held back) to be read
    once complete. Requests that are not completions are recorded under
    ``default_model``. Exceptions and 5xx/429 responses also publish an
    ``error_update``. An exception is described by its type only unless
    ``expose_exception_details=True`` adds its message and stack trace: the
    stream may be public, and exception text often holds internal details.
    WebSocket and lifespan traffic, and paths in ``exclude_paths``, pass
    untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        collector: MetricsCollector,
        default_model: str = "http",
        exclude_paths: Iterable[str] = (),
        max_body_bytes: int = 1 << 20,
        expose_exception_details: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.collector = collector
        self.default_model = default_model
        self.exclude_paths = frozenset(exclude_paths)
        self.max_body_bytes = max_body_bytes
        self.expose_exception_details = expose_exception_details
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        if scope["type"] != "http" or scope.get("path") in self.exclude_paths:
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or ()
        exchange = _Exchange(capture_request="json" in _header(headers, b"content-type").lower())
        clock = self._clock
        started = clock()
        limit = self.max_body_bytes

        async def receive_wrapper() -> Message:
            message = await receive()
            if message.get("type") == "http.disconnect":
                exchange.disconnected = True
            elif (
                exchange.request_capture
                and message.get("type") == "http.request"
                and len(exchange.request_body) <= limit
            ):
                exchange.request_body += message.get("body", b"")
            return message

        async def send_wrapper(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                exchange.status = int(message.get("status", 0))
                content_type = _header(message.get("headers") or (), b"content-type").lower()
                if "text/event-stream" in content_type:
                    exchange.response_kind = "sse"
                elif "json" in content_type:
                    exchange.response_kind = "json"
                    exchange.response_body = bytearray()
            elif kind == "http.response.body":
                body = message.get("body", b"")
                if body:
                    self._inspect_body(exchange, body, clock)
                if not message.get("more_body", False):
                    exchange.complete = True
            try:
                await send(message)
            except OSError:
                exchange.disconnected = True
                raise

        self.collector.request_started()
        failure: BaseException | None = None
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:
            failure = exc
            raise
        finally:
            self.collector.request_finished()
            try:
                self._record(scope, headers, exchange, clock() - started, started, failure)
            except Exception:
                # Metrics must never break the application they observe.
                logger.exception("recording a request failed")

    def _inspect_body(self, exchange: _Exchange, body: bytes, clock: Callable[[], float]) -> None:
        if exchange.response_kind == "json":
            buffer = exchange.response_body
            if buffer is not None:
                if len(buffer) + len(body) > self.max_body_bytes:
                    exchange.response_body = None  # too big to be a completion worth reading
                else:
                    buffer += body
        elif exchange.response_kind == "sse":
            exchange.feed_sse(body, clock)

    def _record(
        self,
        scope: Scope,
        headers: Iterable[tuple[bytes, bytes]],
        exchange: _Exchange,
        elapsed: float,
        started: float,
        failure: BaseException | None,
    ) -> None:
        status = exchange.status or 500
        if exchange.response_kind == "json" and exchange.response_body:
            obj = _decode_object(bytes(exchange.response_body))
            if obj is not None:
                exchange.take_completion(obj)
        request: dict[str, Any] = {}
        if exchange.request_body and len(exchange.request_body) <= self.max_body_bytes:
            request = _decode_object(bytes(exchange.request_body)) or {}
        model = exchange.model
        if model is None:
            requested = request.get("model")
            model = requested if isinstance(requested, str) and requested else self.default_model
        model = model[:_MAX_NAME]
        streaming = exchange.response_kind == "sse"
        completion_tokens = exchange.completion_tokens
        if streaming and not exchange.usage_seen:
            completion_tokens = exchange.content_events
        # The route's template ("/items/{id}") rather than the raw path keeps
        # the service breakdown small; Starlette's router leaves it in scope.
        route_path = getattr(scope.get("route"), "path", None)
        if isinstance(route_path, str) and route_path:
            service = route_path
        elif status == 404:
            service = UNMATCHED
        else:
            service = str(scope.get("path") or "/")
        request_id = (exchange.request_id or _header(headers, b"x-request-id") or "")[:_MAX_NAME]
        user = request.get("user")
        organization = _header(headers, b"openai-organization") or None

        # A client that left before the response was complete: the request
        # failed, but through no fault of the server.
        gone = exchange.disconnected and not exchange.complete
        if gone:
            failure = None
        failed = gone or failure is not None or status >= 400 or exchange.error_message is not None
        error_message: str | None = None
        if failed:
            if gone:
                error_message = "client disconnected"
            elif failure is not None:
                error_message = type(failure).__name__
                if self.expose_exception_details and str(failure):
                    error_message = f"{error_message}: {failure}"[:_MAX_MESSAGE]
            else:
                error_message = exchange.error_message or f"HTTP {status}"
        ttft_ms: float | None = None
        gaps: list[float] | None = None
        itl_mean: float | None = None
        if streaming:
            ttft_ms, gaps, itl_mean = exchange.timings(started)
            if gaps is not None and exchange.gap_count > len(gaps):
                # Percentiles over the kept gaps, the mean over all of them.
                gaps = None
        recorded = self.collector.record_request(
            model,
            exchange.prompt_tokens,
            completion_tokens,
            max(0.0, elapsed * 1000),
            streaming=streaming,
            status="error" if failed else "success",
            error_message=error_message,
            user_id=user[:_MAX_NAME] if isinstance(user, str) and user else None,
            organization_id=organization[:_MAX_NAME] if organization else None,
            ttft_ms=ttft_ms,
            request_id=request_id or None,
            service=service,
            itl_ms=itl_mean,
            itl_samples_ms=gaps,
            finish_reason=exchange.finish_reason,
            endpoint=service,
        )
        if gone:
            self.collector.record_error(
                "client_disconnected",
                "client disconnected before the response was complete",
                model=model,
                severity="low",
                request_id=recorded.id,
            )
        elif failure is not None:
            self.collector.record_error(
                type(failure).__name__,
                error_message or type(failure).__name__,
                model=model,
                severity="critical",
                request_id=recorded.id,
                stack_trace=(
                    "".join(traceback.format_exception(failure))[-_MAX_TRACE:]
                    if self.expose_exception_details
                    else None
                ),
            )
        elif status >= 500 or status == 429:
            self.collector.record_error(
                exchange.error_type
                or ("rate_limit_exceeded" if status == 429 else f"http_{status}"),
                error_message or f"HTTP {status}",
                model=model,
                severity="medium" if status == 429 else "high",
                request_id=recorded.id,
            )
