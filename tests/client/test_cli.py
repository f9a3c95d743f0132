"""``metricstream watch`` as a real subprocess against a real server."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest

from metricstream.cli import main
from metricstream.protocol import MessageType

from ..support import scaled, wait_until
from .peers import StreamServer, metrics, request


async def _watch(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "metricstream",
        "watch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_prints_messages_as_json_lines(server: StreamServer) -> None:
    process = await _watch(server.url, "--json", "--count", "3", "--type", "request_update")
    await wait_until(lambda: bool(server.peers), within=30)
    await server.publish(MessageType.REQUEST_UPDATE, request("a"))
    await server.publish(MessageType.METRICS_UPDATE, metrics())
    await server.publish(MessageType.REQUEST_UPDATE, request("b"))
    async with asyncio.timeout(scaled(30)):
        out, err = await process.communicate()
    assert process.returncode == 0, err
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [line["type"] for line in lines] == ["init", "request_update", "request_update"]
    assert [line["sequence"] for line in lines[1:]] == [1, 3]
    assert server.handshakes[0]["types"] == "request_update"
    assert b"connected to" in err


async def test_summary_lines_and_repeated_types(server: StreamServer) -> None:
    process = await _watch(
        server.url,
        "--count",
        "3",
        "--type",
        "request_update",
        "--types",
        "metrics_update,kv_cache_update",
    )
    await wait_until(lambda: bool(server.peers), within=30)
    await server.publish(MessageType.REQUEST_UPDATE, request("abc"))
    await server.publish(MessageType.METRICS_UPDATE, metrics(total_requests=42))
    async with asyncio.timeout(scaled(30)):
        out, err = await process.communicate()
    assert process.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 3
    assert " init #0" in lines[0]
    assert " request_update #1 " in lines[1]
    assert "id=abc" in lines[1]
    assert " metrics_update #2 " in lines[2]
    assert "total_requests=42" in lines[2]
    assert server.handshakes[0]["types"] == "request_update,metrics_update,kv_cache_update"


async def test_ctrl_c_exits_130_without_a_traceback(server: StreamServer) -> None:
    process = await _watch(server.url, "--json")
    assert process.stdout is not None
    async with asyncio.timeout(scaled(30)):
        first = await process.stdout.readline()
    assert json.loads(first)["type"] == "init"
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(scaled(30)):
        _, err = await process.communicate()
    assert process.returncode == 130, err
    assert b"Traceback" not in err
    assert b"interrupted" in err
    await wait_until(lambda: not server.peers, within=30)


async def test_rejection_exits_3() -> None:
    async with StreamServer(token="right") as srv:
        process = await _watch(srv.url, "--token", "wrong")
        async with asyncio.timeout(scaled(30)):
            _, err = await process.communicate()
    assert process.returncode == 3
    assert b"4001" in err


async def test_invalid_option_exits_2() -> None:
    process = await _watch("http://not-a-websocket", "--count", "1")
    async with asyncio.timeout(scaled(30)):
        _, err = await process.communicate()
    assert process.returncode == 2
    assert b"ws:// or wss://" in err


async def test_an_unknown_type_is_a_usage_error_naming_the_known_ones() -> None:
    process = await _watch("ws://127.0.0.1:9/metrics/stream", "--type", "metrics_update,bogus_type")
    async with asyncio.timeout(scaled(30)):
        out, err = await process.communicate()
    assert process.returncode == 2
    assert out == b""
    assert b"unknown message type bogus_type" in err
    assert b"metrics_update" in err.split(b"known:")[1]
    assert b"Traceback" not in err


async def test_a_token_in_the_url_reaches_the_server() -> None:
    from metricstream.server import MetricsHub, ServerSettings

    from ..server.conftest import running

    token = "url-token"
    async with running(MetricsHub(heartbeat_interval=None), ServerSettings(token=token)) as srv:
        process = await _watch(srv.url(f"token={token}&types=init"), "--count", "1")
        async with asyncio.timeout(scaled(30)):
            out, err = await process.communicate()
    assert process.returncode == 0, err
    assert b" init #" in out
    # The URL it reports hides the token.
    assert token.encode() not in err
    assert b"token=***" in err


def test_in_process(
    server_thread: tuple[StreamServer, asyncio.AbstractEventLoop],
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    server, loop = server_thread

    async def publish_once_connected() -> None:
        await wait_until(lambda: bool(server.peers), within=30)
        await server.publish(MessageType.REQUEST_UPDATE, request("a"))

    future = asyncio.run_coroutine_threadsafe(publish_once_connected(), loop)
    status = main(["watch", server.url, "--json", "--count", "2", "--heartbeat-timeout", "30"])
    future.result(scaled(30))
    out = capsysbinary.readouterr()
    assert status == 0
    assert [json.loads(line)["type"] for line in out.out.splitlines()] == [
        "init",
        "request_update",
    ]
    assert b"connected to" in out.err
