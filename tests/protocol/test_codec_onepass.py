"""The one-pass decode gives exactly what the two-step reference path gives.

``decode``/``decode_frame`` first try a tagged union of typed envelopes and
fall back to the two-step path for anything it refuses; these properties
check that the fast pass never accepts more, never decodes differently, and
never changes an error, against the two-step path run on its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from metricstream import ProtocolError
from metricstream.protocol import MessageType, codec, decode, decode_frame

from .test_codec import json_values
from .test_messages import EXAMPLES


def _reference(frame: str) -> Any:
    try:
        envelope = codec._envelope_decoder.decode(frame)
    except (msgspec.MsgspecError, RecursionError, TypeError) as exc:
        raise ProtocolError(f"invalid message: {codec._describe(exc)}") from exc
    return codec._finish(envelope)


def _reference_frame(frame: str) -> Any:
    try:
        decoded = codec._batch_decoder.decode(frame)
    except (msgspec.MsgspecError, RecursionError, TypeError) as exc:
        raise ProtocolError(f"invalid frame: {codec._describe(exc)}") from exc
    if isinstance(decoded, list):
        return [codec._finish(envelope) for envelope in decoded]
    return [codec._finish(decoded)]


def _outcome(fn: Callable[[str], Any], frame: str) -> tuple[str, Any]:
    try:
        return "ok", fn(frame)
    except ProtocolError as exc:
        return "error", str(exc)


# Valid payloads of every type (so the fast pass succeeds often), and
# arbitrary JSON (so it refuses often).
valid_data = st.sampled_from([msgspec.to_builtins(p) for p in EXAMPLES.values() if p is not None])
type_names = st.sampled_from([t.value for t in MessageType]) | st.text(max_size=8)
absent = object()


def _field(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.just(absent) | values


envelopes = st.builds(
    lambda **fields: {k: v for k, v in fields.items() if v is not absent},
    type=_field(type_names | json_values),
    timestamp=_field(
        st.integers(min_value=-10, max_value=2**60) | st.floats(allow_nan=False) | json_values
    ),
    data=_field(valid_data | json_values | st.just({})),
    sequence=_field(st.integers(min_value=-3, max_value=2**63) | json_values),
    metadata=_field(st.dictionaries(st.text(max_size=4), json_values) | json_values),
)


@given(envelopes)
def test_decode_matches_the_two_step_path(envelope: dict[str, Any]) -> None:
    frame = json.dumps(envelope)
    assert _outcome(decode, frame) == _outcome(_reference, frame)


@given(st.lists(envelopes, max_size=4) | envelopes)
def test_decode_frame_matches_the_two_step_path(value: Any) -> None:
    frame = json.dumps(value)
    assert _outcome(decode_frame, frame) == _outcome(_reference_frame, frame)


def test_valid_message_of_every_type_takes_the_one_pass_path() -> None:
    for mtype in MessageType:
        frame = json.dumps(
            {"type": mtype.value, "timestamp": 1_732_780_800_000, "data": {}, "sequence": 1}
        )
        example = EXAMPLES.get(mtype)
        if example is not None:
            frame = frame.replace(
                '"data": {}', f'"data": {json.dumps(msgspec.to_builtins(example))}'
            )
        typed = codec._typed_decoder.decode(frame)
        assert codec._finish_typed(typed) == _reference(frame) == decode(frame)


def test_duplicate_type_keys_are_decided_by_the_two_step_path() -> None:
    frame = '{"type": "heartbeat", "type": "pong", "data": {}}'
    assert _outcome(decode, frame) == _outcome(_reference, frame)
    assert decode(frame).type is MessageType.PONG
