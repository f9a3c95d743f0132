"""The load generator: many WebSocket clients in one process.

Run as ``python -m benchmarks._loadgen --port P --clients N [...]``. It opens
the connections, prints ``{"event": "ready", ...}`` and then answers commands
read from stdin, one per line, each with one JSON line on stdout:

- ``mark``: figures for the window since the previous ``mark`` (messages,
  frames, latency percentiles) and totals (gaps, duplicates, closes);
- ``move PORT [SECONDS]``: the same, reconnecting to another node on PORT;
- ``drop [SECONDS]``: abort every connection at once and, after SECONDS,
  reconnect each with ``since``/``epoch`` (a resume storm); answered at once;
- ``storm``: progress of the resume storm;
- ``quit``: exit.

Every message is decoded (msgspec, into a two-field view) so that sequence
gaps and duplicates are counted on every connection, and end-to-end latency
is ``receive time - data.created`` (the publisher's ``time.time()``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from array import array
from typing import Any

import msgspec

from ._wsclient import WSConnection, connect

__all__ = ["main", "percentiles"]


class _Data(msgspec.Struct):
    created: float | None = None


class _Meta(msgspec.Struct):
    epoch: str | None = None
    resumed: bool = False


class _Envelope(msgspec.Struct):
    type: str
    sequence: int | None = None
    data: _Data | None = None
    metadata: _Meta | None = None


_decoder = msgspec.json.Decoder(_Envelope | list[_Envelope])


def percentiles(values: array[float] | list[float], points: tuple[float, ...]) -> list[float]:
    """Nearest-rank percentiles (``points`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return [float("nan")] * len(points)
    ordered = sorted(values)
    last = len(ordered) - 1
    return [ordered[min(last, round(p / 100 * last))] for p in points]


class _Client:
    """Sequence bookkeeping for one logical client across its connections."""

    __slots__ = (
        "caught_up_at",
        "conn",
        "epoch",
        "last",
        "opened_at",
        "replayed",
        "stalled",
    )

    def __init__(self, stalled: bool = False) -> None:
        self.conn: WSConnection | None = None
        self.last: int | None = None
        self.epoch: str | None = None
        self.stalled = stalled
        self.opened_at = 0.0
        self.caught_up_at: float | None = None
        self.replayed = 0


class LoadGenerator:
    """Holds the clients and their counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.path = "/metrics/stream" + ("?batch=1" if args.batch else "")
        self.clients = [_Client() for _ in range(args.clients)]
        self.stalled = [_Client(stalled=True) for _ in range(args.stalled)]
        self.latencies: array[float] = array("d")
        self.messages = 0
        self.frames = 0
        self.gaps = 0
        self.missing = 0
        self.duplicates = 0
        self.snapshots_after_drop = 0
        self.resumed_inits = 0
        self.closes: dict[str, int] = {}
        self.connect_failures = 0
        self.errors: dict[str, int] = {}
        self.dropped_at: float | None = None
        self.reconnect_at: float | None = None
        self.reconnected = 0
        self.window_started = time.monotonic()

    # receiving ----------------------------------------------------------------

    def on_message(self, conn: WSConnection, payload: bytes, now: float) -> None:
        """Count a frame's messages, check their sequence, record their latency."""
        client: _Client = conn.tag  # type: ignore[assignment]
        self.frames += 1
        try:
            decoded = _decoder.decode(payload)
        except msgspec.DecodeError:
            return
        items = decoded if isinstance(decoded, list) else (decoded,)
        dropped_at = self.dropped_at
        for message in items:
            if message.type == "init":
                self._init(client, message)
                continue
            sequence = message.sequence
            if sequence is not None:
                last = client.last
                if last is None or sequence == last + 1:
                    client.last = sequence
                elif sequence <= last:
                    self.duplicates += 1
                    continue
                else:
                    self.gaps += 1
                    self.missing += sequence - last - 1
                    client.last = sequence
            self.messages += 1
            data = message.data
            if data is not None and data.created is not None:
                created = data.created
                self.latencies.append(now - created)
                if dropped_at is not None:
                    if created < client.opened_at:
                        # Published before this connection existed: a replay.
                        client.replayed += 1
                    if client.caught_up_at is None and created >= dropped_at:
                        client.caught_up_at = now

    def _init(self, client: _Client, message: _Envelope) -> None:
        meta = message.metadata
        resumed = meta is not None and meta.resumed
        if resumed:
            self.resumed_inits += 1
        else:
            if client.last is not None:
                self.snapshots_after_drop += 1
            client.last = message.sequence
        if meta is not None and meta.epoch is not None:
            client.epoch = meta.epoch

    # connecting ---------------------------------------------------------------

    async def _open(self, client: _Client, path: str) -> bool:
        try:
            conn = await connect(
                self.args.host,
                self.args.port,
                path,
                self.on_message,
                rcvbuf=self.args.stalled_rcvbuf if client.stalled else None,
                tag=client,
            )
        except (OSError, TimeoutError, ConnectionError) as exc:
            self.connect_failures += 1
            self.errors[repr(exc)[:200]] = self.errors.get(repr(exc)[:200], 0) + 1
            return False
        client.conn = conn
        client.opened_at = time.time()
        conn.closed.add_done_callback(lambda _: self._closed(conn))
        if client.stalled:
            conn.pause_reading()
        return True

    def _closed(self, conn: WSConnection) -> None:
        key = str(conn.close_code) if conn.close_code is not None else "abort"
        client: _Client = conn.tag  # type: ignore[assignment]
        if client.stalled:
            key = "stalled:" + key
        self.closes[key] = self.closes.get(key, 0) + 1

    async def open_all(self) -> int:
        """Open every connection, a bounded number at a time (no SYN flood)."""
        gate = asyncio.Semaphore(self.args.concurrency)

        async def one(client: _Client) -> bool:
            async with gate:
                return await self._open(client, self.path)

        results = await asyncio.gather(*(one(c) for c in self.clients + self.stalled))
        return sum(results)

    async def drop_and_resume(self, outage: float) -> None:
        """Abort every healthy connection at once; after ``outage`` s resume them all."""
        self.dropped_at = time.time()
        for client in self.clients:
            if client.conn is not None:
                client.conn.abort()
        # The link stays down a while (the stream goes on), then every client
        # comes back at the same moment.
        await asyncio.sleep(outage)
        self.reconnect_at = time.time()

        async def one(client: _Client) -> None:
            path = "/metrics/stream?"
            if self.args.batch:
                path += "batch=1&"
            if client.last is not None and client.epoch is not None:
                path += f"since={client.last}&epoch={client.epoch}"
            for _ in range(50):
                if await self._open(client, path):
                    self.reconnected += 1
                    return
                await asyncio.sleep(0.1)

        await asyncio.gather(*(one(c) for c in self.clients))

    # reporting ----------------------------------------------------------------

    def mark(self) -> dict[str, Any]:
        """Figures of the window since the last mark (then a new window starts)."""
        now = time.monotonic()
        p50, p99, p999 = percentiles(self.latencies, (50, 99, 99.9))
        report = {
            "event": "mark",
            "seconds": now - self.window_started,
            "messages": self.messages,
            "frames": self.frames,
            "latency_ms": {
                "p50": p50 * 1000,
                "p99": p99 * 1000,
                "p999": p999 * 1000,
                "max": max(self.latencies, default=float("nan")) * 1000,
                "count": len(self.latencies),
            },
            **self.totals(),
        }
        self.window_started = now
        self.messages = 0
        self.frames = 0
        self.latencies = array("d")
        return report

    def totals(self) -> dict[str, Any]:
        """Counters since the start: gaps, duplicates, closes, open connections."""
        return {
            "gaps": self.gaps,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "closes": dict(self.closes),
            "connect_failures": self.connect_failures,
            "open": sum(
                1
                for c in self.clients
                if c.conn is not None and c.conn.transport and not c.conn.closed.done()
            ),
        }

    def storm(self) -> dict[str, Any]:
        """Progress of the resume storm started by :meth:`drop_and_resume`."""
        dropped_at = self.dropped_at or 0.0
        times = [c.caught_up_at - dropped_at for c in self.clients if c.caught_up_at is not None]
        return {
            "event": "storm",
            "caught_up": len(times),
            "clients": len(self.clients),
            "reconnected": self.reconnected,
            "catch_up_max_s": max(times, default=float("nan")),
            "outage_s": (self.reconnect_at or dropped_at) - dropped_at,
            "catch_up_p50_s": percentiles(times, (50,))[0],
            "replayed": sum(c.replayed for c in self.clients),
            "resumed_inits": self.resumed_inits,
            "snapshots_after_drop": self.snapshots_after_drop,
            **self.totals(),
        }


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _run(args: argparse.Namespace) -> None:
    gen = LoadGenerator(args)
    opened = await gen.open_all()
    _emit(
        {
            "event": "ready",
            "connected": opened,
            "failures": gen.connect_failures,
            "errors": gen.errors,
        }
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    storm: asyncio.Task[None] | None = None
    while True:
        line = (await reader.readline()).decode().strip()
        if line in ("", "quit"):
            break
        command, _, argument = line.partition(" ")
        if command == "mark":
            _emit(gen.mark())
        elif command == "drop":
            storm = asyncio.create_task(gen.drop_and_resume(float(argument or 0)))
            await asyncio.sleep(0)
            _emit({"event": "dropped", "at": gen.dropped_at})
        elif command == "move":
            # The node went away: resume every client on another port.
            port, _, outage = argument.partition(" ")
            gen.args.port = int(port)
            storm = asyncio.create_task(gen.drop_and_resume(float(outage or 0)))
            await asyncio.sleep(0)
            _emit({"event": "dropped", "at": gen.dropped_at})
        elif command == "storm":
            _emit(gen.storm())
        else:
            _emit({"event": "error", "message": f"unknown command {line!r}"})
    if storm is not None:
        storm.cancel()
    for client in gen.clients + gen.stalled:
        if client.conn is not None:
            client.conn.abort()


def main(argv: list[str] | None = None) -> int:
    """Parse options and run until ``quit``, end of stdin, or ``--lifetime``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._loadgen")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--batch", action="store_true", help="ask for batch=1")
    parser.add_argument("--stalled", type=int, default=0, help="clients that never read")
    parser.add_argument("--stalled-rcvbuf", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=100, help="connects in flight")
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def run() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.lifetime):
                await _run(args)

    import uvloop

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
