"""Each configuration option and handler form, against a real server on loopback."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from metricstream.client import ConnectionState, EventHandlers, WebSocketConfig, WebSocketService
from metricstream.exceptions import ConfigError
from metricstream.protocol import MessageType, SubscribePayload, WebSocketMessage, make_message

from ..support import require_executable, scaled, wait_until
from .conftest import fast_config
from .peers import StreamServer, metrics, request


async def test_drop_newest_keeps_the_queue_and_counts_the_drop(
    server: StreamServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = fast_config(server.url, max_queue_size=2, queue_overflow="drop_newest")
    client = WebSocketService(config)
    with caplog.at_level(logging.WARNING, logger="metricstream.client"):
        for n in range(3):
            assert await client.send(make_message("custom", {"n": n})) is False
    info = client.connection_info()
    assert (info.queued, info.dropped) == (2, 1)
    assert any("dropped the message being sent" in r.getMessage() for r in caplog.records)
    await client.connect()
    try:
        await wait_until(lambda: sum(m["type"] == "custom" for m in server.received) == 2)
        assert [m["data"]["n"] for m in server.received if m["type"] == "custom"] == [0, 1]
        assert client.connection_info().queued == 0
    finally:
        await client.aclose()


async def test_drop_oldest_is_the_default(server: StreamServer) -> None:
    client = WebSocketService(fast_config(server.url, max_queue_size=2))
    for n in range(3):
        await client.send(make_message("custom", {"n": n}))
    assert client.connection_info().dropped == 1
    async with client:
        await wait_until(lambda: sum(m["type"] == "custom" for m in server.received) == 2)
    assert [m["data"]["n"] for m in server.received if m["type"] == "custom"] == [1, 2]


async def test_headers_and_token_are_sent_in_the_handshake() -> None:
    async with StreamServer(token="t0ken") as server:
        config = fast_config(server.url, headers={"X-Trace-Id": "abc-1"}, token="t0ken")
        async with WebSocketService(config) as client:
            await client.wait_connected()
    headers = server.request_headers[0]
    assert headers["x-trace-id"] == "abc-1"
    assert headers["authorization"] == "Bearer t0ken"
    assert headers["user-agent"].startswith("metricstream/")


async def test_protocols_are_offered_and_negotiated() -> None:
    async with StreamServer(subprotocols=["metrics.v2", "metrics.v1"]) as server:
        config = fast_config(server.url, protocols=["metrics.v1", "metrics.v0"])
        async with WebSocketService(config) as client:
            await client.wait_connected()
    assert server.request_headers[0]["sec-websocket-protocol"] == "metrics.v1, metrics.v0"
    assert server.negotiated == ["metrics.v1"]


async def test_without_protocols_none_is_offered(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url)) as client:
        await client.wait_connected()
    assert "sec-websocket-protocol" not in server.request_headers[0]
    assert server.negotiated == [None]


async def test_async_handlers_do_not_hold_up_the_reader(server: StreamServer) -> None:
    all_read = asyncio.Event()
    handled: list[str] = []
    connected = asyncio.Event()

    async def on_message(message: WebSocketMessage[Any]) -> None:
        # Blocks until the iterator has seen every message: a reader that
        # awaited this handler would never deliver them.
        await all_read.wait()
        handled.append(message.type)

    async def on_connect() -> None:
        connected.set()

    handlers = EventHandlers(on_message=on_message, on_connect=on_connect)
    async with WebSocketService(fast_config(server.url), handlers) as client:
        stream = client.messages(types=["request_update"])
        async with asyncio.timeout(scaled(10)):
            await connected.wait()
        for n in range(3):
            await server.publish(MessageType.REQUEST_UPDATE, request(f"r{n}"))
        ids = [(await anext(stream)).data.id for _ in range(3)]
        all_read.set()
        await wait_until(lambda: len(handled) == 4)
    assert ids == ["r0", "r1", "r2"]
    # Concurrent tasks: each ran, in no promised order.
    assert sorted(handled) == ["init", "request_update", "request_update", "request_update"]


async def test_messages_types_filter(server: StreamServer) -> None:
    async with WebSocketService(fast_config(server.url)) as client:
        requests = client.messages(types=[MessageType.REQUEST_UPDATE])
        with_pongs = client.messages(types=["metrics_update", "pong"])
        single = client.messages(types="metrics_update")
        everything = client.messages()
        assert requests.types == frozenset({"request_update"})
        await client.wait_connected()
        await server.publish(MessageType.METRICS_UPDATE, metrics(1))
        await server.publish(MessageType.REQUEST_UPDATE, request("a"))
        assert (await anext(requests)).data.id == "a"
        got = {(await anext(with_pongs)).type for _ in range(2)}
        assert got == {"metrics_update", "pong"}
        assert (await anext(single)).type == "metrics_update"
        assert [(await anext(everything)).type for _ in range(3)] == [
            "init",
            "metrics_update",
            "request_update",
        ]


@pytest.mark.parametrize("debug", [True, False])
async def test_debug_logs_raw_frames(
    server: StreamServer, caplog: pytest.LogCaptureFixture, debug: bool
) -> None:
    with caplog.at_level(logging.DEBUG, logger="metricstream.client"):
        async with WebSocketService(fast_config(server.url, debug=debug)) as client:
            stream = client.messages(types=["request_update"])
            await client.wait_connected()
            await server.send_raw('{"type": "metrics_update", "oops": BROKEN-FRAME')
            await server.send_raw('{"type": "galaxy_update", "timestamp": 1, "data": "ZORK"}')
            await server.publish(MessageType.REQUEST_UPDATE, request("after"))
            assert (await anext(stream)).data.id == "after"
            info = client.connection_info()
            assert (info.parse_errors, info.unknown_messages) == (1, 1)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert ("BROKEN-FRAME" in text) is debug
    assert ("ZORK" in text) is debug
    assert ("state CONNECTING -> CONNECTED" in text) is debug
    assert "skipped an invalid frame" in text


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by the openssl command."""
    openssl = require_executable(shutil.which("openssl") or "openssl", "apt-get install openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=scaled(60),
    )
    return cert, key


