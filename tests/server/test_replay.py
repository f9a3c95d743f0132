"""The in-memory replay log: count and age bounds, epochs, resume lookups."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from metricstream.exceptions import ConfigError, PublishError
from metricstream.protocol import encode
from metricstream.server import EncodedFrame, LogEntry, MemoryReplayLog, ReplayLog, new_epoch
from tests.server.conftest import request


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(seq: int) -> LogEntry:
    message = msgspec.structs.replace(request(str(seq)), sequence=seq)
    return LogEntry.of(message, EncodedFrame(encode(message)))


def fill(log: MemoryReplayLog, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        log.append(entry(seq))


def test_is_a_replay_log() -> None:
    assert isinstance(MemoryReplayLog(), ReplayLog)


def test_entries_after_returns_everything_newer_in_order() -> None:
    log = MemoryReplayLog()
    fill(log, 1, 10)
    got = log.entries_after(6)
    assert got is not None
    assert [e.sequence for e in got] == [7, 8, 9, 10]
    assert log.entries_after(10) == []
    assert [e.sequence for e in log.entries_after(0) or []] == list(range(1, 11))


def test_beyond_the_newest_or_negative_is_not_resumable() -> None:
    log = MemoryReplayLog()
    fill(log, 1, 3)
    assert log.entries_after(4) is None
    assert log.entries_after(-1) is None


def test_empty_log_resumes_only_from_zero() -> None:
    log = MemoryReplayLog()
    assert log.entries_after(0) == []
    assert log.entries_after(1) is None


def test_count_bound_drops_the_oldest_and_refuses_partial_resume() -> None:
    log = MemoryReplayLog(max_entries=5)
    fill(log, 1, 12)
    assert len(log) == 5
    assert [e.sequence for e in log.entries_after(7) or []] == [8, 9, 10, 11, 12]
    # Message 7 is gone: resuming from 6 would skip it, so it is refused.
    assert log.entries_after(6) is None


def test_age_bound_expires_old_entries() -> None:
    clock = Clock()
    log = MemoryReplayLog(max_age=10.0, clock=clock)
    fill(log, 1, 3)
    clock.now += 6
    fill(log, 4, 5)
    clock.now += 5  # 1..3 are now 11 s old, 4..5 are 5 s old
    assert log.entries_after(3) is not None
    assert log.entries_after(2) is None
    assert len(log) == 2
    clock.now += 100
    # Everything expired, but nothing after 5 was missed: an empty resume.
    assert log.entries_after(5) == []
    assert log.entries_after(4) is None


def test_each_log_has_its_own_epoch() -> None:
    assert MemoryReplayLog().epoch != MemoryReplayLog().epoch
    assert MemoryReplayLog(epoch="fixed").epoch == "fixed"
    assert len(new_epoch()) == 16


@pytest.mark.parametrize(("kwargs"), [{"max_entries": 0}, {"max_age": 0.0}, {"max_age": -1.0}])
def test_invalid_bounds_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        MemoryReplayLog(**kwargs)  # type: ignore[arg-type]


def test_repr_names_the_bounds() -> None:
    text = repr(MemoryReplayLog(max_entries=7, max_age=3.0, epoch="e"))
    assert "max_entries=7" in text
    assert "'e'" in text


def test_entry_keeps_the_frame_type_and_model_not_the_message() -> None:
    message = msgspec.structs.replace(request("r", model="m7"), sequence=3)
    got = LogEntry.of(message, EncodedFrame(encode(message)))
    assert (got.sequence, got.type, got.model) == (3, "request_update", "m7")
    assert got.size == len(encode(message))
    kept = [getattr(got, f.name) for f in dataclasses.fields(got)]
    assert not any(v is message or v is message.data for v in kept)


def test_entry_of_a_message_without_sequence_is_refused() -> None:
    with pytest.raises(PublishError, match="sequence"):
        LogEntry.of(request("r"), EncodedFrame(encode(request("r"))))
