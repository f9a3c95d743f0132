"""Sequence tracking over ``(epoch, sequence)``: pure state, no I/O.

A client feeds every stream message's ``sequence`` to :meth:`SequenceTracker.observe`
and acts on the verdict: apply ``NEW`` and ``GAP`` messages, drop
``DUPLICATE`` and ``OUT_OF_ORDER`` ones, and resume after a ``GAP`` on an
unfiltered stream. ``init`` messages go to :meth:`SequenceTracker.start`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .constants import MAX_TRACKED_HOLES

__all__ = ["SequenceResult", "SequenceTracker", "SequenceVerdict"]


class SequenceVerdict(enum.Enum):
    """What one incoming sequence number means."""

    NEW = "new"
    """The next expected message (or the first one seen)."""
    DUPLICATE = "duplicate"
    """Already applied: drop it."""
    OUT_OF_ORDER = "out_of_order"
    """Older than the newest applied, never seen before: stale, drop it."""
    GAP = "gap"
    """Newer than expected: ``missing`` messages were skipped. Apply it."""


@dataclass(frozen=True, slots=True)
class SequenceResult:
    """The verdict on one sequence number, and how many were missed before it."""

    verdict: SequenceVerdict
    missing: int = 0

    @property
    def apply(self) -> bool:
        """Whether the message should be applied (``NEW`` or ``GAP``)."""
        return self.verdict in (SequenceVerdict.NEW, SequenceVerdict.GAP)


_NEW = SequenceResult(SequenceVerdict.NEW)
_DUPLICATE = SequenceResult(SequenceVerdict.DUPLICATE)
_OUT_OF_ORDER = SequenceResult(SequenceVerdict.OUT_OF_ORDER)


class SequenceTracker:
    """Tracks the last applied sequence of one stream epoch.

    Counters (``accepted``, ``duplicates``, ``out_of_order``, ``gaps``,
    ``missed``) accumulate across epochs; call :meth:`reset_counters` to zero them.
    """

    __slots__ = (
        "_epoch",
        "_holes",
        "_last",
        "accepted",
        "duplicates",
        "gaps",
        "missed",
        "out_of_order",
    )

    def __init__(self) -> None:
        self._epoch: str | None = None
        self._last: int | None = None
        self._holes: set[int] = set()
        self.accepted = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.gaps = 0
        self.missed = 0

    @property
    def epoch(self) -> str | None:
        """The epoch of the stream being tracked, if the server named one."""
        return self._epoch

    @property
    def last_sequence(self) -> int | None:
        """The newest applied sequence, or ``None`` before the first."""
        return self._last

    def start(self, epoch: str | None, sequence: int | None, *, resumed: bool) -> bool:
        """Apply an ``init``: returns whether the tracked state was kept.

        A resumed ``init`` of the same epoch keeps the position (the missed
        messages follow). Anything else — a full snapshot or a new epoch —
        starts afresh at ``sequence``; the caller must then replace its state.
        """
        if resumed and epoch == self._epoch and self._last is not None:
            return True
        self._epoch = epoch
        self._last = sequence
        self._holes.clear()
        return False

    def observe(self, sequence: int) -> SequenceResult:
        """Judge one incoming stream sequence number and advance."""
        last = self._last
        if last is None or sequence == last + 1:
            self._last = sequence
            self.accepted += 1
            return _NEW
        if sequence > last:
            missing = sequence - last - 1
            if missing + len(self._holes) <= MAX_TRACKED_HOLES:
                self._holes.update(range(last + 1, sequence))
            self._last = sequence
            self.accepted += 1
            self.gaps += 1
            self.missed += missing
            return SequenceResult(SequenceVerdict.GAP, missing)
        if sequence in self._holes:
            self._holes.discard(sequence)
            self.out_of_order += 1
            return _OUT_OF_ORDER
        self.duplicates += 1
        return _DUPLICATE

    def reset(self) -> None:
        """Forget the epoch and position (counters are kept)."""
        self._epoch = None
        self._last = None
        self._holes.clear()

    def reset_counters(self) -> None:
        """Zero every counter."""
        self.accepted = self.duplicates = self.out_of_order = self.gaps = self.missed = 0

    def __repr__(self) -> str:
        return (
            f"SequenceTracker(epoch={self._epoch!r}, last_sequence={self._last!r}, "
            f"duplicates={self.duplicates}, out_of_order={self.out_of_order}, gaps={self.gaps})"
        )
