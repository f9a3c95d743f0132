"""Limits the endpoint applies itself, on any ASGI server (embedded use included).

These run the stream in the test's own event loop on plain uvicorn, as an
application embedding it would, except where the guarded protocols of
``metricstream serve`` are the subject.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest
from benchmarks._attacks import RawSocket, control_frame, ping_flood, upgrade_request
from websockets.exceptions import InvalidStatus

from metricstream.exceptions import ConfigError
from metricstream.server import MetricsHub, ServerSettings, guarded_uvicorn_options
from metricstream.server._limits import RateLimitedLog
from tests.server.conftest import close_code, open_client, recv, recv_type, running
from tests.support import scaled, wait_until


async def test_a_filter_past_its_bounds_is_refused_with_invalid_filter() -> None:
    settings = ServerSettings(max_filter_entries=10, max_filter_bytes=100)
    async with running(settings=settings) as server, open_client(server.url()) as ws:
        await recv_type(ws, "init")
        for models in (
            [f"m{i}" for i in range(11)],  # too many
            ["x" * 101],  # too long
        ):
            await ws.send(json.dumps({"type": "subscribe", "data": {"models": models}}))
            error = await recv_type(ws, "error")
            assert error["data"]["code"] == "invalid_filter"
        await ws.send(json.dumps({"type": "subscribe", "data": {"models": ["a", "b"]}}))
        assert (await recv_type(ws, "subscribed"))["data"]["models"] == ["a", "b"]
        assert server.hub.stats.rejections["invalid_filter"] == 2


async def test_a_query_filter_past_its_bounds_is_answered_and_closed() -> None:
    settings = ServerSettings(max_filter_entries=10)
    async with running(settings=settings) as server:
        models = ",".join(f"m{i}" for i in range(50))
        async with open_client(server.url(f"models={models}")) as ws:
            error = await recv(ws)
            assert error["type"] == "error"
            assert error["data"]["code"] == "invalid_filter"
            assert await close_code(ws) == 1008


async def test_a_query_filter_past_the_character_bound_names_that_bound() -> None:
    settings = ServerSettings(max_filter_bytes=100)
    async with running(settings=settings) as server:
        # Unknown names too: the bound is what is answered, and closed on.
        async with open_client(server.url("models=" + "x" * 101 + "&types=bogus")) as ws:
            error = await recv(ws)
            assert error["data"]["code"] == "invalid_filter"
            assert "100 characters" in error["data"]["message"]
            assert await close_code(ws) == 1008
        assert server.hub.stats.rejections["invalid_filter"] == 1


async def test_wrong_names_are_answered_but_neither_closed_nor_counted_as_refusals() -> None:
    # The two answers side by side, on one server: a type this server does
    # not know (a newer client) keeps the connection, unfiltered; a filter
    # past a bound is refused with 1008. Only the bound is a limit's refusal.
    settings = ServerSettings(max_filter_entries=3)
    async with running(settings=settings) as server:
        async with open_client(server.url("types=model_update,newer_update")) as ws:
            assert (await recv(ws))["type"] == "init"
            error = await recv(ws)
            assert error["data"]["code"] == "invalid_filter"
            assert "newer_update" in error["data"]["message"]
            # No filter was installed and the connection is still served.
            await ws.send(json.dumps({"type": "subscribe", "data": {"types": ["newer_update"]}}))
            assert (await recv_type(ws, "error"))["data"]["code"] == "invalid_filter"
            await ws.send(json.dumps({"type": "ping", "data": {}}))
            assert (await recv_type(ws, "pong"))["type"] == "pong"
        assert "invalid_filter" not in server.hub.stats.rejections
        async with open_client(server.url("types=model_update,a,b,c")) as ws:
            assert (await recv(ws))["data"]["code"] == "invalid_filter"
            assert await close_code(ws) == 1008
        assert server.hub.stats.rejections["invalid_filter"] == 1


async def test_large_messages_are_limited_by_bytes_not_only_by_count() -> None:
    # 10 messages a second would pass the message rate; 3 of 20 KB exceed
    # the byte burst.
    settings = ServerSettings(
        inbound_rate=100, inbound_burst=100, inbound_byte_rate=1024, inbound_byte_burst=64 * 1024
    )
    async with running(settings=settings) as server, open_client(server.url()) as ws:
        await recv_type(ws, "init")
        padding = "p" * 20_000
        for _ in range(4):
            await ws.send(json.dumps({"type": "ping", "data": {}, "metadata": {"pad": padding}}))
        error = await recv_type(ws, "error")
        assert error["data"]["code"] == "rate_limited"
        assert "bytes per second" in error["data"]["message"]


async def test_subscribe_costs_more_than_a_ping() -> None:
    settings = ServerSettings(inbound_rate=0.1, inbound_burst=20)
    async with running(settings=settings) as server, open_client(server.url()) as ws:
        await recv_type(ws, "init")
        for _ in range(5):
            await ws.send(json.dumps({"type": "subscribe", "data": {"models": ["a"]}}))
        answers = [(await recv(ws))["type"] for _ in range(5)]
        # 20 tokens at 5 each: four subscribes, then the drop is answered.
        assert answers == ["subscribed"] * 4 + ["error"]


async def test_token_guesses_on_pages_and_the_stream_share_one_throttle() -> None:
    settings = ServerSettings(token="s3cret", auth_failure_burst=3, auth_failure_rate=0.01)
    async with running(settings=settings) as server:
        base = f"http://127.0.0.1:{server.port}"
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
        async with httpx.AsyncClient(transport=transport, base_url=base) as attacker:
            # Two guesses on /metrics, one on the page: the burst is spent.
            assert (await attacker.get("/metrics?token=guess")).status_code == 401
            assert (await attacker.get("/metrics", headers=bearer("guess"))).status_code == 401
            assert (await attacker.get("/?token=guess")).status_code == 401
            # Now the right token is refused too, on the pages...
            throttled = await attacker.get("/metrics", headers=bearer("s3cret"))
            assert throttled.status_code == 429
            assert "Retry-After" in throttled.headers
            assert (await attacker.get("/?token=s3cret")).status_code == 429
        # ...and on the stream, from that address only.
        with pytest.raises(InvalidStatus) as refused:
            async with open_client(server.url("token=s3cret"), local_addr=("127.0.0.3", 0)):
                pass
        assert refused.value.response.status_code == 403
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/metrics", headers=bearer("s3cret"))).status_code == 200
        assert server.hub.stats.rejections["auth_throttled"] >= 3


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_failed_tokens_are_throttled_per_address_and_logged_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="metricstream.server")
    settings = ServerSettings(token="s3cret", auth_failure_burst=3, auth_failure_rate=0.01)
    async with running(settings=settings) as server:
        attacker = {"local_addr": ("127.0.0.3", 0)}
        for _ in range(3):
            async with open_client(server.url("token=guess"), **attacker) as ws:
                assert await close_code(ws) == 4001
        # Now even the right token is refused from that address...
        with pytest.raises(InvalidStatus) as refused:
            async with open_client(server.url("token=s3cret"), **attacker):
                pass
        assert refused.value.response.status_code == 403
        # ...and not from any other.
        async with open_client(server.url("token=s3cret")) as ws:
            assert (await recv(ws))["type"] == "init"
        stats = server.hub.stats.rejections
        assert stats["token"] == 3
        assert stats["auth_throttled"] == 1
    refusals = [r for r in caplog.records if "missing or invalid token" in r.getMessage()]
    assert len(refusals) == 3
    assert all(r.levelno == logging.INFO for r in refusals)
    assert "127.0.0.3" in refusals[0].getMessage()
    assert "further attempts from this address" in refusals[-1].getMessage()
    assert "s3cret" not in caplog.text
    assert "guess" not in caplog.text


async def test_the_pong_echoes_only_an_in_range_client_time() -> None:
    async with running() as server, open_client(server.url()) as ws:
        await recv_type(ws, "init")
        for client_time, echoed in [
            (1_700_000_000_000, 1_700_000_000_000),
            (2**60, None),
            (-5, None),
        ]:
            heartbeat = {"type": "heartbeat", "timestamp": 0, "data": {"client_time": client_time}}
            await ws.send(json.dumps(heartbeat))
            pong = await recv_type(ws, "pong")
            assert pong["data"].get("client_time") == echoed
            assert isinstance(pong["data"]["server_time"], int)


async def test_a_stalled_client_ends_with_4008_not_1011() -> None:
    # The keepalive ping sits behind every frame the client has not read,
    # so a missed pong means a slow consumer: 4008, counted as an eviction.
    hub = MetricsHub(heartbeat_interval=None)
    settings = ServerSettings()
    options = guarded_uvicorn_options(hub, settings)
    async with running(
        hub, settings, ws_ping_interval=0.3, ws_ping_timeout=0.5, **options
    ) as server:
        raw = await RawSocket.open(server.port, source="127.0.0.1")
        try:
            await raw.send(upgrade_request(server.port, "/metrics/stream"))
            # Stall: read nothing while the ping goes unanswered.
            await wait_until(lambda: hub.stats.evictions, 10, "the stalled client to be closed")
            data = b""
            while chunk := await asyncio.wait_for(raw.recv(), scaled(5)):
                data += chunk
        finally:
            raw.close()
        assert (4008).to_bytes(2, "big") + b"slow consumer" in data
        assert (1011).to_bytes(2, "big") not in data
        assert server.hub.stats.evictions == 1


async def test_pongs_left_unread_count_against_the_buffer_bound() -> None:
    # A PING rate the inbound limit allows; what cuts the client is the
    # bytes of pongs it leaves unread, bounded like any stream data.
    hub = MetricsHub(heartbeat_interval=None, max_buffer_bytes=4096)
    settings = ServerSettings(inbound_rate=1_000_000, inbound_burst=1_000_000)
    async with running(hub, settings, **guarded_uvicorn_options(hub, settings)) as server:
        cut = await ping_flood(server.port, "/metrics/stream", sockets=1, seconds=scaled(10))
        assert cut[0] is not None, "the flooding client was never cut"
        await wait_until(lambda: hub.stats.rejections.get("control_flood"), 5, "the rejection")
        assert hub.stats.rejections["control_flood"] == 1


async def test_embedded_a_ping_flood_is_cut_by_the_endpoint() -> None:
    # Plain uvicorn answers every PING below the application; the
    # endpoint's watchdog sees the pongs pile up in the transport and cuts.
    hub = MetricsHub(heartbeat_interval=None)
    async with running(hub) as server:
        cut = await ping_flood(server.port, "/metrics/stream", sockets=2, seconds=scaled(10))
        assert all(seconds is not None for seconds in cut), cut
        await wait_until(
            lambda: hub.stats.rejections.get("control_flood") == 2, 5, "both rejections"
        )
        assert hub.stats.rejections["control_flood"] == 2


async def test_embedded_a_refused_client_that_never_reads_is_cut_after_close_timeout() -> None:
    # Plain uvicorn would wait 10 s and then close gracefully behind an
    # unread buffer; the endpoint cuts the refused connection itself.
    settings = ServerSettings(token="s3cret", close_timeout=0.5)
    async with running(settings=settings) as server:
        raw = await RawSocket.open(server.port, rcvbuf=4096)
        try:
            await raw.send(upgrade_request(server.port, "/metrics/stream"))
            started = time.monotonic()
            cut_after = None
            while time.monotonic() - started < scaled(8):
                if raw.try_send(control_frame(0x9, b"p" * 125)) < 0:
                    cut_after = time.monotonic() - started
                    break
                # Polling: the cut shows only as a failed send, and how long
                # it took is what the test checks.
                await asyncio.sleep(0.1)
        finally:
            raw.close()
        assert cut_after is not None, "the refused socket was never closed"
        assert server.hub.stats.rejections["token"] == 1


def test_a_flood_of_one_kind_of_event_is_summarised_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="metricstream.server")
    log = RateLimitedLog(every=0.05)
    for peer in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        log.info("handshake_timeout", "closed a connection from %s", peer)
    log.info("capacity", "refused a connection from %s", "10.0.0.4")
    time.sleep(0.06)  # the interval itself is what is under test
    log.info("handshake_timeout", "closed a connection from %s", "10.0.0.5")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "closed a connection from 10.0.0.1",
        "refused a connection from 10.0.0.4",
        "closed a connection from 10.0.0.5 (and 2 more like it since the last such line)",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"handshake_timeout": 0},
        {"inbound_byte_rate": float("nan")},
        {"auth_failure_rate": -1.0},
        {"max_request_line": 0},
        {"max_header_count": 0},
        {"max_filter_entries": 0},
        {"inbound_byte_burst": 0},
        {"auth_failure_burst": 0},
        {"fd_reserve": -1},
    ],
)
def test_limits_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        ServerSettings(**bad)  # type: ignore[arg-type]


async def test_a_message_of_the_largest_size_always_fits_the_byte_bucket() -> None:
    # A byte burst below max_message_size is not an error: the bucket is
    # sized up to it, so the largest message a client may send can pass.
    settings = ServerSettings(max_message_size=256 * 1024, inbound_byte_burst=1024)
    async with running(settings=settings) as server, open_client(server.url()) as ws:
        await recv_type(ws, "init")
        padding = "p" * 200_000
        await ws.send(json.dumps({"type": "ping", "data": {}, "metadata": {"pad": padding}}))
        assert (await recv(ws))["type"] == "pong"


def test_the_guarded_protocols_refuse_an_older_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "__version__", "0.40.2")
    with pytest.raises(ConfigError, match=r"uvicorn >= 0\.54, found 0\.40\.2"):
        guarded_uvicorn_options(MetricsHub(heartbeat_interval=None), ServerSettings())


async def test_the_guarded_protocols_keep_the_direct_write_path() -> None:
    # The bounds sit beside the fan-out path, not in it: frames still go
    # straight to the transport.
    hub = MetricsHub(heartbeat_interval=None)
    settings = ServerSettings()
    async with (
        running(hub, settings, **guarded_uvicorn_options(hub, settings)) as server,
        open_client(server.url()) as ws,
    ):
        await recv_type(ws, "init")
        assert [sub.direct is not None for sub in hub.subscribers] == [True]


async def test_handshakes_accepted_only_to_be_refused_are_logged_as_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Embedded on plain uvicorn too: the refusals that must reach a browser
    # as close codes are accepted first, and logged as what they are.
    settings = ServerSettings(max_connections=1, max_filter_entries=2)
    async with running(settings=settings, log_config=None) as server:
        caplog.set_level(logging.INFO, logger="uvicorn.error")
        async with open_client(server.url("probe=first")) as first:
            await recv_type(first, "init")
            async with open_client(server.url("probe=second")) as second:
                assert await close_code(second) == 4029
        async with open_client(server.url("probe=third&models=a,b,c")) as third:
            assert await close_code(third) == 1008
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
    assert [line.rsplit('"', 1)[1].strip() for line in lines if "probe=" in line] == [
        "[accepted]",
        "[refused 4029]",
        "[refused 1008]",
    ], lines
    assert lines.count("connection open") == 1, lines
