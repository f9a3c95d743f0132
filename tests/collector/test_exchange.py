"""The per-event reader both recording paths share: cheap, and never thrown by odd input."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from metricstream.collector import MetricsCollector
from metricstream.collector._exchange import Exchange, record_exchange
from metricstream.protocol import MessageType
from tests.collector.helpers import RecordingPublisher


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _clock() -> float:
    return 1.0


def test_odd_events_are_skipped_and_counted_the_rest_still_read() -> None:
    exchange = Exchange(1 << 20)
    exchange.start_response(200, "text/event-stream; charset=utf-8")
    good = {"id": "c1", "model": "m", "choices": [{"delta": {"content": "hi"}, "extra": [1]}]}
    body = b"".join(
        [
            _event(good),
            b"data: not json\n\n",
            _event([1, 2]),
            _event({"choices": "not a list"}),
            _event({"usage": {"prompt_tokens": "5"}}),
            _event({"usage": {"prompt_tokens": True}}),
            _event({"choices": [{"delta": {"reasoning_content": "hmm"}}], "new_field": {}}),
            _event({"choices": [{"delta": {"tool_calls": [{"id": "t"}]}}]}),
            _event({"choices": [{"delta": {"content": ""}, "finish_reason": "stop"}]}),
            _event({"usage": {"prompt_tokens": 7, "completion_tokens": -1}}),
            b"data: [DONE]\n\n",
        ]
    )
    # Cut at every 7 bytes: events straddle pieces.
    for i in range(0, len(body), 7):
        exchange.feed(body[i : i + 7], _clock)
    assert exchange.bad_events == 5
    assert exchange.content_events == 3
    assert (exchange.model, exchange.request_id, exchange.finish_reason) == ("m", "c1", "stop")
    assert (exchange.prompt_tokens, exchange.completion_tokens) == (7, 0)
    assert exchange.usage_seen


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_any_bytes_never_raise(body: bytes, step: int) -> None:
    exchange = Exchange(1 << 20)
    exchange.start_response(200, "text/event-stream")
    for i in range(0, len(body), step):
        exchange.feed(b"data: " + body[i : i + step] + b"\n", _clock)
    assert exchange.content_events + exchange.bad_events <= len(body) // step + 1


def test_an_error_body_of_any_shape_is_recorded_as_a_failure() -> None:
    publisher = RecordingPublisher()
    collector = MetricsCollector(publisher, system_stats=False)
    for body in (
        {"error": "plain text"},
        {"error": {"message": "quota", "code": 42}},
        {"error": {"message": None, "type": "t"}},
    ):
        exchange = Exchange(1 << 20)
        exchange.start_response(400, "application/json")
        exchange.feed(json.dumps(body).encode(), _clock)
        record_exchange(
            collector,
            exchange,
            request={"model": "asked"},
            started=0.0,
            finished=0.5,
            service="/v1/x",
            endpoint="/v1/x",
            default_model="d",
        )
    records = [m.data for m in publisher.of_type(MessageType.REQUEST_UPDATE)]
    assert [r.error_message for r in records] == ["plain text", "quota", "error"]
    assert {r.model for r in records} == {"asked"}
    errors = [m.data for m in publisher.of_type(MessageType.ERROR_UPDATE)]
    assert [(e.error_type, e.severity) for e in errors] == [
        ("http_400", "low"),
        ("http_400", "low"),
        ("t", "low"),
    ]
