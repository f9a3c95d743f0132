"""The FakeAI dialect: FakeAI's ``/metrics/stream`` frames as the seed's messages.

Pure code, no I/O. FakeAI (0.3.2) sends nested rate/latency snapshots with
float-second timestamps and no sequence numbers; :class:`FakeAIAdapter` turns
each frame into the seed's typed messages so that everything downstream of the
client (handlers, stores, dashboards) sees one protocol:

==================  =====================================================
FakeAI frame        becomes
==================  =====================================================
``historical_data`` ``init`` (a full snapshot: ``metrics``, ``kv_cache``)
``metrics_update``  ``metrics_update``, plus ``kv_cache_update`` when
                    the server reports cache lookups
``pong``            ``pong`` (``server_time`` in ms)
``subscribed``      ``subscribed``; ``unsubscribed`` → ``subscribed`` (no filter)
``error``           ``error`` with code ``server_error``
anything else       an unknown-type message (skipped by the client)
==================  =====================================================

FakeAI reports rates, not totals. ``total_requests`` and ``total_tokens``
are derived: the adapter integrates the request and token rates over the
time between frames (trapezoids), from the first frame it saw, and
``metadata["estimated"]`` names them. ``total_cost`` and
``streaming_percentage`` cannot be derived (no prices, no stream counts):
they stay 0 and ``metadata["unknown"]`` names them, so that a consumer shows
"n/a" rather than a confident zero. The original ``data`` travels in
``metadata["fakeai"]`` so nothing is lost.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ..exceptions import ProtocolError
from ..protocol import (
    ErrorPayload,
    InitPayload,
    KVCacheUpdatePayload,
    MessageType,
    MetricsUpdatePayload,
    PongPayload,
    SubscribePayload,
    WebSocketMessage,
    make_message,
    normalize_timestamp,
)

__all__ = ["FAKEAI_PING", "FakeAIAdapter", "FakeAIDialect", "is_fakeai_greeting"]

#: What the client sends as a heartbeat to FakeAI: its ``heartbeat`` is answered
#: with an error (the seed client's defect), ``ping`` with ``pong``.
FAKEAI_PING: Final = b'{"type":"ping"}'


class _Latency(msgspec.Struct):
    avg: float = 0.0


class _Throughput(msgspec.Struct):
    responses_per_sec: dict[str, float] = msgspec.field(default_factory=dict)
    total_requests_per_sec: float = 0.0
    total_tokens_per_sec: float = 0.0


class _Cache(msgspec.Struct):
    hit_rate: float = 0.0
    total_lookups: int = 0
    cache_hits: int = 0


class _Queue(msgspec.Struct):
    active_streams: int = 0


class _Errors(msgspec.Struct):
    total_errors_per_sec: float = 0.0


class _Snapshot(msgspec.Struct):
    throughput: _Throughput = msgspec.field(default_factory=_Throughput)
    latency: dict[str, _Latency] = msgspec.field(default_factory=dict)
    cache: _Cache = msgspec.field(default_factory=_Cache)
    queue: _Queue = msgspec.field(default_factory=_Queue)
    error: _Errors = msgspec.field(default_factory=_Errors)


class _Frame(msgspec.Struct):
    type: str
    timestamp: float = 0.0
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    message: str | None = None
    filters: dict[str, Any] | None = None


class _TypeOnly(msgspec.Struct):
    type: str = ""


_frame_decoder: Final = msgspec.json.Decoder(_Frame)
_snapshot_decoder: Final = msgspec.json.Decoder(_Snapshot)
_any_decoder: Final = msgspec.json.Decoder()
_type_decoder: Final = msgspec.json.Decoder(_TypeOnly)


def is_fakeai_greeting(frame: bytes | str) -> bool:
    """Whether ``frame`` is FakeAI's first frame (``historical_data``).

    Used by the ``auto`` dialect; a frame that is not a JSON object is simply
    not a FakeAI greeting.
    """
    try:
        return _type_decoder.decode(frame).type == "historical_data"
    except (msgspec.MsgspecError, RecursionError, TypeError):
        return False


def _clamp_percent(value: float) -> float:
    return min(max(value, 0.0), 100.0)


def _rate(value: float) -> float:
    # FakeAI's rates are decaying estimates; a negative one is noise, not a fault.
    return value if value > 0 else 0.0


def _avg_latency(snapshot: _Snapshot) -> float:
    """Mean latency over endpoints, weighted by each endpoint's response rate."""
    if not snapshot.latency:
        return 0.0
    rates = snapshot.throughput.responses_per_sec
    weighted = total = 0.0
    for endpoint, latency in snapshot.latency.items():
        weight = _rate(rates.get(endpoint, 0.0))
        weighted += latency.avg * weight
        total += weight
    if total > 0:
        return weighted / total
    # No traffic right now: every endpoint counts the same.
    return sum(latency.avg for latency in snapshot.latency.values()) / len(snapshot.latency)


