"""The client session as a pure state machine: no event loop, no socket, no clock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from metricstream.exceptions import ConnectionRejectedError, StreamConnectionError
from metricstream.protocol import (
    Backoff,
    ClientSession,
    CloseAction,
    Opened,
    Resync,
    SessionState,
    WebSocketMessage,
    handshake_action,
)

S = SessionState


def frame(**message: Any) -> bytes:
    return json.dumps({"timestamp": 1, **message}).encode()


def init(sequence: int, epoch: str = "e1", *, resumed: bool = False) -> bytes:
    return frame(
        type="init", sequence=sequence, data={}, metadata={"epoch": epoch, "resumed": resumed}
    )


def request(sequence: int, model: str = "m") -> bytes:
    data = {
        "id": f"r{sequence}",
        "model": model,
        "created": 1.0,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "total_tokens": 2,
        "latency_ms": 1.0,
        "streaming": False,
        "status": "success",
        "cost": 0.0,
    }
    return frame(type="request_update", sequence=sequence, data=data)


def session(**kwargs: Any) -> ClientSession:
    kwargs.setdefault("backoff", Backoff(1.0, 2.0, 8.0, jitter=0))
    return ClientSession(**kwargs)


def streaming(**kwargs: Any) -> ClientSession:
    s = session(**kwargs)
    s.start()
    s.connect()
    s.opened()
    s.receive(init(10), now=0.0)
    assert s.state is S.STREAMING
    return s


def delivered(events: list[Any]) -> list[WebSocketMessage[Any]]:
    return [e for e in events if isinstance(e, WebSocketMessage)]


def test_a_connection_goes_through_the_states_in_order() -> None:
    s = session()
    assert s.state is S.CLOSED
    s.start()
    params = s.connect()
    assert s.state is S.CONNECTING
    assert params == {"types": None, "models": None, "batch": None, "token": None}
    s.opened()
    assert s.state is S.AWAITING_INIT
    events = s.receive(init(10), now=0.0)
    assert isinstance(events[0], Opened)
    assert events[0].first
    assert delivered(events)[0].type == "init"
    assert s.state is S.STREAMING
    assert [m.sequence for m in delivered(s.receive(request(11), now=0.1))] == [11]
    decision = s.closed(1001, "going away")
    assert decision.action is CloseAction.RETRY
    assert decision.delay == 1.0
    assert decision.was_open
    assert decision.reason == "closed with code 1001 (going away)"
    assert s.state is S.BACKING_OFF
    # The next attempt resumes from the last applied message.
    assert s.connect() | {} == {
        "types": None,
        "models": None,
        "batch": None,
        "token": None,
        "since": "11",
        "epoch": "e1",
    }
    s.opened()
    events = s.receive(init(11, resumed=True), now=1.0)
    assert isinstance(events[0], Opened)
    assert not events[0].first
    assert s.resumed
    assert s.resumes == 1


def test_duplicates_and_stale_messages_are_dropped() -> None:
    s = streaming()
    s.receive(request(11), now=0)
    assert delivered(s.receive(request(11), now=0)) == []
    assert s.tracker.duplicates == 1


def test_a_gap_on_an_unfiltered_stream_resyncs_once_then_is_accepted() -> None:
    s = streaming()
    events = s.receive(request(13), now=0)
    assert isinstance(events[-1], Resync)
    assert delivered(events) == []
    assert s.state is S.RESYNCING
    decision = s.closed(1000, "resync")
    assert decision.action is CloseAction.RESET_AND_RETRY
    assert decision.delay == 0.0
    assert s.connect()["since"] == "10"
    s.opened()
    s.receive(init(10, resumed=True), now=1)
    # The server still cannot fill the hole: the gap is accepted this time.
    assert [m.sequence for m in delivered(s.receive(request(13), now=1))] == [13]
    assert s.tracker.gaps == 1
    assert s.tracker.missed == 2


def test_a_filtered_stream_has_gaps_by_design() -> None:
    s = streaming(types=("request_update",), models=("m",))
    assert delivered(s.receive(request(15, model="m"), now=0))
    # Filtered out by the client too (a server that ignores filters).
    assert delivered(s.receive(request(16, model="other"), now=0)) == []
    assert s.url_params()["types"] == "request_update"


def test_set_filter_while_streaming_turns_the_gap_check_off() -> None:
    s = streaming()
    s.set_filter(("request_update",), None)
    assert [m.sequence for m in delivered(s.receive(request(20), now=0))] == [20]


def test_an_unexpected_resume_resyncs_to_a_fresh_snapshot() -> None:
    s = session()
    s.start()
    s.connect()
    s.opened()
    events = s.receive(init(5, "other", resumed=True), now=0)
    assert isinstance(events[-1], Resync)
    assert s.tracker.last_sequence is None


def test_one_bad_message_does_not_take_its_batch_down() -> None:
    s = streaming()
    bad = b'{"type":"request_update","sequence":12,"data":{"id":1}}'
    batch = b"[" + request(11) + b"," + bad + b"," + request(13) + b"]"
    events = s.receive(batch, now=0)
    # 11 is applied, the bad 12 skipped; 13 then shows the hole as a gap,
    # which an unfiltered stream answers with a resume.
    assert [m.sequence for m in delivered(events)] == [11]
    assert isinstance(events[-1], Resync)
    assert s.parse_errors == 1
    s = streaming(types=("request_update",))
    assert [m.sequence for m in delivered(s.receive(batch, now=0))] == [11, 13]


def test_invalid_and_oversized_frames_are_counted_and_skipped() -> None:
    s = streaming(max_message_size=2000)
    assert s.receive(b"not json", now=0) == []
    assert s.receive(b"[" + b" " * 3000 + b"]", now=0) == []
    assert s.receive(frame(type="no_such_type", data={}), now=0) == []
    assert (s.parse_errors, s.unknown_messages) == (2, 1)
    assert delivered(s.receive(request(11), now=0))


@pytest.mark.parametrize(
    ("code", "action", "state"),
    [
        (4001, CloseAction.FATAL, S.FAILED),
        (1008, CloseAction.FATAL, S.FAILED),
        (4029, CloseAction.RETRY, S.BACKING_OFF),
        (None, CloseAction.RETRY, S.BACKING_OFF),
    ],
)
def test_close_codes_decide_by_the_table(
    code: int | None, action: CloseAction, state: SessionState
) -> None:
    s = streaming()
    decision = s.closed(code)
    assert decision.action is action
    assert s.state is state is decision.state
    if action is CloseAction.FATAL:
        assert isinstance(decision.error, ConnectionRejectedError)
        assert decision.error.code == code
        assert decision.delay is None


def test_slow_consumer_reconnects_at_once_only_once_in_a_row() -> None:
    s = streaming()
    assert s.closed(4008).delay == 0.0
    s.connect()
    s.opened()
    # Closed again before the connection proved itself: backoff this time.
    assert s.closed(4008).delay == 1.0
    s.connect()
    s.opened()
    s.receive(init(10, resumed=True), now=0)
    assert s.closed(4008).delay == 0.0  # a proven connection resets both


def test_attempts_run_out_and_the_session_fails() -> None:
    s = session(backoff=Backoff(1.0, 2.0, 8.0, jitter=0, max_attempts=2))
    s.start()
    delays = []
    for _ in range(3):
        s.connect()
        decision = s.connect_failed(StreamConnectionError("refused"), CloseAction.RETRY)
        delays.append(decision.delay)
    assert delays == [1.0, 2.0, None]
    assert decision.gave_up
    assert s.state is S.FAILED
    assert s.last_error == "gave up after 2 reconnect attempts (refused)"
    s.start()  # starting over resets the backoff
    s.connect()
    assert s.connect_failed(StreamConnectionError("x"), CloseAction.RETRY).delay == 1.0


def test_a_rejected_handshake_fails_for_good() -> None:
    s = session()
    s.start()
    s.connect()
    error = ConnectionRejectedError("handshake rejected with HTTP 401", code=401)
    decision = s.connect_failed(error, handshake_action(401))
    assert decision.state is S.FAILED
    assert decision.error is error


def test_stop_ends_without_a_reconnect_and_reconnect_off_closes() -> None:
    s = streaming()
    s.stop("disconnected by the client")
    decision = s.closed(1000)
    assert decision.action is None
    assert decision.delay is None
    assert decision.was_open
    assert decision.reason == "disconnected by the client"
    assert s.state is S.CLOSED
    s = streaming(reconnect=False)
    assert s.closed(1001).state is S.CLOSED


def test_keepalive_beats_then_abandons_a_silent_peer() -> None:
    s = streaming(heartbeat_interval=10.0, heartbeat_timeout=3.0)
    tick = s.tick(0.0)
    assert tick.heartbeat is not None
    assert json.loads(tick.heartbeat)["type"] == "heartbeat"
    assert tick.next_at == 3.0  # the probe deadline comes before the next beat
    assert s.tick(2.9).abandon is None
    tick = s.tick(3.0)
    assert tick.abandon == "no frame for 3 s after a heartbeat"
    # The connection ends with that reason, and is retried with backoff.
    decision = s.closed(None)
    assert decision.reason == tick.abandon
    assert decision.action is CloseAction.RETRY


def test_any_frame_proves_the_peer_alive_and_a_busy_reader_is_not_silence() -> None:
    s = streaming(heartbeat_interval=10.0, heartbeat_timeout=3.0)
    s.tick(0.0)
    s.receive(frame(type="pong", data={}), now=1.0)
    assert s.latency == 1.0  # no client_time echoed: measured from the send
    tick = s.tick(5.0)
    assert tick.abandon is None
    assert tick.heartbeat is None
    assert tick.next_at == 10.0
    assert s.tick(10.0).heartbeat is not None
    s.busy = True
    assert s.tick(20.0).abandon is None  # our callback held the reader
    s.busy = False
    assert s.tick(23.0).abandon is not None


class Foreign:
    """A made-up dialect: frames starting with ``!`` are its own."""

    name = "foreign"
    ping = b"!ping"

    def recognises(self, frame: bytes) -> bool:
        return frame.startswith(b"!")

    def adapt(self, frame: bytes) -> list[WebSocketMessage[Any]]:
        from metricstream.protocol import decode

        return [decode(frame[1:])]

    def subscribe_frames(self, models: tuple[str, ...] | None) -> list[bytes]:
        return [b"!models " + ",".join(models or ()).encode()]


def test_auto_dialect_is_decided_by_the_first_frame() -> None:
    s = session(dialect="auto", foreign=Foreign())
    s.start()
    s.connect()
    s.opened()
    events = s.receive(b"!" + frame(type="heartbeat", data={}), now=0)
    assert s.dialect == "foreign"
    assert events[0] == Opened(first=True)
    assert delivered(events)[0].type == "heartbeat"
    assert s.tick(0).heartbeat == b"!ping"
    # A foreign stream has no sequences to resume from.
    assert "since" not in s.url_params()


def test_what_is_skipped_is_reported_through_the_log_sink() -> None:
    said: list[tuple[int, str]] = []
    s = streaming(log=lambda level, message, *args: said.append((level, message % args)))
    s.receive(b"not json", now=0)
    assert said[-1][0] == 30  # logging.WARNING
    assert said[-1][1].startswith("skipped an invalid frame")


def test_the_first_message_must_come_within_the_heartbeat_timeout() -> None:
    s = session(heartbeat_interval=10.0, heartbeat_timeout=3.0)
    s.start()
    s.connect()
    s.opened(now=100.0)
    tick = s.tick(100.0)
    assert tick.heartbeat is None  # nothing is sent before the first message
    assert tick.abandon is None
    assert tick.next_at == 103.0
    # Any frame, even one skipped as invalid, restarts the wait.
    s.receive(b"not json", now=102.0)
    assert s.tick(104.0).abandon is None
    assert s.tick(104.0).next_at == 105.0
    tick = s.tick(105.0)
    assert tick.abandon == "no first message within the heartbeat timeout"
    decision = s.closed(None)
    assert decision.reason == tick.abandon
    assert decision.action is CloseAction.RETRY
    assert not decision.was_open


def test_once_up_the_keepalive_beats_at_once_not_at_the_first_message_deadline() -> None:
    s = session(heartbeat_interval=10.0, heartbeat_timeout=3.0)
    s.start()
    s.connect()
    s.opened(now=0.0)
    s.receive(init(1), now=1.0)
    tick = s.tick(1.0)
    assert tick.heartbeat is not None
    assert tick.next_at == 4.0  # the heartbeat's own probe, from now
    # Without a time, opened() sets no deadline (the caller keeps its own).
    s = session(heartbeat_timeout=3.0)
    s.start()
    s.connect()
    s.opened()
    assert s.tick(1000.0).abandon is None


def test_frames_beyond_the_ceiling_fail_the_connection_and_count_as_parse_errors() -> None:
    assert session().frame_ceiling is None
    s = streaming(max_message_size=1000)
    assert s.frame_ceiling == 4000
    # A server's own 1009 is just a close; the client's means a frame it refused.
    s.closed(1009, "too big")
    assert s.parse_errors == 0
    s.connect()
    s.opened()
    s.receive(init(10), now=0.0)
    decision = s.closed(1009, "", by_client=True)
    assert s.parse_errors == 1
    assert "1009" in decision.reason
    assert decision.action is CloseAction.RETRY


def _sent(request: Any) -> list[dict[str, Any]]:
    return [json.loads(f) for f in request.frames]


def test_set_filter_says_what_asks_the_native_server_for_it() -> None:
    s = session()
    assert s.set_filter(("request_update",), None).frames == ()  # not connected
    s = streaming()
    assert s.is_up
    request = s.set_filter(("request_update",), ("m",))
    assert request.answered
    [message] = _sent(request)
    assert message["type"] == "subscribe"
    assert message["data"] == {"types": ["request_update"], "models": ["m"]}
    assert s.subscription.types == ["request_update"]
    assert s.subscription.models == ["m"]
    [message] = _sent(s.set_filter(None, None))
    assert message["type"] == "unsubscribe"
    assert s.subscription.types is None
    assert s.subscription.models is None


def test_set_filter_on_a_foreign_dialect_sends_its_frames_unanswered() -> None:
    s = session(dialect="auto", foreign=Foreign())
    s.start()
    s.connect()
    s.opened()
    assert s.set_filter(None, ("m",)).frames == ()  # not up before its first message
    s.receive(b"!" + frame(type="heartbeat", data={}), now=0)
    request = s.set_filter(None, ("a", "b"))
    assert request.frames == (b"!models a,b",)
    assert not request.answered
