"""SequenceTracker: duplicates, reordering, gaps and epochs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metricstream.protocol import SequenceTracker, SequenceVerdict

NEW, DUP, OOO, GAP = (
    SequenceVerdict.NEW,
    SequenceVerdict.DUPLICATE,
    SequenceVerdict.OUT_OF_ORDER,
    SequenceVerdict.GAP,
)


def started(epoch: str = "e1", sequence: int = 10) -> SequenceTracker:
    tracker = SequenceTracker()
    assert tracker.start(epoch, sequence, resumed=False) is False
    return tracker


def test_contiguous_sequences_are_new() -> None:
    tracker = started()
    assert [tracker.observe(s).verdict for s in (11, 12, 13)] == [NEW, NEW, NEW]
    assert tracker.last_sequence == 13
    assert tracker.accepted == 3
    assert (tracker.duplicates, tracker.out_of_order, tracker.gaps) == (0, 0, 0)


def test_first_sequence_without_init_is_the_baseline() -> None:
    tracker = SequenceTracker()
    assert tracker.observe(500).verdict is NEW
    assert tracker.observe(501).verdict is NEW


def test_duplicates_are_reported_and_not_applied() -> None:
    tracker = started()
    tracker.observe(11)
    tracker.observe(12)
    result = tracker.observe(12)
    assert result.verdict is DUP
    assert not result.apply
    assert tracker.observe(11).verdict is DUP
    assert tracker.observe(10).verdict is DUP  # the snapshot already reflects 10
    assert tracker.duplicates == 3
    assert tracker.last_sequence == 12


def test_gap_counts_missing_and_a_late_arrival_is_out_of_order() -> None:
    tracker = started()
    result = tracker.observe(15)  # 11..14 missing
    assert result.verdict is GAP
    assert result.missing == 4
    assert result.apply
    assert (tracker.gaps, tracker.missed) == (1, 4)
    late = tracker.observe(12)
    assert late.verdict is OOO
    assert not late.apply
    # The same late message again is now a duplicate.
    assert tracker.observe(12).verdict is DUP
    assert tracker.out_of_order == 1
    assert tracker.observe(16).verdict is NEW


def test_a_full_snapshot_restarts_the_position() -> None:
    tracker = started("e1", 10)
    tracker.observe(11)
    assert tracker.start("e1", 3, resumed=False) is False
    assert tracker.last_sequence == 3
    assert tracker.observe(4).verdict is NEW


def test_a_resume_of_the_same_epoch_keeps_the_position() -> None:
    tracker = started("e1", 10)
    tracker.observe(11)
    assert tracker.start("e1", 11, resumed=True) is True
    assert tracker.observe(11).verdict is DUP
    assert tracker.observe(12).verdict is NEW


def test_a_new_epoch_resets_even_when_called_a_resume() -> None:
    tracker = started("e1", 10)
    tracker.observe(11)
    assert tracker.start("e2", 0, resumed=True) is False
    assert tracker.epoch == "e2"
    # Sequence 1 of the new epoch is new, though 1 < 11 in the old one.
    assert tracker.observe(1).verdict is NEW


def test_reset_forgets_position_and_keeps_counters() -> None:
    tracker = started()
    tracker.observe(10)
    tracker.reset()
    assert tracker.last_sequence is None
    assert tracker.epoch is None
    assert tracker.duplicates == 1
    tracker.reset_counters()
    assert tracker.duplicates == 0
    assert "SequenceTracker(epoch=None" in repr(tracker)


def test_holes_memory_is_bounded() -> None:
    tracker = started("e", 0)
    tracker.observe(10_000_000)  # a hostile jump
    assert tracker.gaps == 1
    assert tracker.missed == 9_999_999
    # Not tracked as a hole: counted as a duplicate, still dropped.
    assert tracker.observe(5).verdict is DUP


@given(st.lists(st.integers(min_value=1, max_value=60), max_size=200))
def test_every_sequence_is_applied_at_most_once_and_in_increasing_order(seqs: list[int]) -> None:
    tracker = started("e", 0)
    applied = [s for s in seqs if tracker.observe(s).apply]
    assert applied == sorted(set(applied))
    assert len(applied) + tracker.duplicates + tracker.out_of_order == len(seqs)
    assert tracker.missed == (max(applied) - len(applied) if applied else 0)
