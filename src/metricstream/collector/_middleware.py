"""MetricsMiddleware: every request of an ASGI app, recorded by a collector."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

from ._collector import MetricsCollector
from ._exchange import (
    ASGIApp,
    Exchange,
    Message,
    Outcome,
    Receive,
    Scope,
    Send,
    decode_object,
    record_exchange,
)

__all__ = ["UNMATCHED", "MetricsMiddleware"]

logger = logging.getLogger(__name__)

#: Service of a request that matched no route (a 404 scan must not create
#: one service per probed path).
UNMATCHED: Final = "(unmatched)"


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


class MetricsMiddleware:
    """Pure ASGI middleware that records every HTTP request of the app it wraps.

    Add it with one line: ``app.add_middleware(MetricsMiddleware,
    collector=collector)``. Each request is recorded with its latency (until
    the app finished sending the response), its status (``error`` for an
    HTTP status >= 400 or an exception) and its path as the service. When the
    response is an OpenAI-style completion -- a JSON object with ``model`` and
    ``usage``, or a ``text/event-stream`` of ``chat.completion.chunk`` events
    -- the model (the one asked for, else the response's), prompt and
    completion tokens, streaming flag and time to first token are recorded
    too. A stream without a usage chunk counts its content events as
    completion tokens and estimates its prompt tokens from the request's
    text (published with ``usage_estimated``). The rules are the recording
    proxy's too (:func:`~metricstream.collector._exchange.record_exchange`).

    Streamed responses pass through chunk by chunk as the app sends them; only
    JSON bodies up to ``max_body_bytes`` are copied (not held back) to be read
    once complete. Requests that are not completions are recorded under
    ``default_model``. Every failed request (an exception, a status >= 400,
    an ``error`` in the response, a client that left) also publishes an
    ``error_update``; error texts are masked of credentials by the collector.
    An exception is described by its type only unless
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
        exchange = Exchange(self.max_body_bytes)
        capture = "json" in _header(headers, b"content-type").lower()
        request_body = bytearray()
        clock = self._clock
        started = clock()
        limit = self.max_body_bytes

        async def receive_wrapper() -> Message:
            message = await receive()
            if message.get("type") == "http.disconnect":
                exchange.disconnected = True
            elif capture and message.get("type") == "http.request" and len(request_body) <= limit:
                request_body.extend(message.get("body", b""))
            return message

        async def send_wrapper(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                exchange.start_response(
                    int(message.get("status", 0)),
                    _header(message.get("headers") or (), b"content-type"),
                )
            elif kind == "http.response.body":
                body = message.get("body", b"")
                if body:
                    exchange.feed(body, clock)
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
                self._record(scope, headers, exchange, bytes(request_body), started, failure)
            except Exception:
                # Metrics must never break the application they observe.
                logger.exception("recording a request failed")

    def _record(
        self,
        scope: Scope,
        headers: Iterable[tuple[bytes, bytes]],
        exchange: Exchange,
        request_body: bytes,
        started: float,
        failure: BaseException | None,
    ) -> None:
        finished = self._clock()
        request: dict[str, object] = {}
        if request_body and len(request_body) <= self.max_body_bytes:
            request = decode_object(request_body) or {}
        # The route's template ("/items/{id}") rather than the raw path keeps
        # the service breakdown small; Starlette's router leaves it in scope.
        route_path = getattr(scope.get("route"), "path", None)
        if isinstance(route_path, str) and route_path:
            service = route_path
        elif exchange.status == 404:
            service = UNMATCHED
        else:
            service = str(scope.get("path") or "/")
        # A client that left before the response was complete: the request
        # failed, but through no fault of the app.
        outcome: Outcome = "ok"
        if exchange.disconnected and not exchange.complete:
            outcome, failure = "cancelled", None
        record_exchange(
            self.collector,
            exchange,
            request=request,
            started=started,
            finished=finished,
            service=service,
            endpoint=service,
            default_model=self.default_model,
            outcome=outcome,
            failure=failure,
            expose_exception_details=self.expose_exception_details,
            request_id=_header(headers, b"x-request-id") or None,
            organization=_header(headers, b"openai-organization") or None,
        )
