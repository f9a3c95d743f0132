"""The subscription filter: one rule for the hub, the endpoint and the client."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metricstream.exceptions import InvalidFilterError, ProtocolError
from metricstream.protocol import (
    MODEL_SCOPED_TYPES,
    STREAM_TYPES,
    Filter,
    MessageType,
    SubscribePayload,
)

ALL_TYPES = sorted(t.value for t in STREAM_TYPES)


def test_no_filter_accepts_everything() -> None:
    everything = Filter()
    assert everything.is_everything
    for mtype in ALL_TYPES:
        assert everything.accepts(mtype, "any-model")
        assert everything.accepts(mtype, None)


def test_types_restrict_types() -> None:
    only = Filter.of(["metrics_update"])
    assert only.accepts("metrics_update", None)
    assert not only.accepts("model_update", "a")
    assert not only.is_everything


def test_models_restrict_model_scoped_types_only() -> None:
    by_model = Filter.of(models=["a"])
    assert by_model.accepts("model_update", "a")
    assert not by_model.accepts("model_update", "b")
    assert not by_model.accepts("request_update", "b")
    assert not by_model.accepts("error_update", "b")
    # An error about no model in particular is everybody's business.
    assert by_model.accepts("error_update", None)
    # Types that name no model pass whatever the models filter says.
    assert by_model.accepts("metrics_update", None)
    assert by_model.accepts("rate_limit_update", None)


def test_empty_lists_mean_no_filter() -> None:
    assert Filter.of([], []) == Filter()
    assert Filter.from_payload(SubscribePayload(types=[], models=None)).is_everything


def test_unknown_types_are_refused_with_a_typed_error() -> None:
    with pytest.raises(InvalidFilterError, match="metric_update"):
        Filter.of(["metric_update"])
    # Also a ProtocolError and a ValueError, for callers catching those.
    with pytest.raises(ProtocolError):
        Filter.of(["pong"])
    with pytest.raises(ValueError, match="non-empty strings"):
        Filter.of(models=[""])


def test_bounds_are_checked_by_of_and_say_which_bound() -> None:
    # Within both bounds: a filter, as without them.
    assert Filter.of(["model_update"], ["a", "b"], max_entries=2, max_chars=20) == Filter.of(
        ["model_update"], ["a", "b"]
    )
    with pytest.raises(InvalidFilterError, match="more than 2 models") as entries:
        Filter.of(models=["a", "b", "c"], max_entries=2)
    assert entries.value.bound == "entries"
    with pytest.raises(InvalidFilterError, match="longer than 5 characters") as chars:
        Filter.of(["model_update"], max_chars=5)
    assert chars.value.bound == "chars"
    # Characters are counted over both dimensions together.
    with pytest.raises(InvalidFilterError) as both:
        Filter.of(models=["abc"], types=["model_update"], max_chars=14)
    assert both.value.bound == "chars"
    # A wrong name is not a bound.
    with pytest.raises(InvalidFilterError) as name:
        Filter.of(["metric_update"], max_entries=2, max_chars=100)
    assert name.value.bound is None


def test_bounds_come_before_names_and_before_any_set() -> None:
    # Unknown names past a bound are refused for the bound (the answer the
    # server closes on), without the names being looked at.
    with pytest.raises(InvalidFilterError) as exc:
        Filter.of(["bogus"] * 3, max_entries=2)
    assert exc.value.bound == "entries"
    # Duplicates count: the bound is on the list as sent, not on its set.
    with pytest.raises(InvalidFilterError):
        Filter.of(models=["a"] * 3, max_entries=2)
    # Any iterable is read once.
    assert Filter.of(types=(t for t in ["model_update"]), max_entries=2).types == {"model_update"}


def test_from_query_and_from_payload_take_the_same_bounds() -> None:
    with pytest.raises(InvalidFilterError) as query:
        Filter.from_query({"models": ["a,b", "c"]}, max_entries=2)
    assert query.value.bound == "entries"
    # Blank entries are not entries.
    assert Filter.from_query({"models": ["a,,b, "]}, max_entries=2).models == {"a", "b"}
    with pytest.raises(InvalidFilterError) as payload:
        Filter.from_payload(SubscribePayload(types=None, models=["x" * 11]), max_chars=10)
    assert payload.value.bound == "chars"


def test_from_query_splits_and_joins_repeated_parameters() -> None:
    filt = Filter.from_query(
        {"types": ["metrics_update, model_update", "request_update"], "models": ["a,,b"]}
    )
    assert filt.types == {"metrics_update", "model_update", "request_update"}
    assert filt.models == {"a", "b"}
    assert Filter.from_query({"types": [""], "since": ["3"]}) == Filter()
    with pytest.raises(InvalidFilterError):
        Filter.from_query({"types": ["bogus"]})


def test_payload_and_query_round_trip() -> None:
    filt = Filter.of(["model_update", "metrics_update"], ["b", "a"])
    payload = filt.to_payload()
    assert payload == SubscribePayload(types=["metrics_update", "model_update"], models=["a", "b"])
    assert Filter.from_payload(payload) == filt
    assert filt.query_params() == {"types": "metrics_update,model_update", "models": "a,b"}
    assert Filter().query_params() == {"types": None, "models": None}


@given(
    types=st.none() | st.sets(st.sampled_from(ALL_TYPES)),
    models=st.none() | st.sets(st.sampled_from(["a", "b", "c"]), min_size=1),
    mtype=st.sampled_from(ALL_TYPES),
    model=st.none() | st.sampled_from(["a", "b", "c", "d"]),
)
def test_accepts_is_the_documented_rule(
    types: set[str] | None, models: set[str] | None, mtype: str, model: str | None
) -> None:
    # The rule as docs/protocol.md states it, written out independently.
    filt = Filter(
        None if types is None else frozenset(types), None if models is None else frozenset(models)
    )
    type_ok = types is None or mtype in types
    scoped = MessageType(mtype) in MODEL_SCOPED_TYPES
    model_ok = models is None or not scoped or model is None or model in models
    assert filt.accepts(mtype, model) is (type_ok and model_ok)


def test_accepts_message_reads_the_payload_model() -> None:
    class Data:
        model = "b"

    assert not Filter.of(models=["a"]).accepts_message("model_update", Data())
    assert Filter.of(models=["a"]).accepts_message("metrics_update", object())
