"""The proxy benchmark's two ends, each run as ``python -m benchmarks._openai ROLE``.

- ``upstream``: a fast OpenAI-compatible stand-in on a raw asyncio socket. It
  answers every ``POST .../chat/completions`` with the same stream of
  ``--chunks`` content events (each its own chunk of a chunked body) plus a
  usage chunk and ``[DONE]``, and anything else with a small JSON body. It
  does no work per request beyond parsing the head, so what a proxy adds in
  front of it stands out.
- ``load``: an HTTP/1.1 client on raw sockets, driven by commands on stdin:
  ``latency N`` sends N streamed requests one after another on one
  connection and reports end-to-end and time-to-first-event percentiles;
  ``throughput C SECONDS`` keeps C connections busy and reports requests/s.

Both print JSON lines on stdout and exit by themselves after ``--lifetime``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

__all__ = ["main", "sse_body"]

MODEL = "bench-model"


def sse_body(chunks: int) -> list[bytes]:
    """The events of one streamed completion: content, usage, ``[DONE]``."""
    events = []
    for i in range(chunks):
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": f"tok{i} "},
                    "finish_reason": "stop" if i == chunks - 1 else None,
                }
            ],
        }
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    usage = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks},
    }
    events.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _chunked(events: list[bytes]) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]


async def _upstream(chunks: int) -> None:
    stream_head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    frames = _chunked(sse_body(chunks))
    models = json.dumps(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
    ).encode()
    plain = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(models),
        models,
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                if b"/chat/completions" in head.split(b"\r\n", 1)[0]:
                    # One write per event, as a server generating tokens would.
                    writer.write(stream_head + frames[0])
                    for frame in frames[1:]:
                        writer.write(frame)
                else:
                    writer.write(plain)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"event": "ready", "port": port}), flush=True)
    await server.serve_forever()


# -- load -------------------------------------------------------------------------


class _Connection:
    """One keep-alive HTTP/1.1 connection that reads whole responses."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        body = json.dumps(
            {
                "model": MODEL,
                "stream": True,
                "messages": [{"role": "user", "content": "Count to twenty."}],
            }
        ).encode()
        self.request = (
            b"POST %s HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer sk-bench\r\ncontent-length: %d\r\n\r\n%s"
            % (path.encode(), port, len(body), body)
        )
        self.last_error = ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def one(self) -> tuple[int, float, float]:
        """Send one request and read its whole answer; (status, seconds to the
        first body byte, seconds to the end)."""
        assert self.reader is not None
        assert self.writer is not None
        reader = self.reader
        start = time.perf_counter()
        self.writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        first = 0.0
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if not first:
                    first = time.perf_counter()
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            length = 0
            for line in lower.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            first = time.perf_counter()
        end = time.perf_counter()
        if status != 200:
            self.last_error = head[:300].decode("latin-1")
        return status, first - start, end - start

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _percentile(ordered: list[float], p: float) -> float:
    index = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _latency(port: int, path: str, count: int) -> dict[str, Any]:
    conn = _Connection(port, path)
    await conn.open()
    try:
        for _ in range(min(200, count)):  # warm-up: pools, caches, JIT-free but lazy paths
            await conn.one()
        firsts, totals = [], []
        errors = 0
        for _ in range(count):
            status, first, total = await conn.one()
            if status != 200:
                errors += 1  # reported, and kept out of the percentiles
                continue
            firsts.append(first * 1000)
            totals.append(total * 1000)
    finally:
        conn.close()
    if not totals:
        return {"error": f"every request failed: {conn.last_error}"}
    firsts.sort()
    totals.sort()
    return {
        "p50_ms": _percentile(totals, 50),
        "p99_ms": _percentile(totals, 99),
        "ttft_p50_ms": _percentile(firsts, 50),
        "ttft_p99_ms": _percentile(firsts, 99),
        "count": count,
        "latency_errors": errors,
        "last_error": conn.last_error,
    }


async def _throughput(port: int, path: str, clients: int, seconds: float) -> dict[str, Any]:
    conns = [_Connection(port, path) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    done = 0
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def loop(conn: _Connection) -> None:
        nonlocal done, errors
        while time.perf_counter() < stop_at:
            try:
                status, _, _ = await conn.one()
                if status == 200:
                    done += 1
                else:
                    errors += 1
            except (ConnectionError, asyncio.IncompleteReadError):
                errors += 1
                conn.close()
                await conn.open()

    # Warm-up pass, then the timed window.
    warm_until = time.perf_counter() + min(1.0, seconds / 4)
    while time.perf_counter() < warm_until:
        await asyncio.gather(*(c.one() for c in conns))
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    last_error = next((c.last_error for c in conns if c.last_error), "")
    return {
        "requests_per_s": done / elapsed,
        "requests": done,
        "errors": errors,
        "last_error": last_error,
    }


async def _load(port: int, path: str) -> None:
    print(json.dumps({"event": "ready"}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        command, *args = line.split()
        if command == "latency":
            result = await _latency(port, path, int(args[0]))
        elif command == "throughput":
            result = await _throughput(port, path, int(args[0]), float(args[1]))
        else:
            result = {"error": f"unknown command {command!r}"}
        print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run one role until stdin closes, or until ``--lifetime`` runs out."""
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("upstream", "load"))
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def run() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.lifetime):
                if args.role == "upstream":
                    await _upstream(args.chunks)
                else:
                    await _load(args.port, args.path)

    asyncio.run(run())


if __name__ == "__main__":
    main()