#: Totals of adapted messages derived from rates (estimates).
ESTIMATED_FIELDS: Final = ("total_requests", "total_tokens")
#: Totals that FakeAI's stream gives no way to derive.
UNKNOWN_FIELDS: Final = ("total_cost", "streaming_percentage")


class FakeAIAdapter:
    """Turns FakeAI frames into the seed's messages.

    It keeps one piece of state, the running integral of the request and
    token rates, so use one adapter per client. A ``historical_data`` frame
    (a new connection) restarts the integration from its own time without
    counting the gap before it: a disconnected client saw no rates.
    """

    def __init__(self) -> None:
        self._requests = 0.0
        self._tokens = 0.0
        # (time in s, requests/s, tokens/s) of the previous snapshot.
        self._last: tuple[float, float, float] | None = None

    def _integrate(self, kind: str, at: float, requests: float, tokens: float) -> None:
        last = self._last
        if kind == "metrics_update" and last is not None and at > last[0]:
            elapsed = at - last[0]
            self._requests += (last[1] + requests) / 2 * elapsed
            self._tokens += (last[2] + tokens) / 2 * elapsed
        if last is None or at >= last[0] or kind == "historical_data":
            self._last = (at, requests, tokens)

    def adapt(self, frame: bytes | str) -> list[WebSocketMessage[Any]]:
        """The messages one FakeAI frame stands for (possibly none).

        Raises :class:`~metricstream.exceptions.ProtocolError` when the frame
        is not valid JSON of the expected shape.
        """
        try:
            parsed = _frame_decoder.decode(frame)
        except (msgspec.MsgspecError, RecursionError, TypeError) as exc:
            raise ProtocolError(f"invalid FakeAI frame: {exc}") from exc
        timestamp = normalize_timestamp(parsed.timestamp) if parsed.timestamp else None
        kind = parsed.type
        if kind in ("historical_data", "metrics_update"):
            return self._snapshot(kind, parsed, timestamp)
        msg: WebSocketMessage[Any]
        if kind == "pong":
            msg = make_message(
                MessageType.PONG, PongPayload(server_time=timestamp), timestamp=timestamp
            )
        elif kind == "error":
            message = parsed.message or "unspecified server error"
            msg = make_message(
                MessageType.ERROR,
                ErrorPayload(code="server_error", message=message),
                timestamp=timestamp,
            )
        elif kind == "subscribed":
            models = (parsed.filters or {}).get("models")
            wanted = [m for m in models if isinstance(m, str)] if isinstance(models, list) else []
            msg = make_message(
                MessageType.SUBSCRIBED, SubscribePayload(models=wanted or None), timestamp=timestamp
            )
        elif kind == "unsubscribed":
            msg = make_message(MessageType.SUBSCRIBED, SubscribePayload(), timestamp=timestamp)
        else:
            data = _any_decoder.decode(parsed.data) if parsed.data else None
            msg = make_message(kind, data, timestamp=timestamp)
        return [msg]

    def _snapshot(
        self, kind: str, parsed: _Frame, timestamp: int | None
    ) -> list[WebSocketMessage[Any]]:
        raw = parsed.data if parsed.data else b"{}"
        try:
            snapshot = _snapshot_decoder.decode(raw)
            original = _any_decoder.decode(raw)
        except (msgspec.MsgspecError, RecursionError) as exc:
            raise ProtocolError(f"invalid FakeAI {kind} frame: {exc}") from exc
        throughput = snapshot.throughput
        requests_per_second = _rate(throughput.total_requests_per_sec)
        errors_per_second = _rate(snapshot.error.total_errors_per_sec)
        error_rate = (
            _clamp_percent(errors_per_second / requests_per_second * 100)
            if requests_per_second > 0
            else 0.0
        )
        tokens_per_second = _rate(throughput.total_tokens_per_sec)
        if parsed.timestamp:
            self._integrate(kind, parsed.timestamp, requests_per_second, tokens_per_second)
        metrics = MetricsUpdatePayload(
            total_requests=round(self._requests),
            total_tokens=round(self._tokens),
            total_cost=0.0,
            avg_latency_ms=_avg_latency(snapshot),
            error_rate=error_rate,
            streaming_percentage=0.0,
            requests_per_second=requests_per_second,
            tokens_per_second=tokens_per_second,
            active_connections=max(snapshot.queue.active_streams, 0),
        )
        kv_cache = self._kv_cache(snapshot.cache)
        metadata = {
            "dialect": "fakeai",
            "fakeai": original,
            "estimated": list(ESTIMATED_FIELDS),
            "unknown": list(UNKNOWN_FIELDS),
        }
        if kind == "historical_data":
            init = InitPayload(metrics=metrics, kv_cache=kv_cache)
            return [
                make_message(
                    MessageType.INIT,
                    init,
                    timestamp=timestamp,
                    metadata={**metadata, "resumed": False},
                )
            ]
        messages: list[WebSocketMessage[Any]] = [
            make_message(
                MessageType.METRICS_UPDATE, metrics, timestamp=timestamp, metadata=metadata
            )
        ]
        if kv_cache is not None:
            messages.append(
                make_message(MessageType.KV_CACHE_UPDATE, kv_cache, timestamp=timestamp)
            )
        return messages

    @staticmethod
    def _kv_cache(cache: _Cache) -> KVCacheUpdatePayload | None:
        lookups = max(cache.total_lookups, 0)
        if lookups == 0:
            # FakeAI sends an empty object when its cache reports nothing.
            return None
        hits = min(max(cache.cache_hits, 0), lookups)
        return KVCacheUpdatePayload(
            cache_hits=hits,
            cache_misses=lookups - hits,
            # Computed rather than copied: FakeAI's own hit_rate field does not
            # say whether it is a fraction or a percentage.
            hit_rate=hits / lookups * 100,
            cache_size_bytes=0,
            cache_entries=0,
            evictions=0,
            avg_lookup_time_ms=0.0,
        )

    @staticmethod
    def subscribe_frames(models: tuple[str, ...] | None) -> list[bytes]:
        """The frames that set FakeAI's filter to ``models`` (``None``: everything).

        FakeAI's filter only grows, one model per ``subscribe``; so the filter
        is first reset with ``unsubscribe``. FakeAI has no type filter: the
        client filters types itself.
        """
        return [b'{"type":"unsubscribe"}'] + [
            msgspec.json.encode({"type": "subscribe", "filters": {"model": model}})
            for model in models or ()
        ]


class FakeAIDialect:
    """The FakeAI dialect as a :class:`~metricstream.protocol.ForeignDialect`:
    what a client session needs to recognise, adapt, ping and filter it."""

    name: Final = "fakeai"
    ping: Final = FAKEAI_PING

    def __init__(self) -> None:
        self._adapter = FakeAIAdapter()

    def recognises(self, frame: bytes) -> bool:
        """Whether a connection's first frame is FakeAI's greeting."""
        return is_fakeai_greeting(frame)

    def adapt(self, frame: bytes) -> list[WebSocketMessage[Any]]:
        """The seed's messages of one FakeAI frame (see :class:`FakeAIAdapter`)."""
        return self._adapter.adapt(frame)

    def subscribe_frames(self, models: tuple[str, ...] | None) -> list[bytes]:
        """The frames that set FakeAI's filter (see :meth:`FakeAIAdapter.subscribe_frames`)."""
        return FakeAIAdapter.subscribe_frames(models)
