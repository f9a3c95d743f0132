"""Decoding is tolerant of the harmless and strict about the wrong."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metricstream import MetricStreamError, ProtocolError
from metricstream.protocol import (
    MessageType,
    MetricsUpdatePayload,
    decode,
    decode_frame,
    encode,
    encode_batch,
    make_message,
    normalize_timestamp,
)

from .test_messages import EXAMPLES, METRICS


def test_unknown_fields_are_ignored() -> None:
    frame = json.dumps(
        {
            "type": "metrics_update",
            "timestamp": 1_732_780_800_123,
            "sequence": 3,
            "extra": {"nested": True},
            "data": {**json.loads(encode(make_message("x", METRICS)))["data"], "new_field": 1},
        }
    )
    message = decode(frame)
    assert message.data == METRICS


def test_unknown_type_decodes_to_a_generic_message() -> None:
    message = decode(b'{"type":"historical_data","timestamp":5,"data":{"a":[1,2]},"sequence":9}')
    assert not message.is_known
    assert message.type == "historical_data"
    assert message.data == {"a": [1, 2]}
    assert message.sequence == 9


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"", "truncated"),
        (b"{", "truncated"),
        (b"not json", "malformed"),
        (b"[]", "Expected `object`, got `array`"),
        (b"42", "Expected `object`, got `int`"),
        (b'"metrics_update"', "Expected `object`, got `str`"),
        (b"{}", "missing required field `type`"),
        (b'{"type": 7}', "Expected `str`, got `int` - at `$.type`"),
        (b'{"type": "metrics_update"}', "invalid metrics_update message: `data` is required"),
        (b'{"type": "metrics_update", "data": null}', "`data` is required"),
        (
            b'{"type": "metrics_update", "data": {"total_requests": "1"}}',
            "Expected `int`, got `str` - at `$.data.total_requests`",
        ),
        (
            b'{"type": "model_update", "data": {"request_count": 1}}',
            "invalid model_update message: Object missing required field",
        ),
        (b'{"type": "ping", "sequence": -1}', "negative sequence"),
        (b'{"type": "ping", "sequence": "1"}', "Expected `int | null`, got `str`"),
        (b'{"type": "ping", "timestamp": -5}', "invalid timestamp"),
        (b'{"type": "ping", "timestamp": "now"}', "at `$.timestamp`"),
        (b'{"type": "ping", "metadata": []}', "at `$.metadata`"),
        (b"[" * 5000 + b"]" * 5000, "Expected `object`, got `array`"),
        (b'{"type": "x", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b"\xff\xfe", "malformed"),
    ],
)
def test_invalid_frames_raise_protocol_error_saying_what_is_wrong(
    frame: bytes, expected: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert expected in str(info.value)
    assert isinstance(info.value, MetricStreamError)


def test_non_text_input_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="expected bytes or str"):
        decode(None)  # type: ignore[arg-type]


def test_percentages_outside_0_to_100_are_rejected() -> None:
    data = json.loads(encode(make_message("x", METRICS)))["data"]
    data["error_rate"] = 150
    with pytest.raises(ProtocolError, match=r"\$\.data\.error_rate"):
        decode(json.dumps({"type": "metrics_update", "data": data}))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_732_780_800.123, 1_732_780_800_123),  # FakeAI: float seconds
        (1_732_780_800, 1_732_780_800_000),  # integer seconds (the seed's own example)
        (1_732_780_800_123, 1_732_780_800_123),  # milliseconds stay
        (0, 0),
    ],
)
def test_timestamps_are_normalised_to_integer_milliseconds(value: float, expected: int) -> None:
    assert normalize_timestamp(value) == expected
    message = decode(json.dumps({"type": "pong", "timestamp": value}))
    assert message.timestamp == expected
    assert isinstance(message.timestamp, int)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, float(1 << 60)])
def test_impossible_timestamps_are_rejected(value: float) -> None:
    with pytest.raises(ProtocolError, match="invalid timestamp"):
        normalize_timestamp(value)


def test_optional_data_may_be_absent() -> None:
    assert decode(b'{"type": "ping"}').data is None
    assert decode(b'{"type": "unsubscribe", "data": {"ignored": 1}}').data is None
    heartbeat = decode(b'{"type": "heartbeat"}')
    assert heartbeat.data.client_time is None
    init = decode(b'{"type": "init", "sequence": 0}')
    assert init.data.models == {}
    assert init.data.metrics is None


def test_batch_frames_decode_in_order() -> None:
    messages = [make_message(t, EXAMPLES[t], sequence=i) for i, t in enumerate(MessageType)]
    frame = encode_batch(messages)
    assert json.loads(frame)[0]["type"] == "metrics_update"
    assert decode_frame(frame) == messages
    # A single object is a batch of one.
    assert decode_frame(encode(messages[0])) == messages[:1]


def test_batch_with_one_bad_message_is_rejected_whole() -> None:
    good = encode(make_message(MessageType.PING, None))
    frame = b"[" + good + b',{"type": "metrics_update", "data": {}}]'
    with pytest.raises(ProtocolError, match="metrics_update"):
        decode_frame(frame)
    with pytest.raises(ProtocolError, match="truncated"):
        decode_frame(b'[{"type": "ping"},')


# -- properties ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_protocol_error(frame: bytes) -> None:
    try:
        decode(frame)
        decode_frame(frame)
    except ProtocolError:
        pass


@given(json_values)
def test_any_json_value_decodes_or_raises_protocol_error(value: Any) -> None:
    frame = json.dumps(value)
    with contextlib.suppress(ProtocolError):
        decode(frame)


type_names = st.sampled_from([t.value for t in MessageType]) | st.text(max_size=12)


@given(
    type_name=type_names,
    timestamp=json_values,
    data=json_values,
    sequence=json_values,
    metadata=json_values,
)
def test_any_envelope_shape_decodes_or_raises_protocol_error(
    type_name: str, timestamp: Any, data: Any, sequence: Any, metadata: Any
) -> None:
    frame = json.dumps(
        {
            "type": type_name,
            "timestamp": timestamp,
            "data": data,
            "sequence": sequence,
            "metadata": metadata,
        }
    )
    with contextlib.suppress(ProtocolError):
        decode(frame)


finite = st.floats(min_value=0, max_value=1e12, allow_nan=False)
percent = st.floats(min_value=0, max_value=100, allow_nan=False)
counts = st.integers(min_value=0, max_value=2**53)

metrics_payloads = st.builds(
    MetricsUpdatePayload,
    total_requests=counts,
    total_tokens=counts,
    total_cost=finite,
    avg_latency_ms=finite,
    error_rate=percent,
    streaming_percentage=percent,
    requests_per_second=finite,
    tokens_per_second=finite,
    active_connections=counts,
)


@given(
    payload=metrics_payloads,
    sequence=st.none() | st.integers(min_value=0, max_value=2**63),
    timestamp=st.integers(min_value=100_000_000_000, max_value=2**53),
    metadata=st.none() | st.dictionaries(st.text(), st.text() | st.integers()),
)
def test_valid_messages_round_trip(
    payload: MetricsUpdatePayload, sequence: int | None, timestamp: int, metadata: Any
) -> None:
    message = make_message(
        MessageType.METRICS_UPDATE,
        payload,
        sequence=sequence,
        metadata=metadata,
        timestamp=timestamp,
    )
    assert decode(encode(message)) == message
