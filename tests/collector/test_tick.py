"""every(): the one periodic loop, on a real event loop with an injected clock.

The clock only moves when a tick or a sleep says so, so the schedule is
exact: what is checked is when each tick starts, not how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from metricstream.collector._tick import every
from tests.collector.helpers import ManualClock
from tests.support import scaled


class _Schedule:
    """Ticks that take given durations, on a clock that sleeping advances."""

    def __init__(self, durations: list[float], clock: ManualClock) -> None:
        self.durations = durations
        self.clock = clock
        self.starts: list[float] = []
        self.sleeps: list[float] = []
        self.done = asyncio.Event()

    async def tick(self) -> None:
        self.starts.append(self.clock.now)
        if len(self.starts) == len(self.durations):
            self.done.set()
            await asyncio.Future()  # parked until cancelled
        self.clock.advance(self.durations[len(self.starts) - 1])

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.clock.advance(delay)
        await asyncio.sleep(0)


async def _run(durations: list[float], interval: float = 1.0) -> _Schedule:
    clock = ManualClock(50.0)
    schedule = _Schedule(durations, clock)
    task = asyncio.create_task(every(interval, schedule.tick, clock=clock, sleep=schedule.sleep))
    try:
        await asyncio.wait_for(schedule.done.wait(), scaled(10))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return schedule


async def test_ticks_keep_fixed_deadlines_whatever_each_takes() -> None:
    schedule = await _run([0.3, 0.9, 0.0, 0.5, 0.0])
    # The time a tick takes is not added to the period: no drift.
    assert schedule.starts == pytest.approx([50.0, 51.0, 52.0, 53.0, 54.0])
    assert schedule.sleeps == pytest.approx([0.7, 0.1, 1.0, 0.5])


async def test_after_a_stall_the_schedule_restarts_without_a_burst() -> None:
    # The second tick stalls for 3.5 intervals: the three deadlines it
    # overran are dropped, not run back to back.
    schedule = await _run([0.2, 3.5, 0.2, 0.2, 0.2])
    assert schedule.starts == pytest.approx([50.0, 51.0, 54.5, 55.5, 56.5])
    assert schedule.sleeps == pytest.approx([0.8, 0.0, 0.8, 0.8])


async def test_a_failing_tick_ends_the_loop() -> None:
    async def tick() -> None:
        raise RuntimeError("tick failed")

    with pytest.raises(RuntimeError, match="tick failed"):
        await every(1.0, tick)


async def test_the_default_clock_is_the_running_loops() -> None:
    ticks = 0
    three = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 3:
            three.set()

    task = asyncio.create_task(every(0.01, tick))
    try:
        await asyncio.wait_for(three.wait(), scaled(10))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert ticks >= 3
