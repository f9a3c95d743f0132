"""RecordingProxy: an OpenAI-compatible reverse proxy that records every request.

The relay path deals in bytes only: the request body goes upstream as the
client sent it, the upstream's status, headers and body come back as they
arrive, piece by piece (``aiter_raw``: no decoding, no buffering), through
the proxy's own pooled HTTP/1.1 client (:mod:`._upstream`). Recording
reads a copy of what passes and runs behind guards, so a recording bug is
logged and can never turn a response into a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import httpx
import msgspec

from ..collector import MetricsCollector
from ..collector._exchange import (
    ASGIApp,
    Exchange,
    Message,
    Outcome,
    Receive,
    Scope,
    Send,
    record_exchange,
)
from ..exceptions import ConfigError
from ._upstream import (
    UpstreamBrokenError,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)

__all__ = [
    "HOP_BY_HOP",
    "RecordingProxy",
    "upstream_client",
]

logger = logging.getLogger(__name__)

#: Connection-specific header fields (RFC 9110 §7.6.1, plus the
#: ``Proxy-Connection`` and ``Keep-Alive`` of older clients): they describe
#: one hop and are never forwarded. Fields named in ``Connection`` are dropped too.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by each hop for itself: the client writes the upstream's Host and the
# length of the (same) body; uvicorn frames the response to the client.
# ``Expect: 100-continue`` was answered by this hop, which has read the whole
# body before forwarding it: the upstream has nothing left to agree to.
_REQUEST_DROP: Final = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
_RESPONSE_DROP: Final = HOP_BY_HOP

_MAX_NAME: Final = 200
# Bytes of one upstream's model list read for merging (a list is a few KiB).
_MAX_LISTING: Final = 16 << 20
_json: Final = msgspec.json.Decoder()
_encode: Final = msgspec.json.Encoder()


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return named


def _forwardable(
    headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    headers = list(headers)
    named = _connection_tokens(headers)
    return [(k, v) for k, v in headers if (lk := k.lower()) not in drop and lk not in named]


def upstream_client(
    *,
    connect_timeout: float = 10.0,
    read_timeout: float | None = 600.0,
    max_connections: int | None = 1000,
    max_keepalive: int = 200,
) -> UpstreamClient:
    """The pooled HTTP client a :class:`RecordingProxy` sends with.

    ``read_timeout`` bounds the wait for each piece of the response
    (a model may think for minutes before its first token). The client
    keeps no cookies (they belong to the proxy's clients), follows no
    redirects and adds no header of its own.
    """
    return UpstreamClient(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_connections=max_connections,
        max_keepalive=max_keepalive,
    )


def _error_body(status: int, kind: str, message: str) -> bytes:
    return _encode.encode(
        {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
    )


class _Inspector:
    """A copy of the response, decompressed when needed, fed to an Exchange."""

    __slots__ = ("decompress", "enabled", "exchange", "limit")

    def __init__(self, exchange: Exchange, encoding: str, limit: int) -> None:
        self.exchange = exchange
        self.limit = limit
        self.enabled = True
        self.decompress: Any = None
        if encoding in ("gzip", "x-gzip", "deflate"):
            # 32 + 15: zlib or gzip framing, whichever the upstream used.
            self.decompress = zlib.decompressobj(47)
        elif encoding not in ("", "identity"):
            self.enabled = False  # br, zstd: recorded without tokens

    def feed(self, chunk: bytes, clock: Callable[[], float]) -> None:
        if self.decompress is not None:
            chunk = self.decompress.decompress(chunk, self.limit)
        self.exchange.feed(chunk, clock)


class _Request:
    """What the proxy learns about one request, for recording."""

    __slots__ = (
        "_decoded",
        "body",
        "exchange",
        "inspector",
        "organization",
        "outcome",
        "path",
        "request_id",
        "started",
    )

    def __init__(self, path: str, body: bytes, started: float, limit: int) -> None:
        self.path = path
        self.body = body
        self.started = started
        self.exchange = Exchange(limit)
        self.inspector: _Inspector | None = None
        self.outcome: Outcome = "ok"
        self.request_id: str | None = None
        self.organization: str | None = None
        self._decoded: dict[str, Any] | None = None

    def request(self) -> dict[str, Any]:
        """The request's JSON object, decoded once; empty when it is not one."""
        if self._decoded is None:
            decoded: object = None
            if self.body[:1] == b"{":
                try:
                    decoded = _json.decode(self.body)
                except msgspec.DecodeError:
                    decoded = None
            self._decoded = decoded if isinstance(decoded, dict) else {}
        return self._decoded


def base_url(upstream: str) -> str:
    """``upstream`` without a trailing ``/`` or ``/v1``; ConfigError unless it is an http(s) URL."""
    base = upstream.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    try:
        url = httpx.URL(base)
    except httpx.InvalidURL:
        url = httpx.URL("invalid:")
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"the upstream must be an http(s) URL, got {upstream!r}")
    return base