async def test_ssl_context_is_used_for_wss(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    async with StreamServer(ssl_context=server_context) as server:
        url = server.url.replace("ws://", "wss://")
        trusting = ssl.create_default_context(cafile=str(cert))
        async with WebSocketService(fast_config(url, ssl=trusting)) as client:
            await client.wait_connected()
        # Without the context, the default verification refuses the certificate.
        errors: list[BaseException] = []
        config = fast_config(url, max_reconnect_attempts=0)
        client = WebSocketService(config, on_error=errors.append)
        with pytest.raises(ConnectionError):
            await client.run()
    assert "CERTIFICATE_VERIFY_FAILED" in str(errors[0])
    assert len(server.handshakes) == 1


async def test_open_timeout_bounds_a_handshake_that_never_completes() -> None:
    # A listener that accepts TCP but never answers the HTTP upgrade.
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    tcp = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    errors: list[BaseException] = []
    config = fast_config(
        f"ws://127.0.0.1:{port}/metrics/stream", open_timeout=0.2, max_reconnect_attempts=0
    )
    client = WebSocketService(config, on_error=errors.append)
    try:
        with pytest.raises(ConnectionError):
            await client.run()
    finally:
        tcp.close()
        await tcp.wait_closed()
    assert client.state is ConnectionState.ERROR
    assert "cannot connect" in str(errors[0])


async def test_set_filter_validates_both_names_before_changing_either() -> None:
    client = WebSocketService(WebSocketConfig(url="ws://127.0.0.1:9/metrics/stream"))
    with pytest.raises(ConfigError, match="models"):
        await client.set_filter(types=["metrics_update"], models=["bad,name"])
    assert client.filter == SubscribePayload(types=None, models=None)
    # One string is not a list of one type (it would filter out everything).
    with pytest.raises(ConfigError, match="not one string"):
        await client.set_filter(types="metrics_update")  # type: ignore[arg-type]
    assert client.filter == SubscribePayload(types=None, models=None)
    assert await client.set_filter(types=["metrics_update"]) is None  # not connected
    assert client.filter.types == ["metrics_update"]
