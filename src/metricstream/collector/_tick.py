"""The one periodic loop of the collector package: fixed-rate ticks, no drift, no burst.

The collector's publication, each scrape target and the demo traffic all
run "do this every ``interval`` seconds" with the same rules; they are kept
here, once, so that they cannot drift apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn

__all__ = ["every"]


async def every(
    interval: float,
    tick: Callable[[], Awaitable[object]],
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> NoReturn:
    """Await ``tick()`` now and then every ``interval`` seconds, until cancelled.

    Deadlines are fixed (the start plus a whole number of intervals): the
    time a tick takes is not added to the period, so the rate does not
    drift. A tick that ends past its next deadline (a slow tick, a stalled
    loop) restarts the schedule from that moment instead of running the
    missed ticks back to back: after a stall there is one tick, not a burst.

    An exception from ``tick`` ends the loop; a caller that must survive a
    failing tick catches inside it. ``clock`` (seconds; the running loop's
    clock by default) and ``sleep`` are injectable for tests.
    """
    now = clock if clock is not None else asyncio.get_running_loop().time
    deadline = now()
    while True:
        await tick()
        deadline += interval
        delay = deadline - now()
        if delay < 0:
            deadline = now()
            delay = 0.0
        await sleep(delay)
