"""The keepalive task of one connection: it does what the session's ticks say."""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..protocol import ClientSession
from ._outbox import Outbox

__all__ = ["keep_alive"]

logger = logging.getLogger("metricstream.client")


async def keep_alive(
    session: ClientSession, ws: ClientConnection, outbox: Outbox, send_within: float
) -> None:
    """Send the heartbeats ``session`` asks for; abort ``ws`` when it gives up on it.

    The session decides when to beat and when the peer has been silent too
    long (or, before the first message, too slow to say anything); this task
    sleeps until the next tick and bounds each heartbeat's send by
    ``send_within`` seconds, since a peer that stopped reading never lets a
    send finish.
    """
    loop = asyncio.get_running_loop()
    while True:
        tick = session.tick(loop.time())
        if tick.abandon is not None:
            logger.warning("abandoning a silent connection: %s", tick.abandon)
            # Abort, not close: a dead peer never answers a closing handshake.
            ws.transport.abort()
            return
        if tick.heartbeat is not None:
            try:
                async with asyncio.timeout(send_within):
                    await outbox.send(ws, tick.heartbeat)
            except TimeoutError:
                session.abandon(f"heartbeat not sent within {send_within:g} s")
                ws.transport.abort()
                return
            except ConnectionClosed:
                return
        await asyncio.sleep(max(tick.next_at - loop.time(), 0))
