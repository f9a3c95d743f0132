"""Reconnect delays: the seed's exponential backoff, plus jitter.

The seed waits ``min(interval * decay ** (attempt - 1), max)`` before attempt
``attempt``. Without jitter every client that lost the same server retries at
the same instants and the herd hits the server together; so each delay is
scaled by a random factor in ``[1 - jitter, 1]`` *after* the cap, which keeps
the herd spread even once every client has reached the maximum delay.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from ..exceptions import ConfigError
from .constants import (
    DEFAULT_MAX_RECONNECT_INTERVAL,
    DEFAULT_RECONNECT_DECAY,
    DEFAULT_RECONNECT_INTERVAL,
    DEFAULT_RECONNECT_JITTER,
)

__all__ = ["Backoff"]


class Backoff:
    """A resettable source of reconnect delays, in seconds.

    ``next_delay()`` returns the delay before the next attempt, or ``None``
    once ``max_attempts`` delays were handed out. Iterating yields the same
    sequence. ``reset()`` starts over, after a connection proved stable.
    """

    __slots__ = ("_attempt", "_rng", "factor", "initial", "jitter", "max_attempts", "max_delay")

    def __init__(
        self,
        initial: float = DEFAULT_RECONNECT_INTERVAL,
        factor: float = DEFAULT_RECONNECT_DECAY,
        max_delay: float = DEFAULT_MAX_RECONNECT_INTERVAL,
        *,
        max_attempts: int | None = None,
        jitter: float = DEFAULT_RECONNECT_JITTER,
        rng: random.Random | None = None,
    ) -> None:
        for name, value in (
            ("initial", initial),
            ("factor", factor),
            ("max_delay", max_delay),
            ("jitter", jitter),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
        ):
            raise ConfigError(f"max_attempts must be None or an integer, got {max_attempts!r}")
        if not initial > 0:
            raise ConfigError(f"initial delay must be positive, got {initial!r}")
        if not factor >= 1:
            raise ConfigError(f"factor must be at least 1, got {factor!r}")
        if not max_delay >= initial:
            raise ConfigError(f"max_delay ({max_delay!r}) must be at least initial ({initial!r})")
        if max_attempts is not None and max_attempts < 0:
            raise ConfigError(f"max_attempts must be None or >= 0, got {max_attempts!r}")
        if not 0 <= jitter <= 1:
            raise ConfigError(f"jitter must be within [0, 1], got {jitter!r}")
        self.initial = initial
        self.factor = factor
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    @property
    def exhausted(self) -> bool:
        """Whether the attempt limit was reached."""
        return self.max_attempts is not None and self._attempt >= self.max_attempts

    def base_delay(self, attempt: int) -> float:
        """The seed's delay before ``attempt`` (1-based), without jitter."""
        exponent = max(attempt - 1, 0)
        # Compare in log space first: factor ** exponent overflows a float
        # long before any realistic max_delay is reached.
        if self.factor > 1 and exponent > 1024:
            return self.max_delay
        return float(min(self.initial * self.factor**exponent, self.max_delay))

    def next_delay(self) -> float | None:
        """The delay before the next attempt, or ``None`` when exhausted."""
        if self.exhausted:
            return None
        self._attempt += 1
        delay = self.base_delay(self._attempt)
        if self.jitter:
            delay *= 1.0 - self.jitter * self._rng.random()
        return delay

    def reset(self) -> None:
        """Start over from the initial delay."""
        self._attempt = 0

    def __iter__(self) -> Iterator[float]:
        while (delay := self.next_delay()) is not None:
            yield delay

    def __repr__(self) -> str:
        return (
            f"Backoff(initial={self.initial!r}, factor={self.factor!r}, "
            f"max_delay={self.max_delay!r}, max_attempts={self.max_attempts!r}, "
            f"jitter={self.jitter!r}, attempt={self._attempt})"
        )
