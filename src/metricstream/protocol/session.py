"""The client's side of the protocol, as a state machine without I/O.

A :class:`ClientSession` is told what happened — a connection attempt starts
(:meth:`~ClientSession.connect`), the handshake succeeds
(:meth:`~ClientSession.opened`), a frame arrives (:meth:`~ClientSession.receive`),
time passes (:meth:`~ClientSession.tick`), the connection ends
(:meth:`~ClientSession.closed`) — and answers with what to do: deliver these
messages, resync, send a heartbeat, abandon a silent peer, reconnect after so
many seconds or stop. It owns every client-side rule of ``docs/protocol.md``:
the resume parameters, the dialect of a connection, lenient batch decoding and
the frame-size bounds, ``init`` and epochs, sequence verdicts and the gap
resync, the filter and the frames that ask a server for it, keepalive (the
first message's deadline included) and latency, the close-code decisions
with backoff, and, given several servers of one stream, which one the next
attempt goes to.

It never reads a clock, a socket or an event loop: times are passed in, so
the whole behaviour is tested without either. ``WebSocketService`` is the
asyncio adapter that feeds it.

States::

    CLOSED ──start()──▶ CONNECTING ──opened()──▶ AWAITING_INIT ──first message──▶ STREAMING
                            ▲                                                    │
                            │                         gap / unexpected resume ───┤──▶ RESYNCING
                            │                                                    ▼
                        BACKING_OFF ◀──────── closed() / connect_failed() ─────────
                                              └──▶ FAILED (fatal, out of attempts)
                                              └──▶ CLOSED (stop(), reconnect off)
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec

from ..exceptions import ConfigError, ConnectionRejectedError, MetricStreamError, ProtocolError
from .backoff import Backoff
from .close import CloseAction, CloseCode, close_action
from .codec import decode, decode_frame, encode
from .constants import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT
from .filter import Filter
from .messages import (
    STREAM_TYPES,
    HeartbeatPayload,
    MessageType,
    SubscribePayload,
    WebSocketMessage,
)
from .messages import make_message as _make_message
from .messages import now_ms as _now_ms
from .sequence import SequenceTracker

__all__ = [
    "NATIVE_DIALECT",
    "ClientSession",
    "Decision",
    "FilterRequest",
    "ForeignDialect",
    "SessionEvent",
    "Opened",
    "Resync",
    "LogSink",
    "SessionState",
    "Tick",
]

#: Where the session reports what it skipped or decided: called as
#: ``log(level, message, *args)`` with ``logging``'s level numbers (the
#: session itself must not import ``logging``, which loads ``threading``).
LogSink = Callable[..., object]

_DEBUG: Final = 10
_INFO: Final = 20
_WARNING: Final = 30


def _quiet(level: int, message: str, *args: object) -> None:
    """The default sink: the session says nothing."""


#: The name of this protocol's own dialect.
NATIVE_DIALECT: Final = "native"

# A frame above max_message_size is read and skipped, up to this many times
# the limit; beyond it the connection is failed (1009) so that no single frame
# can make the client buffer without bound.
_OVERSIZE_CEILING: Final = 4

# How much of a raw frame a debug log shows.
_RAW_LOG_LIMIT: Final = 2048
_raw_list_decoder: Final = msgspec.json.Decoder(list[msgspec.Raw])


class SessionState(enum.Enum):
    """Where a :class:`ClientSession` is."""

    CONNECTING = "connecting"
    """A connection attempt (TCP, TLS, handshake) is under way."""
    AWAITING_INIT = "awaiting_init"
    """The handshake succeeded; no valid message has arrived yet."""
    STREAMING = "streaming"
    """The connection proved itself with a first message; the stream flows."""
    RESYNCING = "resyncing"
    """The stream cannot be continued on this connection: close it and
    reconnect at once (a gap on an unfiltered stream, an unexpected resume)."""
    BACKING_OFF = "backing_off"
    """The connection ended; waiting :attr:`Decision.delay` before the next attempt."""
    CLOSED = "closed"
    """Not started, stopped on purpose, or reconnecting is off."""
    FAILED = "failed"
    """Stopped for good: rejected (bad token, origin) or out of attempts."""


# Module-level: read on every frame, cheaper than the class attribute.
_STREAMING: Final = SessionState.STREAMING
_AWAITING_INIT: Final = SessionState.AWAITING_INIT


class ForeignDialect(Protocol):
    """A foreign server dialect the session can adapt (e.g. FakeAI's)."""

    @property
    def name(self) -> str:
        """The dialect's name, as ``ConnectionInfo.dialect`` reports it."""
        ...

    @property
    def ping(self) -> bytes:
        """The heartbeat frame this dialect answers."""
        ...

    def recognises(self, frame: bytes) -> bool:
        """Whether a connection's first frame is in this dialect."""
        ...

    def adapt(self, frame: bytes) -> list[WebSocketMessage[Any]]:
        """The native messages of one frame; raises :class:`ProtocolError`."""
        ...

    def subscribe_frames(self, models: tuple[str, ...] | None) -> list[bytes]:
        """The frames that set this dialect's filter to ``models`` (``None``: all)."""
        ...


@dataclass(slots=True)
class Opened:
    """The connection proved itself (its first valid message): it is up."""

    first: bool
    """Whether this is the session's first connection (else a reconnect)."""


@dataclass(slots=True)
class Resync:
    """Stop reading this connection, close it (1000) and reconnect at once."""

    reason: str


#: What :meth:`ClientSession.receive` returns, in order: a message is itself
#: the event "hand this to the application" (the common case, so it costs no
#: wrapper); :class:`Opened` and :class:`Resync` are the rare others.
SessionEvent = WebSocketMessage[Any] | Opened | Resync


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a connection ended or could not be opened."""

    action: CloseAction | None
    """The close-code table's verdict; ``None`` when the client asked to stop."""
    delay: float | None
    """Seconds before the next attempt; ``None``: do not reconnect (see :attr:`state`)."""
    reason: str
    """Why the connection ended, for people."""
    was_open: bool
    """Whether the connection had been up (``STREAMING``): a disconnect to report."""
    error: MetricStreamError | None
    """The error that stopped the session for good, when ``action`` is fatal."""
    gave_up: bool
    """Whether the session stopped because the reconnect attempts ran out."""
    state: SessionState
    """The session's state now: ``BACKING_OFF``, ``CLOSED`` or ``FAILED``."""


@dataclass(frozen=True, slots=True)
class FilterRequest:
    """How to ask the server of the open connection for a new filter."""

    frames: tuple[bytes, ...]
    """The frames to send now, in order; none while no connection is up (the
    filter then travels in the next connection's URL)."""
    answered: bool
    """Whether the server answers with ``subscribed`` (the native dialect)."""


@dataclass(frozen=True, slots=True)
class Tick:
    """What :meth:`ClientSession.tick` asks for."""

    heartbeat: bytes | None
    """A heartbeat frame to send now (bound the send by the heartbeat timeout)."""
    abandon: str | None
    """Abandon (abort, do not close) the connection: the peer fell silent."""
    next_at: float
    """When to tick again (same clock as ``now``)."""


class _Connection:
    """What the session knows about one connection."""

    __slots__ = (
        "dialect",
        "end_reason",
        "gap_check",
        "next_beat",
        "pings",
        "probe_since",
        "resync",
        "seen",
        "up",
    )

    def __init__(self, dialect: str | None, now: float | None) -> None:
        self.dialect = dialect  # None until the first frame decides (auto)
        self.up = False
        self.gap_check = False
        self.resync = False
        self.end_reason: str | None = None
        self.pings: deque[float] = deque(maxlen=32)
        self.next_beat = 0.0
        # When we started waiting for any frame: after a heartbeat, or,
        # before the first message, since the handshake or the last frame.
        self.probe_since = now
        self.seen = 0


class ClientSession:
    """One client's protocol state across connections; no I/O.

    ``dialect`` is ``"native"``, ``"auto"`` (each connection's first frame
    decides, see :meth:`ForeignDialect.recognises`) or the name of ``foreign``.
    Times passed to :meth:`receive` and :meth:`tick` are seconds on one
    monotonic clock. ``endpoints`` is how many servers serve the stream
    (nodes sharing it): after a failed attempt or a lost connection the next
    attempt goes to the next one (:attr:`endpoint`) at once, and only after
    a round of them all fails does the backoff delay the next round.
    """

    def __init__(
        self,
        *,
        backoff: Backoff | None = None,
        resume: bool = True,
        reconnect: bool = True,
        batch: bool = False,
        token: str | None = None,
        types: tuple[str, ...] | None = None,
        models: tuple[str, ...] | None = None,
        dialect: str = NATIVE_DIALECT,
        foreign: ForeignDialect | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        max_message_size: int | None = None,
        debug: bool = False,
        log: LogSink = _quiet,
        endpoints: int = 1,
    ) -> None:
        if endpoints < 1:
            raise ConfigError(f"endpoints must be at least 1, got {endpoints}")
        self.backoff = backoff if backoff is not None else Backoff()
        self._endpoints = endpoints
        #: Which of the ``endpoints`` (server URLs of the same stream) the
        #: next attempt goes to, by index.
        self.endpoint = 0
        # Endpoints tried in a row since a connection last came up.
        self._tried = 0
        self.tracker = SequenceTracker()
        self._resume = resume
        self._reconnect = reconnect
        self._batch = batch
        self._token = token
        self._dialect_choice = dialect
        self._foreign = foreign
        self._interval = heartbeat_interval
        self._timeout = heartbeat_timeout
        self._max_size = max_message_size
        self._debug = debug
        self._log = log
        self._conn: _Connection | None = None
        self.set_filter(types, models)
        self._state = SessionState.CLOSED
        self._stopping = False
        self._immediate_used = False
        # The sequence a gap was last seen after: a second gap at the same
        # place right after a resync means the server cannot fill it.
        self._gap_resync_from: int | None = None
        #: Set while the application holds the reader (a slow callback or a
        #: full iterator): silence then is ours, not the peer's.
        self.busy = False
        self.dialect: str | None = None
        """The dialect the last connection decided on (``None`` before)."""
        self.latency: float | None = None
        """The last heartbeat round trip, in seconds."""
        self.last_error: str | None = None
        self.bytes_received = 0
        self.message_count = 0
        self.parse_errors = 0
        self.unknown_messages = 0
        self.connections = 0
        self.resumes = 0
        self.resumed = False

    # ----------------------------------------------------------- inspection

    @property
    def state(self) -> SessionState:
        """The current state."""
        return self._state

    @property
    def filter(self) -> Filter:
        """The filter applied to what arrives (and asked of the server)."""
        return self._filter

    @property
    def types(self) -> tuple[str, ...] | None:
        """The ``types`` filter, in the order it was given."""
        return self._types

    @property
    def models(self) -> tuple[str, ...] | None:
        """The ``models`` filter, in the order it was given."""
        return self._models

    @property
    def subscription(self) -> SubscribePayload:
        """The filter as the wire's ``subscribe`` payload (``None`` fields: everything)."""
        types, models = self._types, self._models
        return SubscribePayload(
            types=list(types) if types is not None else None,
            models=list(models) if models is not None else None,
        )

    @property
    def is_up(self) -> bool:
        """Whether a connection is open and proved itself (its first message came)."""
        return self._state is _STREAMING

    @property
    def frame_ceiling(self) -> int | None:
        """The largest frame worth reading at all (``None``: no bound).

        A frame above ``max_message_size`` is read, counted and skipped; one
        above this many bytes fails the connection (1009) instead, so that no
        single frame makes the client buffer without bound.
        """
        return None if self._max_size is None else self._max_size * _OVERSIZE_CEILING

    def url_params(self) -> dict[str, str | None]:
        """The query parameters of the next attempt (``None``: leave out).

        The filter, ``batch``, the token when it travels in the query, and
        ``since``/``epoch`` when resuming a native stream this session holds
        a position in.
        """
        params: dict[str, str | None] = {
            "types": ",".join(self._types) if self._types is not None else None,
            "models": ",".join(self._models) if self._models is not None else None,
            "batch": "1" if self._batch else None,
            "token": self._token,
        }
        tracker = self.tracker
        if (
            self._resume
            and tracker.last_sequence is not None
            and self.dialect in (None, NATIVE_DIALECT)
        ):
            params["since"] = str(tracker.last_sequence)
            params["epoch"] = tracker.epoch
        return params

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start (or start over after a stop or a failure) with a fresh backoff."""
        self._stopping = False
        self._immediate_used = False
        self.backoff.reset()
        self._state = SessionState.CLOSED

    def connect(self) -> dict[str, str | None]:
        """A connection attempt begins: returns its query parameters."""
        self._state = SessionState.CONNECTING
        self._conn = None
        return self.url_params()

    def opened(self, now: float | None = None) -> None:
        """The handshake succeeded at ``now``; the first message is awaited.

        Given ``now``, :meth:`tick` abandons the connection when no frame
        arrives for the heartbeat timeout before a first valid message.
        """
        choice = self._dialect_choice
        self._conn = _Connection(None if choice == "auto" else choice, now)
        self._state = SessionState.AWAITING_INIT

    def stop(self, reason: str) -> None:
        """The client closes on purpose: whatever ends next is not reconnected."""
        self._stopping = True
        if self._conn is not None and self._conn.end_reason is None:
            self._conn.end_reason = reason

    def abandon(self, reason: str) -> None:
        """The adapter gave up on this connection (e.g. a send timed out):
        it ends with ``reason`` and is retried with backoff."""
        if self._conn is not None and self._conn.end_reason is None:
            self._conn.end_reason = reason

    def set_filter(
        self, types: tuple[str, ...] | None, models: tuple[str, ...] | None
    ) -> FilterRequest:
        """Replace the filter (as given: the server validates what it accepts).

        A filtered stream has gaps by design, and a widened one starts with
        one: neither may trigger a resync on the current connection. Returns
        what asks the open connection's server for the new filter: the
        native ``subscribe`` (``unsubscribe`` for everything), or the foreign
        dialect's own frames.
        """
        self._types, self._models = types, models
        self._filter = Filter(
            None if types is None else frozenset(types),
            None if models is None else frozenset(models),
        )
        self._unfiltered = self._filter.is_everything
        conn = self._conn
        if conn is None:
            return FilterRequest((), answered=False)
        conn.gap_check = False
        if not self.is_up:
            return FilterRequest((), answered=False)
        if conn.dialect != NATIVE_DIALECT and self._foreign is not None:
            return FilterRequest(tuple(self._foreign.subscribe_frames(models)), answered=False)
        message: WebSocketMessage[Any] = (
            _make_message(MessageType.UNSUBSCRIBE, None)
            if types is None and models is None
            else _make_message(MessageType.SUBSCRIBE, self.subscription)
        )
        return FilterRequest((encode(message),), answered=True)

    # ------------------------------------------------------------ receiving

    def receive(self, frame: bytes, now: float) -> list[SessionEvent]:
        """One inbound frame: the events it causes, in order.

        Invalid or oversized frames, unknown types, duplicates, stale and
        filtered-out messages are logged, counted and skipped; after a
        :class:`Resync` the rest of the frame is dropped.
        """
        conn = self._conn
        state = self._state
        if conn is None:
            return []
        if state is not _STREAMING:
            if state is not _AWAITING_INIT:
                return []
            conn.probe_since = now  # any frame restarts the wait for a first message
        self.bytes_received += len(frame)
        if self._max_size is not None and len(frame) > self._max_size:
            self.parse_errors += 1
            self._log(
                _WARNING,
                "skipped a %d-byte frame (max_message_size is %d)",
                len(frame),
                self._max_size,
            )
            if self._debug:
                self._log(_DEBUG, "raw oversized frame starts: %r", frame[:_RAW_LOG_LIMIT])
            return []
        events: list[SessionEvent] = []
        for message in self._decode(conn, frame):
            if not conn.up:
                events.append(self._up(conn, now))
            event = self._handle(conn, message, now)
            if event is not None:
                events.append(event)
            if conn.resync:
                self._state = SessionState.RESYNCING
                events.append(Resync(conn.end_reason or "resync"))
                break
        return events

    def _decode(self, conn: _Connection, frame: bytes) -> list[WebSocketMessage[Any]]:
        foreign = self._foreign
        if conn.dialect is None:
            conn.dialect = (
                foreign.name
                if foreign is not None and foreign.recognises(frame)
                else NATIVE_DIALECT
            )
        if self.dialect != conn.dialect:
            self.dialect = conn.dialect
            self._log(_DEBUG, "speaking the %s dialect", conn.dialect)
        try:
            if conn.dialect != NATIVE_DIALECT and foreign is not None:
                return foreign.adapt(frame)
            return decode_frame(frame)
        except ProtocolError as exc:
            if conn.dialect == NATIVE_DIALECT and frame.lstrip()[:1] == b"[":
                return self._decode_batch_leniently(frame)
            self._invalid(exc, frame)
            return []

    def _decode_batch_leniently(self, frame: bytes) -> list[WebSocketMessage[Any]]:
        # One bad message must not take its whole batch down: the good ones
        # are applied, the bad one is skipped (and shows up as a gap).
        try:
            items = _raw_list_decoder.decode(frame)
        except (msgspec.MsgspecError, RecursionError) as exc:
            self._invalid(ProtocolError(f"invalid frame: {exc}"), frame)
            return []
        messages = []
        for item in items:
            try:
                messages.append(decode(bytes(item)))
            except ProtocolError as exc:
                self._invalid(exc, bytes(item))
        return messages

    def _invalid(self, exc: ProtocolError, frame: bytes) -> None:
        self.parse_errors += 1
        self._log(_WARNING, "skipped an invalid frame: %s", exc)
        if self._debug:
            self._log(_DEBUG, "raw invalid frame: %r", frame[:_RAW_LOG_LIMIT])

    def _up(self, conn: _Connection, now: float) -> Opened:
        conn.up = True
        conn.gap_check = (
            conn.dialect == NATIVE_DIALECT and self._resume and self._filter.is_everything
        )
        conn.next_beat = now
        conn.probe_since = None
        conn.seen = self.bytes_received
        first = self.connections == 0
        self.connections += 1
        self.backoff.reset()
        self._immediate_used = False
        self._tried = 0
        self._state = SessionState.STREAMING
        return Opened(first)

    def _handle(
        self, conn: _Connection, message: WebSocketMessage[Any], now: float
    ) -> WebSocketMessage[Any] | None:
        mtype = message.type
        if not message.is_known:
            self.unknown_messages += 1
            self._log(_DEBUG, "skipped a message of unknown type %r", mtype)
            if self._debug:
                self._log(_DEBUG, "raw unknown message: %r", encode(message)[:_RAW_LOG_LIMIT])
            return None
        if mtype is MessageType.INIT:
            if not self._start_epoch(conn, message):
                return None
        elif mtype in STREAM_TYPES:
            if message.sequence is not None and not self._accept(conn, message.sequence):
                return None
            # Unfiltered (the usual case): no call on the hot path.
            if not self._unfiltered and not self._filter.accepts_message(mtype, message.data):
                return None
        elif mtype is MessageType.PONG:
            self._pong(conn, message, now)
        elif mtype is MessageType.ERROR:
            self._log(_WARNING, "the server reported an error: %s", message.data.message)
        self.message_count += 1
        return message

    def _start_epoch(self, conn: _Connection, message: WebSocketMessage[Any]) -> bool:
        metadata = message.metadata or {}
        epoch = metadata.get("epoch")
        resumed = metadata.get("resumed") is True
        epoch = epoch if isinstance(epoch, str) else None
        kept = self.tracker.start(epoch, message.sequence, resumed=resumed)
        if resumed and not kept:
            # The server offers to continue a stream we hold no position in:
            # the only safe state is a fresh snapshot.
            self._log(
                _WARNING, "the server resumed a stream this client cannot continue; resyncing"
            )
            self.tracker.reset()
            conn.resync = True
            conn.end_reason = "resync: unexpected resume"
            return False
        if kept:
            self.resumes += 1
        self.resumed = kept
        if not kept:
            self._log(_INFO, "fresh snapshot from the server (epoch %s)", epoch)
        return True

    def _accept(self, conn: _Connection, sequence: int) -> bool:
        last = self.tracker.last_sequence
        if conn.gap_check and last is not None and sequence > last + 1:
            if self._gap_resync_from != last:
                self._gap_resync_from = last
                self._log(
                    _WARNING,
                    "sequence gap: expected %d, got %d; resuming from %d",
                    last + 1,
                    sequence,
                    last,
                )
                conn.resync = True
                conn.end_reason = f"resync: sequence gap after {last}"
                return False
            self._log(_WARNING, "sequence gap after %d persists after a resync; accepting it", last)
        result = self.tracker.observe(sequence)
        apply = result.apply
        if not apply:
            self._log(_DEBUG, "dropped %s message %d", result.verdict.value, sequence)
        return apply

    def _pong(self, conn: _Connection, message: WebSocketMessage[Any], now: float) -> None:
        sent = conn.pings.popleft() if conn.pings else None
        client_time = getattr(message.data, "client_time", None)
        if client_time is not None:
            self.latency = max(_now_ms() - client_time, 0) / 1000
        elif sent is not None:
            self.latency = now - sent

    # ------------------------------------------------------------ keepalive

    def tick(self, now: float) -> Tick:
        """Keepalive: send a heartbeat when due; abandon a peer silent for the
        heartbeat timeout after one. Any inbound frame proves it alive.

        Before the first valid message (given :meth:`opened` a time), each
        frame must come within the heartbeat timeout, or the connection is
        abandoned: a server that accepts and then says nothing is not up.
        """
        conn = self._conn
        if conn is not None and self._state is _AWAITING_INIT and conn.probe_since is not None:
            deadline = conn.probe_since + self._timeout
            if now < deadline:
                return Tick(None, None, deadline)
            reason = "no first message within the heartbeat timeout"
            self.abandon(reason)
            return Tick(None, reason, now)
        if conn is None or not conn.up or self._state is not SessionState.STREAMING:
            return Tick(None, None, now + self._interval)
        if self.bytes_received != conn.seen:
            conn.seen = self.bytes_received
            conn.probe_since = None
        if conn.probe_since is not None and self.busy:
            conn.probe_since = now
        if conn.probe_since is not None and now - conn.probe_since >= self._timeout:
            reason = f"no frame for {self._timeout:g} s after a heartbeat"
            self.abandon(reason)
            return Tick(None, reason, now)
        heartbeat = None
        if now >= conn.next_beat:
            heartbeat = (
                self._foreign.ping
                if conn.dialect != NATIVE_DIALECT and self._foreign is not None
                else encode(
                    _make_message(MessageType.HEARTBEAT, HeartbeatPayload(client_time=_now_ms()))
                )
            )
            conn.pings.append(now)
            if conn.probe_since is None:
                conn.probe_since = now
            conn.next_beat = now + self._interval
        probe = conn.probe_since
        next_at = conn.next_beat if probe is None else min(conn.next_beat, probe + self._timeout)
        return Tick(heartbeat, None, next_at)

    # ------------------------------------------------------------- decisions

    def closed(self, code: int | None, reason: str = "", *, by_client: bool = False) -> Decision:
        """The connection ended with close ``code`` (``None``: no close frame).

        ``by_client``: the code is the one the client sent, the server's never
        came; a 1009 then means a frame above :attr:`frame_ceiling` was refused.
        """
        conn = self._conn
        if by_client and code == CloseCode.MESSAGE_TOO_BIG:
            self.parse_errors += 1
            self._log(
                _WARNING,
                "a frame exceeded %d times max_message_size; reconnecting",
                _OVERSIZE_CEILING,
            )
        if conn is not None and conn.resync:
            action = CloseAction.RESET_AND_RETRY
            why = conn.end_reason or "resync"
        elif conn is not None and conn.end_reason is not None:
            action = CloseAction.RETRY
            why = conn.end_reason
        else:
            action = close_action(code)
            why = (
                f"closed with code {code}" + (f" ({reason})" if reason else "")
                if code is not None
                else "connection lost"
            )
        error = None
        if action is CloseAction.FATAL:
            error = ConnectionRejectedError(f"server rejected the client: {why}", code=code)
        return self._decide(action, why, error, was_open=conn is not None and conn.up)

    def connect_failed(self, error: MetricStreamError, action: CloseAction) -> Decision:
        """The attempt failed before a connection was open (refused, rejected
        handshake: see :func:`~metricstream.protocol.handshake_action`)."""
        return self._decide(
            action, str(error), error if action is CloseAction.FATAL else None, was_open=False
        )

    def _decide(
        self,
        action: CloseAction,
        why: str,
        error: MetricStreamError | None,
        *,
        was_open: bool,
    ) -> Decision:
        self._conn = None
        if self._stopping:
            self._state = SessionState.CLOSED
            return Decision(None, None, why, was_open, None, False, self._state)
        self.last_error = why if error is None else str(error)
        if action is CloseAction.FATAL:
            self._state = SessionState.FAILED
            return Decision(action, None, why, was_open, error, False, self._state)
        if not self._reconnect:
            self._state = SessionState.CLOSED
            return Decision(action, None, why, was_open, None, False, self._state)
        delay: float | None
        if self._endpoints > 1:
            # Fail over: the next attempt goes to the next server of the
            # same stream (a resume works on any of them), at once while
            # some server has not been tried since the last connection;
            # after a whole round of failures, the backoff applies.
            self.endpoint = (self.endpoint + 1) % self._endpoints
            self._tried += 1
            if self._tried < self._endpoints:
                self._state = SessionState.BACKING_OFF
                return Decision(action, 0.0, why, was_open, None, False, self._state)
            self._tried = 0
        if action is CloseAction.RESET_AND_RETRY and not self._immediate_used:
            # At once, but only once in a row: a server that keeps closing us
            # at once gets the backoff like anyone else.
            self._immediate_used = True
            delay = 0.0
        else:
            delay = self.backoff.next_delay()
        if delay is None:
            self.last_error = f"gave up after {self.backoff.attempt} reconnect attempts" + (
                f" ({why})" if why else ""
            )
            self._state = SessionState.FAILED
            return Decision(action, None, why, was_open, None, True, self._state)
        self._state = SessionState.BACKING_OFF
        return Decision(action, delay, why, was_open, None, False, self._state)
