"""Backoff: the seed's formula, the cap, jitter at the cap, the limit, reset."""

from __future__ import annotations

import itertools
import random

import pytest

from metricstream import ConfigError
from metricstream.protocol import Backoff


def test_without_jitter_it_is_the_seeds_formula() -> None:
    backoff = Backoff(1.0, 1.5, 30.0, jitter=0)
    delays = list(itertools.islice(backoff, 12))
    expected = [min(1.0 * 1.5 ** (n - 1), 30.0) for n in range(1, 13)]
    assert delays == pytest.approx(expected)
    assert delays[:3] == pytest.approx([1.0, 1.5, 2.25])
    assert delays[-1] == 30.0
    assert backoff.attempt == 12


def test_jitter_keeps_delays_within_bounds_and_applies_at_the_cap() -> None:
    backoff = Backoff(1.0, 2.0, 8.0, jitter=0.5, rng=random.Random(7))
    delays = list(itertools.islice(backoff, 200))
    for attempt, delay in enumerate(delays, start=1):
        base = backoff.base_delay(attempt)
        assert base * 0.5 <= delay <= base
    capped = delays[10:]
    # At the cap the delays still differ: clients that dropped together spread out.
    assert len({round(d, 6) for d in capped}) > 100
    assert max(capped) <= 8.0
    assert min(capped) >= 4.0


def test_two_clients_with_different_rngs_do_not_retry_in_lock_step() -> None:
    a = list(itertools.islice(Backoff(rng=random.Random(1)), 20))
    b = list(itertools.islice(Backoff(rng=random.Random(2)), 20))
    assert all(x != y for x, y in zip(a, b, strict=True))


def test_attempt_limit() -> None:
    backoff = Backoff(0.1, 2.0, 1.0, max_attempts=3, jitter=0)
    assert [backoff.next_delay() for _ in range(5)] == [0.1, 0.2, 0.4, None, None]
    assert backoff.exhausted
    assert list(Backoff(max_attempts=0)) == []


def test_reset_starts_over() -> None:
    backoff = Backoff(1.0, 1.5, 30.0, max_attempts=2, jitter=0)
    assert list(backoff) == [1.0, 1.5]
    backoff.reset()
    assert backoff.attempt == 0
    assert not backoff.exhausted
    assert backoff.next_delay() == 1.0


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    backoff = Backoff(1.0, 1.5, 30.0, jitter=0)
    assert backoff.base_delay(10_000) == 30.0
    assert backoff.base_delay(1025) == 30.0
    assert Backoff(2.0, 1.0, 30.0, jitter=0).base_delay(5000) == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0},
        {"initial": -1},
        {"factor": 0.5},
        {"initial": 10, "max_delay": 5},
        {"max_attempts": -1},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"initial": float("nan")},
        {"jitter": "0.5"},
        {"jitter": True},
        {"factor": None},
        {"max_attempts": "3"},
        {"max_attempts": 1.5},
    ],
)
def test_invalid_parameters_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_repr_shows_the_parameters() -> None:
    assert repr(Backoff(jitter=0)) == (
        "Backoff(initial=1.0, factor=1.5, max_delay=30.0, max_attempts=None, jitter=0, attempt=0)"
    )