class RecordingProxy:
    """ASGI app: ``/v1/...`` is proxied to ``upstream`` and recorded; the
    rest goes to ``app`` (the stream server with its dashboard).

    ``upstream`` is the upstream server's base URL, such as
    ``http://vllm:8000``; a trailing ``/v1`` is ignored (the client's own
    path, ``/v1/...``, is appended). ``routes`` maps model names to other
    upstreams: a request whose JSON body names one of them goes there, any
    other to ``upstream``; without ``upstream``, a request naming no model
    (``GET /v1/models``) goes to the first route's and one naming an unknown
    model is answered 404 ``model_not_found``. ``client`` is the pooled
    :class:`~metricstream.proxy.UpstreamClient` to send with (see :func:`upstream_client`;
    the caller closes it). Each request is recorded on ``collector``: see
    docs/proxy.md for what is measured and how.

    ``max_capture_bytes`` bounds the copy of a JSON response kept to read its
    usage; larger responses still pass through whole, recorded without tokens.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        upstream: str | None,
        collector: MetricsCollector,
        client: UpstreamClient,
        routes: Mapping[str, str] | None = None,
        max_capture_bytes: int = 4 << 20,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.routes = {model: base_url(url) for model, url in (routes or {}).items()}
        if upstream is None and not self.routes:
            raise ConfigError("give an upstream URL, or routes of models to upstream URLs")
        self.app = app
        self.upstream = base_url(upstream) if upstream is not None else None
        self.collector = collector
        self.client = client
        self.max_capture_bytes = max_capture_bytes
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        if scope["type"] == "http":
            path: str = scope["path"]
            # Behind a reverse proxy that strips a prefix (``--root-path``),
            # the ASGI server puts the prefix back in front of ``path``: the
            # upstream is asked for the path the client named, without it.
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            if path.startswith("/v1/") or path == "/v1":
                await self._proxy(scope, receive, send, path)
                return
        await self.app(scope, receive, send)

    # --- relay -------------------------------------------------------------

    def _route(self, state: _Request) -> str | None:
        """The upstream for this request's model; None when it names an unknown one."""
        model = state.request().get("model")
        if isinstance(model, str) and model:
            route = self.routes.get(model)
            if route is not None:
                return route
            return self.upstream
        return self.upstream if self.upstream is not None else next(iter(self.routes.values()))

    async def _unrouted(self, state: _Request, send: Send) -> None:
        model = state.request().get("model")
        await self._answer(
            send,
            404,
            "model_not_found",
            f"no upstream serves the model {str(model)[:_MAX_NAME]!r}",
        )
        state.exchange.status = 404
        state.exchange.error_message = "no upstream serves this model"
        state.exchange.error_type = "model_not_found"
        self._guard(self._record, state, self._clock())

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        started = self._clock()
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before it finished asking: nothing was sent upstream
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        state = _Request(path, body, started, self.max_capture_bytes)
        for key, value in scope["headers"]:
            if key.lower() == b"openai-organization":
                state.organization = value.decode("latin-1")
        base = self.upstream
        if self.routes:
            base = self._route(state)
            if base is None:
                await self._unrouted(state, send)
                return
        assert base is not None
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        root_bytes = scope.get("root_path", "").encode("latin-1")
        if root_bytes and raw_path.startswith(root_bytes):
            raw_path = raw_path[len(root_bytes) :]
        query: bytes = scope.get("query_string", b"")
        target = raw_path + b"?" + query if query else raw_path
        upstream = (
            scope["method"].encode("latin-1"),
            base,
            target,
            _forwardable(scope["headers"], _REQUEST_DROP),
            body,
        )

        task = asyncio.current_task()
        assert task is not None
        done = False
        gone = False

        def on_receive(watch: asyncio.Future[Message]) -> None:
            nonlocal gone
            # Once the response is complete uvicorn answers receive() with a
            # disconnect too: only one that comes first is the client leaving.
            if done or state.exchange.complete or watch.cancelled() or watch.exception():
                return
            if watch.result().get("type") == "http.disconnect":
                gone = True
                task.cancel()

        watcher: asyncio.Future[Message] = asyncio.ensure_future(_disconnect(receive))
        watcher.add_done_callback(on_receive)
        self._guard(self.collector.request_started)
        try:
            if self.routes and path == "/v1/models" and scope["method"] == "GET":
                await self._merge_models(upstream, state, send)
            else:
                await self._relay(upstream, state, send)
            done = True
        except asyncio.CancelledError:
            done = True
            if not gone:
                raise
            # The client left: cancelling the relay closed the upstream
            # request; the request is recorded as cancelled, not raised.
            task.uncancel()
            state.outcome = "cancelled"
        except BaseException:
            done = True
            raise
        finally:
            watcher.cancel()
            self._guard(self.collector.request_finished)
            self._guard(self._record, state, self._clock())

    async def _relay(
        self,
        upstream: tuple[bytes, str, bytes, list[tuple[bytes, bytes]], bytes],
        state: _Request,
        send: Send,
    ) -> None:
        try:
            response = await self.client.send(*upstream)
        except UpstreamTimeoutError as exc:
            state.outcome = "timeout"
            await self._answer(
                send, 504, "upstream_timeout", f"the upstream did not answer in time ({exc})"
            )
            state.exchange.complete = True
            return
        except UpstreamUnreachableError as exc:
            state.outcome = "unreachable"
            await self._answer(
                send, 502, "upstream_unreachable", f"the upstream could not be reached ({exc})"
            )
            state.exchange.complete = True
            return
        try:
            exchange = state.exchange
            exchange.status = response.status_code
            state.request_id = response.header("x-request-id") or None
            self._guard(self._start_inspection, state, response)
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": _forwardable(response.headers, _RESPONSE_DROP),
                }
            )
            # Each piece is everything that arrived since the last one was
            # taken: while the client's write is in progress, the upstream is
            # still read, and what came meanwhile leaves in the next write.
            # Nothing waits for more, so the client sees the upstream's
            # timing; a slow client holds the pieces back, and past the
            # client's buffer bound reading from the upstream pauses.
            # The last piece carries the end of the body: one write fewer
            # when the answer arrived whole.
            last = False
            try:
                async for chunk in response.aiter_raw():
                    self._inspect(state, chunk)
                    last = response.finished
                    await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            except UpstreamBrokenError:
                # The upstream broke off mid-response: the status is sent, so
                # the only honest thing left is to break the client's
                # connection too (uvicorn closes it on the exception), rather
                # than end a truncated body as if it were complete.
                state.outcome = "broken"
                raise
            if not last:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            exchange.complete = True
        finally:
            await response.aclose()

    async def _merge_models(
        self,
        upstream: tuple[bytes, str, bytes, list[tuple[bytes, bytes]], bytes],
        state: _Request,
        send: Send,
    ) -> None:
        """``GET /v1/models`` with routes: one list of the models each
        upstream would be sent, asked of every upstream at once.

        Each upstream contributes the models the proxy routes to it (the
        default upstream: every model no route names). The upstream that
        would have answered alone (the default, else the first route's) is
        the reference: when it fails or does not answer with a model list,
        its answer passes through unchanged, as without merging; an other
        upstream that fails is left out of the list (and logged).
        """
        method, primary, target, headers, body = upstream
        # The answers are read here, so they must come uncompressed.
        headers = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
        bases = list(dict.fromkeys([primary, *self.routes.values()]))
        results = await asyncio.gather(
            *(self._fetch(method, base, target, headers, body) for base in bases),
            return_exceptions=True,
        )
        first = results[0]
        if isinstance(first, BaseException):
            if isinstance(first, UpstreamTimeoutError):
                state.outcome = "timeout"
                await self._answer(
                    send, 504, "upstream_timeout", f"the upstream did not answer in time ({first})"
                )
            elif isinstance(first, UpstreamError):
                state.outcome = "unreachable"
                await self._answer(
                    send,
                    502,
                    "upstream_unreachable",
                    f"the upstream could not be reached ({first})",
                )
            else:
                raise first
            state.exchange.complete = True
            return
        response, answer = first
        state.exchange.status = response.status_code
        listing = _model_list(answer) if response.status_code == 200 else None
        if listing is None:
            self._guard(self._start_inspection, state, response)
            self._inspect(state, answer)
            headers = _forwardable(response.headers, _RESPONSE_DROP)
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(answer)).encode()))
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            await send({"type": "http.response.body", "body": answer, "more_body": False})
            state.exchange.complete = True
            return
        merged: list[dict[str, Any]] = []
        seen: set[str] = set()
        for base, result in zip(bases, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, UpstreamError):
                    raise result
                logger.warning("listing the models of %s failed: %s", base, result)
                continue
            models = listing if result is first else None
            if models is None:
                if result[0].status_code == 200:
                    models = _model_list(result[1])
                if models is None:
                    logger.warning(
                        "%s answered /v1/models with HTTP %d and no model list",
                        base,
                        result[0].status_code,
                    )
                    continue
            for entry in models:
                name = entry.get("id")
                # Listed where a request naming it would go, once.
                if (
                    isinstance(name, str)
                    and name not in seen
                    and self.routes.get(name, self.upstream) == base
                ):
                    seen.add(name)
                    merged.append(entry)
        answer = _encode.encode({"object": "list", "data": merged})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer, "more_body": False})
        state.exchange.complete = True

    async def _fetch(
        self,
        method: bytes,
        base: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> tuple[UpstreamResponse, bytes]:
        """A whole (small) answer: at most ``_MAX_LISTING`` bytes."""
        response = await self.client.send(method, base, target, headers, body)
        try:
            pieces: list[bytes] = []
            size = 0
            async for piece in response.aiter_raw():
                size += len(piece)
                if size > _MAX_LISTING:
                    raise UpstreamBrokenError(f"a model list larger than {_MAX_LISTING} bytes")
                pieces.append(piece)
        finally:
            await response.aclose()
        return response, b"".join(pieces)

    def _inspect(self, state: _Request, chunk: bytes) -> None:
        inspector = state.inspector
        if inspector is not None and inspector.enabled:
            try:
                inspector.feed(chunk, self._clock)
            except Exception:
                inspector.enabled = False
                logger.exception("reading a response for its metrics failed")

    @staticmethod
    async def _answer(send: Send, status: int, kind: str, message: str) -> None:
        body = _error_body(status, kind, message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    # --- recording (never on the relay's failure path) -----------------------

    @staticmethod
    def _guard(function: Callable[..., object], *args: Any) -> None:
        try:
            function(*args)
        except Exception:
            logger.exception("recording a proxied request failed")

    def _start_inspection(self, state: _Request, response: UpstreamResponse) -> None:
        exchange = state.exchange
        exchange.start_response(response.status_code, response.header("content-type"))
        if not exchange.response_kind:
            return
        encoding = response.header("content-encoding").strip().lower()
        state.inspector = _Inspector(exchange, encoding, self.max_capture_bytes)

    def _record(self, state: _Request, finished: float) -> None:
        record_exchange(
            self.collector,
            state.exchange,
            request=state.request(),
            started=state.started,
            finished=finished,
            service=state.path,
            endpoint=state.path,
            default_model="(none)",
            outcome=state.outcome,
            request_id=state.request_id,
            organization=state.organization,
        )


async def _disconnect(receive: Receive) -> Message:
    """The next ``http.disconnect`` (the body is already read: anything else is skipped)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return message


def _model_list(body: bytes) -> list[dict[str, Any]] | None:
    """The entries of an OpenAI model list (``{"object": "list", "data": [...]}``), or None."""
    try:
        obj = _json.decode(body)
    except msgspec.DecodeError:
        return None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        return None
    return [entry for entry in data if isinstance(entry, dict)]
