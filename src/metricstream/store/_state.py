"""The seed's ``RealtimeMetricsState`` and the pure rules that build it.

:class:`StateReducer` applies messages to a state and knows nothing of
connections, threads or event loops, so every rule (snapshots, resumes, stale
updates, bounded histories) is tested by feeding it recorded messages.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from ..exceptions import ConfigError
from ..protocol import (
    MAX_KEYS,
    PAYLOAD_TYPES,
    STATE_TYPES,
    CostUpdatePayload,
    ErrorUpdatePayload,
    InitPayload,
    KVCacheUpdatePayload,
    MessageType,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    RateLimitUpdatePayload,
    RequestUpdatePayload,
    SystemUpdatePayload,
    WebSocketMessage,
)

__all__ = ["RealtimeMetricsState", "StateReducer"]


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclasses.dataclass(frozen=True, slots=True)
class RealtimeMetricsState:
    """An immutable snapshot of everything the stream said (the seed's hook state).

    ``recent_requests`` and ``recent_errors`` are newest first, like the seed's.
    ``last_update`` is the timestamp (ms) of the newest applied message.
    ``metrics_unknown`` and ``metrics_estimated`` name the ``metrics`` fields
    the source could not measure (shown as "n/a", never as a confident zero)
    or only estimated, as its ``metadata`` said (the FakeAI dialect does).
    """

    metrics: MetricsUpdatePayload | None = None
    metrics_unknown: frozenset[str] = frozenset()
    metrics_estimated: frozenset[str] = frozenset()
    models: Mapping[str, ModelUpdatePayload] = dataclasses.field(default_factory=_empty)
    recent_requests: tuple[RequestUpdatePayload, ...] = ()
    recent_errors: tuple[ErrorUpdatePayload, ...] = ()
    system_stats: SystemUpdatePayload | None = None
    rate_limits: Mapping[str, RateLimitUpdatePayload] = dataclasses.field(default_factory=_empty)
    costs: CostUpdatePayload | None = None
    kv_cache: KVCacheUpdatePayload | None = None
    is_connected: bool = False
    connection_state: str = "DISCONNECTED"
    last_update: int | None = None


class StateReducer:
    """Applies stream messages to a :class:`RealtimeMetricsState`.

    - ``init`` with ``metadata.resumed`` false replaces the state (a new
      snapshot or a new epoch); a resumed ``init`` keeps it.
    - A state message never overwrites a newer one for the same key: it is
      compared by ``sequence`` (timestamps when the dialect has none).
    - ``request_update`` events are kept once per ``id`` (a later record of
      the same request, such as its final status, replaces the earlier one);
      both histories are bounded.
    """

    def __init__(self, *, max_recent_requests: int = 50, max_recent_errors: int = 20) -> None:
        if max_recent_requests < 1 or max_recent_errors < 1:
            raise ConfigError("history sizes must be at least 1")
        self.max_recent_requests = max_recent_requests
        self.max_recent_errors = max_recent_errors
        self._requests: deque[RequestUpdatePayload] = deque(maxlen=max_recent_requests)
        self._request_ids: set[str] = set()
        self._errors: deque[ErrorUpdatePayload] = deque(maxlen=max_recent_errors)
        self._models: OrderedDict[str, ModelUpdatePayload] = OrderedDict()
        self._rate_limits: OrderedDict[str, RateLimitUpdatePayload] = OrderedDict()
        self._singletons: dict[MessageType, Any] = {}
        self._metrics_unknown: frozenset[str] = frozenset()
        self._metrics_estimated: frozenset[str] = frozenset()
        # (type, key) -> (sequence, timestamp) of the value held.
        self._versions: dict[tuple[MessageType, str], tuple[int, int]] = {}
        self._last_update: int | None = None
        self._snapshot: RealtimeMetricsState | None = None

    def state(self, *, connection_state: str, is_connected: bool) -> RealtimeMetricsState:
        """The current state (cached until the next change)."""
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = RealtimeMetricsState(
                metrics=self._singletons.get(MessageType.METRICS_UPDATE),
                metrics_unknown=self._metrics_unknown,
                metrics_estimated=self._metrics_estimated,
                models=MappingProxyType(dict(self._models)),
                recent_requests=tuple(reversed(self._requests)),
                recent_errors=tuple(reversed(self._errors)),
                system_stats=self._singletons.get(MessageType.SYSTEM_UPDATE),
                rate_limits=MappingProxyType(dict(self._rate_limits)),
                costs=self._singletons.get(MessageType.COST_UPDATE),
                kv_cache=self._singletons.get(MessageType.KV_CACHE_UPDATE),
                last_update=self._last_update,
            )
        if snap.connection_state != connection_state or snap.is_connected != is_connected:
            snap = self._snapshot = dataclasses.replace(
                snap, connection_state=connection_state, is_connected=is_connected
            )
        return snap

    def clear(self) -> None:
        """Forget everything (the start of a new epoch)."""
        self._requests.clear()
        self._request_ids.clear()
        self._errors.clear()
        self._models.clear()
        self._rate_limits.clear()
        self._singletons.clear()
        self._metrics_unknown = self._metrics_estimated = frozenset()
        self._versions.clear()
        self._last_update = None
        self._snapshot = None

    def clear_history(self) -> None:
        """Forget the recent requests and errors, keep the rest."""
        self._requests.clear()
        self._request_ids.clear()
        self._errors.clear()
        self._snapshot = None

    def apply(self, message: WebSocketMessage[Any]) -> bool:
        """Apply one message; returns whether the state changed."""
        mtype = message.type
        data = message.data
        if mtype == MessageType.INIT and isinstance(data, InitPayload):
            return self._apply_init(message, data)
        if mtype == MessageType.REQUEST_UPDATE and isinstance(data, RequestUpdatePayload):
            if not self._add_request(data):
                return False
        elif mtype == MessageType.ERROR_UPDATE and isinstance(data, ErrorUpdatePayload):
            self._errors.append(data)
        elif mtype == MessageType.MODEL_UPDATE and isinstance(data, ModelUpdatePayload):
            if not self._newer(message, data.model):
                return False
            self._put(self._models, MessageType.MODEL_UPDATE, data.model, data)
        elif mtype == MessageType.RATE_LIMIT_UPDATE and isinstance(data, RateLimitUpdatePayload):
            if not self._newer(message, data.endpoint):
                return False
            self._put(self._rate_limits, MessageType.RATE_LIMIT_UPDATE, data.endpoint, data)
        elif mtype in _SINGLETONS and _has_payload_of(mtype, data):
            if not self._newer(message, ""):
                return False
            self._singletons[MessageType(mtype)] = data
            if mtype == MessageType.METRICS_UPDATE:
                metadata = message.metadata or {}
                self._metrics_unknown = _field_names(metadata.get("unknown"))
                self._metrics_estimated = _field_names(metadata.get("estimated"))
        else:
            return False
        self._touch(message.timestamp)
        return True

    def _apply_init(self, message: WebSocketMessage[Any], data: InitPayload) -> bool:
        if (message.metadata or {}).get("resumed") is True:
            return False
        self.clear()
        version = (message.sequence or 0, message.timestamp)
        if data.metrics is not None:
            self._singletons[MessageType.METRICS_UPDATE] = data.metrics
        if data.system is not None:
            self._singletons[MessageType.SYSTEM_UPDATE] = data.system
        if data.costs is not None:
            self._singletons[MessageType.COST_UPDATE] = data.costs
        if data.kv_cache is not None:
            self._singletons[MessageType.KV_CACHE_UPDATE] = data.kv_cache
        for mtype in self._singletons:
            self._versions[(mtype, "")] = version
        for name, model in list(data.models.items())[-MAX_KEYS:]:
            self._models[name] = model
            self._versions[(MessageType.MODEL_UPDATE, name)] = version
        for endpoint, limit in list(data.rate_limits.items())[-MAX_KEYS:]:
            self._rate_limits[endpoint] = limit
            self._versions[(MessageType.RATE_LIMIT_UPDATE, endpoint)] = version
        # The snapshot lists events oldest first, in the order they happened.
        for request in data.recent_requests[-self.max_recent_requests :]:
            self._add_request(request)
        self._errors.extend(data.recent_errors[-self.max_recent_errors :])
        self._touch(message.timestamp)
        return True

    def _add_request(self, data: RequestUpdatePayload) -> bool:
        """Hold a request once per ``id``; a later record of it (its final
        status after ``in_progress``) replaces the earlier one in place."""
        if data.id in self._request_ids:
            for i, held in enumerate(self._requests):
                if held.id == data.id:
                    if held == data:
                        return False
                    self._requests[i] = data
                    return True
        if len(self._requests) == self._requests.maxlen:
            self._request_ids.discard(self._requests[0].id)
        self._requests.append(data)
        self._request_ids.add(data.id)
        return True

    def _newer(self, message: WebSocketMessage[Any], key: str) -> bool:
        """Record ``message`` as the version of its key unless it is older."""
        vkey = (MessageType(message.type), key)
        held = self._versions.get(vkey)
        sequence = message.sequence
        if held is not None:
            held_sequence, held_timestamp = held
            if sequence is not None and held_sequence:
                if sequence <= held_sequence:
                    return False
            elif message.timestamp < held_timestamp:
                return False
        self._versions[vkey] = (sequence or 0, message.timestamp)
        return True

    def _put(self, table: OrderedDict[str, Any], mtype: MessageType, key: str, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > MAX_KEYS:
            evicted, _ = table.popitem(last=False)
            self._versions.pop((mtype, evicted), None)

    def _touch(self, timestamp: int) -> None:
        self._snapshot = None
        if self._last_update is None or timestamp > self._last_update:
            self._last_update = timestamp


# State messages with one value for the whole stream (the others are keyed).
def _field_names(value: Any) -> frozenset[str]:
    """The field names a metadata entry lists; anything else names none."""
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str))


_SINGLETONS: Final = STATE_TYPES - {MessageType.MODEL_UPDATE, MessageType.RATE_LIMIT_UPDATE}


def _has_payload_of(mtype: str, data: Any) -> bool:
    """Whether ``data`` is the payload Struct of ``mtype`` (not a raw dict, say)."""
    payload = PAYLOAD_TYPES.get(MessageType(mtype))
    return payload is not None and isinstance(data, payload)
