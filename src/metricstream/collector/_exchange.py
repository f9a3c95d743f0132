"""One request/response pair, read as it passes and recorded by one set of rules.

Both recording paths -- :class:`~metricstream.collector.MetricsMiddleware`
inside an ASGI app and the recording proxy in front of an upstream -- feed
the bytes they relay to an :class:`Exchange` and hand it to
:func:`record_exchange` once the response is over. What a recorded request
says (its model, tokens, status, error event) therefore does not depend on
which path saw it; only what really differs is passed in: how the exchange
ended (``outcome``), its service and endpoint, the model to use when none
is known.

Reading is cheap on purpose: each server-sent event is decoded straight into
small typed structs holding only the fields used (unknown fields are
skipped by the decoder, never built into dicts), with one reused decoder.
An event that is not a JSON object of the expected shape is skipped and
counted, never an error: the response itself is never touched.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final, Literal

import msgspec

from ..protocol.messages import ErrorSeverity
from ._collector import MetricsCollector

__all__ = [
    "ASGIApp",
    "Exchange",
    "Message",
    "Outcome",
    "Receive",
    "Scope",
    "Send",
    "decode_object",
    "record_exchange",
]

logger = logging.getLogger(__name__)

# The ASGI types, spelled out so that recording needs no web framework.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: How an exchange ended, besides its HTTP status: ``ok`` (a response was
#: relayed whole), ``cancelled`` (the client left first), or, for a proxy,
#: ``timeout``, ``unreachable`` or ``broken`` (the upstream failed).
Outcome = Literal["ok", "cancelled", "timeout", "unreachable", "broken"]

_OUTCOME_MESSAGES: Final[Mapping[str, str]] = {
    "cancelled": "client disconnected",
    "timeout": "upstream timed out",
    "unreachable": "upstream unreachable",
    "broken": "upstream connection lost mid-response",
}

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
# Characters per token when the response reported no usage (a rough,
# widely used rule of thumb for English text).
_CHARS_PER_TOKEN: Final = 4


# --- the fields read from an OpenAI-style completion or chunk ---------------
# gc=False: they hold strings, numbers and each other, never a cycle, so the
# garbage collector need not track the few thousand made per second.


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None
    # Only whether there are any matters: the calls stay undecoded.
    tool_calls: list[msgspec.Raw] | None = None


class _Choice(msgspec.Struct, gc=False):
    finish_reason: str | None = None
    delta: _Delta | None = None
    text: str | None = None


class _Error(msgspec.Struct, gc=False):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class _Completion(msgspec.Struct, gc=False):
    id: str | None = None
    model: str | None = None
    usage: _Usage | None = None
    choices: list[_Choice] | None = None
    error: _Error | str | None = None


_completion: Final = msgspec.json.Decoder(_Completion)
_any: Final = msgspec.json.Decoder()


def decode_object(data: bytes) -> dict[str, Any] | None:
    """``data`` as a JSON object, or None when it is not one."""
    try:
        value = _any.decode(data)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


class Exchange:
    """What one request/response pair revealed, gathered as its bytes pass.

    Call :meth:`start_response` with the response's content type, then
    :meth:`feed` with each piece of its (decoded) body; ``complete`` and
    ``disconnected`` are set by the caller. ``limit`` bounds the copy of a
    JSON body kept to read its usage.
    """

    __slots__ = (
        "bad_events",
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
        "limit",
        "model",
        "prompt_tokens",
        "request_id",
        "response_body",
        "response_kind",
        "sse_tail",
        "status",
        "usage_seen",
    )

    def __init__(self, limit: int) -> None:
        self.limit = limit
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
        self.bad_events = 0  # events that were not a completion chunk, skipped
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.gaps: list[float] = []
        self.gap_count = 0
        self.gap_sum = 0.0
        self.finish_reason: str | None = None
        self.request_id: str | None = None
        self.error_message: str | None = None
        self.error_type: str | None = None

    def start_response(self, status: int, content_type: str) -> None:
        """Note the response's status and how its body will be read."""
        self.status = status
        content_type = content_type.lower()
        if "text/event-stream" in content_type:
            self.response_kind = "sse"
        elif "json" in content_type:
            self.response_kind = "json"
            self.response_body = bytearray()

    def feed(self, body: bytes, now: Callable[[], float]) -> None:
        """Read one more piece of the response body."""
        if self.response_kind == "sse":
            self.feed_sse(body, now)
        elif self.response_kind == "json":
            buffer = self.response_body
            if buffer is not None:
                if len(buffer) + len(body) > self.limit:
                    self.response_body = None  # too big to be a completion worth reading
                else:
                    buffer += body

    def take_completion(self, completion: _Completion) -> bool:
        """Read an OpenAI-style completion (or chunk); whether it had content."""
        model = completion.model
        if model:
            self.model = model
        ident = completion.id
        if self.request_id is None and ident:
            self.request_id = ident
        usage = completion.usage
        if usage is not None:
            prompt = usage.prompt_tokens
            if prompt is not None and prompt >= 0:
                completion_tokens = usage.completion_tokens or 0
                self.prompt_tokens = prompt
                self.completion_tokens = max(0, completion_tokens)
                self.usage_seen = True
        error = completion.error
        if error is not None:
            if isinstance(error, str):
                self.error_message = error[:_MAX_MESSAGE] or "error"
            else:
                self.error_message = (error.message or "error")[:_MAX_MESSAGE]
                etype = error.type or error.code
                if isinstance(etype, str) and etype:
                    self.error_type = etype[:_MAX_NAME]
        has_content = False
        for choice in completion.choices or ():
            reason = choice.finish_reason
            if reason:
                self.finish_reason = reason[:_MAX_NAME]
            delta = choice.delta
            if delta is not None:
                # Reasoning models stream their thinking before any content:
                # it is output the client waits for, so it counts as a token.
                if delta.content or delta.reasoning_content or delta.tool_calls:
                    has_content = True
            elif choice.text:
                has_content = True
        return has_content

    def read_body(self) -> None:
        """Read the kept JSON body, once the response is over."""
        if self.response_kind == "json" and self.response_body:
            try:
                completion = _completion.decode(self.response_body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return  # not a completion: recorded without tokens
            self.take_completion(completion)

    def feed_sse(self, body: bytes, now: Callable[[], float]) -> None:
        """Read the ``data:`` events of one more piece of an event stream.

        ``now`` is read once per piece that carries content: every event of
        one piece arrived at the same moment, so only the first of them
        starts a gap (the rest are zero-length gaps, which is what the client
        saw too).
        """
        data = self.sse_tail + body if self.sse_tail else body
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
            try:
                completion = _completion.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.bad_events += 1
                continue
            if self.take_completion(completion):
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


def estimate_prompt_tokens(request: Mapping[str, Any]) -> int:
    """Prompt tokens from the request's text, at ~4 characters a token."""
    chars = 0
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    text = part.get("text") if isinstance(part, dict) else None
                    if isinstance(text, str):
                        chars += len(text)
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        chars += sum(len(p) for p in prompt if isinstance(p, str))
    return -(-chars // _CHARS_PER_TOKEN)


def _name(value: object) -> str | None:
    return value[:_MAX_NAME] if isinstance(value, str) and value else None


def record_exchange(
    collector: MetricsCollector,
    exchange: Exchange,
    *,
    request: Mapping[str, Any],
    started: float,
    finished: float,
    service: str,
    endpoint: str,
    default_model: str,
    outcome: Outcome = "ok",
    failure: BaseException | None = None,
    expose_exception_details: bool = False,
    request_id: str | None = None,
    organization: str | None = None,
) -> None:
    """Record one finished exchange on ``collector`` (and its error event, if any).

    ``request`` is the request's JSON object (empty when it was none);
    ``started``/``finished`` are clock readings; ``failure`` is the exception
    the app raised, if it did; ``request_id`` is used when the response named
    none. The rules (docs/collector.md, "What a recorded request says"):

    - the model is the one the client asked for, else the response's, else
      ``default_model``;
    - a stream without a usage chunk counts its content events as completion
      tokens and estimates its prompt tokens from the request's text, and is
      published with ``usage_estimated``;
    - a request failed when it ended other than ``ok``, the app raised, the
      status is >= 400 or the response carried an ``error``; every failure
      publishes an ``error_update``: ``critical`` for an exception, ``high``
      for a 5xx, an upstream failure or an error inside a successful
      response, ``medium`` for 429, ``low`` for another 4xx or a client that
      left.
    """
    exchange.read_body()
    if exchange.bad_events:
        logger.debug(
            "%s: %d events were not completion chunks, skipped", endpoint, exchange.bad_events
        )
    status = exchange.status or 500
    model = (_name(request.get("model")) or exchange.model or default_model)[:_MAX_NAME]
    streaming = exchange.response_kind == "sse"
    prompt_tokens = exchange.prompt_tokens
    completion_tokens = exchange.completion_tokens
    estimated = False
    if streaming and not exchange.usage_seen and status < 400:
        estimated = True
        completion_tokens = exchange.content_events
        prompt_tokens = estimate_prompt_tokens(request)

    finish_reason = exchange.finish_reason
    error_message: str | None = None
    if outcome != "ok":
        error_message = _OUTCOME_MESSAGES[outcome]
        if outcome == "cancelled":
            finish_reason = "cancelled"
    elif failure is not None:
        error_message = type(failure).__name__
        if expose_exception_details and str(failure):
            error_message = f"{error_message}: {failure}"[:_MAX_MESSAGE]
    elif status >= 400 or exchange.error_message is not None:
        error_message = (exchange.error_message or f"HTTP {status}")[:_MAX_MESSAGE]

    ttft, gaps, itl_mean = exchange.timings(started) if streaming else (None, None, None)
    if gaps is not None and exchange.gap_count > len(gaps):
        gaps = None  # percentiles over a prefix would mislead; the mean is exact
    recorded = collector.record_request(
        model,
        prompt_tokens,
        completion_tokens,
        max(0.0, (finished - started) * 1000),
        streaming=streaming,
        status="error" if error_message is not None else "success",
        error_message=error_message,
        user_id=_name(request.get("user")),
        organization_id=_name(organization),
        ttft_ms=ttft,
        request_id=_name(exchange.request_id or request_id),
        service=service,
        itl_ms=itl_mean,
        itl_samples_ms=gaps,
        finish_reason=finish_reason,
        endpoint=endpoint,
        usage_estimated=estimated,
    )
    if error_message is None:
        return
    error_type: str
    severity: ErrorSeverity
    stack_trace: str | None = None
    if outcome == "cancelled":
        error_type, severity = "client_disconnected", "low"
        error_message = "client disconnected before the response was complete"
    elif outcome != "ok":
        error_type, severity = f"upstream_{outcome}", "high"
    elif failure is not None:
        error_type, severity = type(failure).__name__, "critical"
        if expose_exception_details:
            stack_trace = "".join(traceback.format_exception(failure))[-_MAX_TRACE:]
    else:
        if status == 429:
            error_type, severity = exchange.error_type or "rate_limit_exceeded", "medium"
        else:
            error_type = exchange.error_type or f"http_{status}"
            severity = "low" if 400 <= status < 500 else "high"
    collector.record_error(
        error_type,
        error_message,
        model=model,
        severity=severity,
        request_id=recorded.id,
        stack_trace=stack_trace,
    )
