"""Attacks on ``metricstream serve`` (a real subprocess) at the HTTP and WebSocket layers.

Every attacker comes from 127.0.0.2 (see ``benchmarks._attacks``); the healthy
client, from 127.0.0.1, must keep its sequence unbroken throughout.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from benchmarks._attacks import (
    RawSocket,
    big_subscribe,
    control_frame,
    header_flood,
    ping_flood,
    slowloris,
    token_guessing,
    upgrade_request,
    url_trickle,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.security.conftest import PATH, assert_unharmed, served, with_healthy
from tests.support import scaled, wait_until

MB = 1024 * 1024


async def test_ping_floods_are_cut_with_or_without_a_token() -> None:
    async with served("--token", "s3cret") as server:
        before = server.rss()

        async def attack() -> tuple[list[float | None], list[float | None]]:
            anonymous = await ping_flood(server.port, PATH, sockets=3, seconds=scaled(5))
            authenticated = await ping_flood(
                server.port, PATH + "?token=s3cret", sockets=1, seconds=scaled(5)
            )
            return anonymous, authenticated

        (anonymous, authenticated), healthy = await with_healthy(server.url("token=s3cret"), attack)
        # Each flooding socket is cut within the run, token or not.
        assert all(cut is not None for cut in anonymous), anonymous
        assert all(cut is not None for cut in authenticated), authenticated
        assert server.rss() - before < 30 * MB
        assert_unharmed(healthy)
        assert server.rejections().get("control_flood", 0) >= 4
        log = server.log
        cut_line = r"INFO +metricstream\.server\S*: cut a connection from 127\.0\.0\.2"
        assert re.search(cut_line, log), log
        # The rejected handshakes were said as such, and the token never.
        assert "missing or invalid token (4001)" in log
        assert "s3cret" not in log


async def test_a_refused_client_that_never_reads_is_cut_after_the_close_timeout() -> None:
    # PINGs under the rate limit, never reading: nothing but the close
    # timeout ends this socket.
    async with served("--token", "s3cret") as server:
        raw = await RawSocket.open(server.port, rcvbuf=4096)
        try:
            await raw.send(upgrade_request(server.port, PATH))
            started = time.monotonic()
            cut_after = None
            while time.monotonic() - started < scaled(12):
                if raw.try_send(control_frame(0x9, b"p" * 125)) < 0:
                    cut_after = time.monotonic() - started
                    break
                # Polling: the cut shows only as a failed send, and how long
                # it took is what the test checks.
                await asyncio.sleep(0.1)
            assert cut_after is not None, "the refused socket was never closed"
            # close_timeout is 5 s by default.
            assert cut_after < scaled(9)
        finally:
            raw.close()


async def test_invalid_utf8_is_closed_with_1007_and_no_traceback() -> None:
    async with served() as server:
        raw = await RawSocket.open(server.port)
        try:
            await raw.send(upgrade_request(server.port, PATH))
            status, _ = await raw.read_response(scaled(5))
            assert status == 101
            await raw.send(control_frame(0x1, b"\xff\xfe not utf-8"))
            data = b""
            while chunk := await asyncio.wait_for(raw.recv(), scaled(10)):
                data += chunk
            # A close frame with 1007 is among what the server sent last.
            assert b"\x88\x0f" + (1007).to_bytes(2, "big") + b"invalid UTF-8" in data
        finally:
            raw.close()
        log = await wait_until(
            lambda: "invalid UTF-8 (1007)" in server.log and server.log, 5, "the 1007 log line"
        )
        assert log, server.log
        assert "Traceback" not in log
        assert server.rejections().get("invalid_utf8") == 1


async def test_an_endless_request_line_gets_414_and_memory_stays_flat() -> None:
    async with served() as server:
        before = server.rss()
        (status, sent), healthy = await with_healthy(
            server.url(), lambda: url_trickle(server.port, seconds=scaled(5))
        )
        assert status == 414
        # Refused once past 8 KiB, not after the attacker got bored.
        assert sent < 1 * MB
        assert server.rss() - before < 20 * MB
        assert_unharmed(healthy)
        assert "request line too long (414)" in server.log


async def test_too_many_or_too_large_headers_get_431_and_a_close() -> None:
    async with served() as server:
        assert await header_flood(server.port, headers=100, wait=scaled(5)) == 431
        raw = await RawSocket.open(server.port)
        try:
            big = {"X-Big": "z" * 20_000}
            await raw.send(upgrade_request(server.port, PATH, big))
            status, _ = await raw.read_response(scaled(5))
            assert status == 431
            assert await raw.closed_within(scaled(5))
        finally:
            raw.close()
        assert server.rejections().get("headers_too_large") == 2
        # Not HTTP at all: 400, and closed the same way.
        raw = await RawSocket.open(server.port)
        try:
            await raw.send(b"\x16\x03\x01 not a request\r\n\r\n")
            assert (await raw.read_response(scaled(5)))[0] == 400
            assert await raw.closed_within(scaled(5))
        finally:
            raw.close()
        assert server.rejections().get("bad_request") == 1
        assert "Traceback" not in server.log


async def test_an_unfinished_request_gets_408_after_the_handshake_timeout() -> None:
    async with served("--handshake-timeout", "1") as server:
        (sockets, closed), healthy = await with_healthy(server.url(), lambda: _loris(server, 5))
        assert len(sockets) == 5
        assert all(closed)
        assert_unharmed(healthy)
        assert server.rejections().get("handshake_timeout") == 5
        assert "request not complete within 1s" in server.log


async def _loris(server: object, count: int) -> tuple[list[RawSocket], list[bool]]:
    assert hasattr(server, "port")
    sockets = await slowloris(server.port, sockets=count, seconds=scaled(5))
    try:
        statuses = await asyncio.gather(*(s.read_response(scaled(6)) for s in sockets))
        assert all(status == 408 for status, _ in statuses), statuses
        closed = list(await asyncio.gather(*(s.closed_within(scaled(3)) for s in sockets)))
        return sockets, closed
    finally:
        for raw in sockets:
            raw.close()


async def test_unfinished_handshakes_count_toward_max_connections() -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async with served("--max-connections", "4", "--handshake-timeout", "30") as server:
        async with connect(server.url(), compression=None) as ws:
            await asyncio.wait_for(ws.recv(), scaled(5))
            sockets = await slowloris(server.port, sockets=3, seconds=scaled(5))
            try:
                # 1 stream + 3 unfinished handshakes: the next one is refused.
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(server.url(), compression=None, open_timeout=scaled(5)):
                        pass
                assert refused.value.response.status_code == 503
            finally:
                for raw in sockets:
                    raw.close()

            # Once they are gone there is room again.
            async def admitted() -> bool:
                try:
                    async with connect(server.url(), compression=None, open_timeout=scaled(5)):
                        return True
                except InvalidStatus:
                    return False

            await wait_until(admitted, 5, "admission after the sockets closed", interval=0.1)
        assert server.rejections().get("capacity", 0) >= 1


async def test_at_the_fd_limit_existing_clients_and_healthz_are_still_served() -> None:
    async with served("--handshake-timeout", "30", nofile=128) as server:

        async def attack() -> list[int]:
            sockets = await slowloris(server.port, sockets=300, seconds=scaled(15))
            try:
                # A fresh connection for each: the limit must leave room for them.
                return [server.get("/healthz", 5)[0] for _ in range(3)]
            finally:
                for raw in sockets:
                    raw.close()

        statuses, healthy = await with_healthy(server.url(), attack)
        assert statuses == [200, 200, 200]
        assert_unharmed(healthy)
        log = server.log
        assert log.count("reached the file-descriptor limit") == 1, log
        assert "Traceback" not in log
        assert server.rejections().get("fd_limit", 0) > 0


async def test_failed_tokens_are_throttled_per_address() -> None:
    async with served("--token", "s3cret") as server:
        statuses, healthy = await with_healthy(
            server.url("token=s3cret"),
            lambda: token_guessing(server.port, PATH, attempts=20, wait=scaled(5)),
        )
        # Five failures allowed, then refused before the token is even read.
        assert statuses[:5] == [101] * 5
        assert set(statuses[5:]) == {403}
        assert_unharmed(healthy)
        assert server.rejections().get("auth_throttled") == 15
        assert "further attempts from this address are refused" in server.log


async def test_oversized_subscribes_are_refused_while_others_keep_their_stream() -> None:
    async with served() as server:

        async def attack() -> list[list[str]]:
            wait = scaled(2)
            return list(
                await asyncio.gather(
                    *(big_subscribe(server.port, PATH, models=3700, seconds=wait) for _ in range(4))
                )
            )

        answers, healthy = await with_healthy(server.url(), attack)
        for answer in answers:
            # Refused as a filter, never installed. (Stream messages published
            # meanwhile may arrive before the answer: only the answers count.)
            replies = [kind for kind in answer if kind in ("error", "subscribed")]
            assert replies, answer
            assert replies[0] == "error", answer
            assert "subscribed" not in answer
        assert_unharmed(healthy)
        refused = server.rejections().get("invalid_filter", 0)
        assert refused >= 4


async def test_a_refused_token_is_logged_as_refused_never_as_accepted() -> None:
    # The endpoint accepts a handshake it refuses (so that a browser sees
    # 4001); the server's log must still say refused, not accepted.
    async with served("--token", "s3cret") as server:
        with pytest.raises(ConnectionClosed) as refused:
            async with connect(server.url("token=guess-x7q&probe=refused")) as ws:
                await ws.recv()
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == 4001
        async with connect(
            server.url("probe=let-in"), additional_headers={"Authorization": "Bearer s3cret"}
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "init"
        log = await wait_until(
            lambda: "probe=let-in" in server.log and server.log, 5, "the accepted client's line"
        )
        lines = log.splitlines()
        refused_lines = [line for line in lines if "probe=refused" in line]
        assert len(refused_lines) == 1, log
        assert re.search(
            r'"WebSocket /metrics/stream\?token=\*\*\*&probe=refused" \[refused 4001\]$',
            refused_lines[0],
        ), log
        # The client let in is still said to be accepted, once.
        accepted = [line for line in lines if "[accepted]" in line]
        assert len(accepted) == 1, log
        assert "probe=let-in" in accepted[0]
        # websockets' own "connection open" is the accepted client's alone.
        assert sum(line.endswith("connection open") for line in lines) == 1, log
        assert "missing or invalid token (4001)" in log
        assert "s3cret" not in log
        assert "guess-x7q" not in log
