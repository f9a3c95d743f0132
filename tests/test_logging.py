"""Logs of the real commands: each line once, on stderr, never with a token."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from metricstream._logging import RedactFilter, configure_logging, redact

from .support import free_port, scaled, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tok-4f9c2b7e"


def command_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSTREAM_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    if "METRICSTREAM_TEST_TIMEOUT_FACTOR" in os.environ:
        env["METRICSTREAM_TEST_TIMEOUT_FACTOR"] = os.environ["METRICSTREAM_TEST_TIMEOUT_FACTOR"]
    env.update(extra)
    return env


@contextmanager
def serve(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[int, list[str]]]:
    """``metricstream serve`` on a free port; yields (port, output) where
    ``output`` receives [stdout, stderr] once the server has stopped."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "metricstream", "serve", "--port", str(port), *args],
        env=env or command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output: list[str] = []
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, 30)
        yield port, output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=scaled(30))
        output[:] = [out, err]


def subprotocol_entry(token: str) -> str:
    return "metricstream.token." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


async def authenticated_session(port: int) -> None:
    """Every way a token reaches the server, and one wrong token."""
    url = f"ws://127.0.0.1:{port}/metrics/stream"
    async with connect(f"{url}?token={TOKEN}&types=metrics_update") as ws:
        json.loads(await asyncio.wait_for(ws.recv(), scaled(10)))
    async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        await asyncio.wait_for(ws.recv(), scaled(10))
    async with connect(url, subprotocols=["metricstream", subprotocol_entry(TOKEN)]) as ws:
        await asyncio.wait_for(ws.recv(), scaled(10))
    async with connect(f"{url}?token={TOKEN}x") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), scaled(10))
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4001
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        assert (await http.get("/metrics", params={"token": TOKEN})).status_code == 200
        assert (await http.get("/", params={"token": TOKEN})).status_code == 200
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert (await http.get("/metrics", headers=headers)).status_code == 200


def test_the_token_never_reaches_the_log_in_an_authenticated_session() -> None:
    with serve("--token", TOKEN, "--interval", "0.2", "--log-level", "debug") as (port, output):
        asyncio.run(authenticated_session(port))
    stdout, stderr = output
    lines = stderr.splitlines()
    encoded = subprotocol_entry(TOKEN).rpartition(".")[2]
    leaks = [line for line in lines if TOKEN in line or encoded in line]
    assert leaks == []
    # The access log did see the requests (so the redaction was exercised).
    assert any('"WebSocket /metrics/stream?token=***&types=metrics_update"' in ln for ln in lines)
    assert any("GET /metrics?token=*** HTTP/1.1" in line for line in lines)
    # The server's own INFO lines print at the default handler.
    assert any("metricstream.server: stream at /metrics/stream" in line for line in lines)
    assert stdout == ""


def test_each_line_once_and_json_lines_for_log_shippers() -> None:
    with serve("--log-format", "json", "--token", TOKEN) as (port, output):
        asyncio.run(authenticated_session(port))
    stdout, stderr = output
    records = [json.loads(line) for line in stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    messages = [(r["logger"], r["message"]) for r in records]
    # Lines naming a client address are unique unless a second handler
    # printed them again.
    per_client = [m for m in messages if "127.0.0.1:" in m[1]]
    assert per_client
    assert len(per_client) == len(set(per_client)), "a line was logged twice"
    assert sum("Uvicorn running on" in m for _, m in messages) == 1
    assert any(r["logger"] == "metricstream.server" and r["level"] == "info" for r in records)
    accepted = [m for _, m in messages if "[accepted]" in m]
    refused = [m for _, m in messages if "[refused 4001]" in m]
    # Four handshakes, four lines (the wrong token's says refused): nothing
    # printed by a second handler.
    assert len(accepted) == 3
    assert len(refused) == 1
    assert TOKEN not in stderr
    assert stdout == ""


def test_no_access_log_drops_the_request_lines_only() -> None:
    with serve("--no-access-log") as (port, output), httpx.Client() as http:
        assert http.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
    stderr = output[1]
    assert "GET /metrics" not in stderr
    assert "GET /healthz" not in stderr
    assert "Uvicorn running on" in stderr


def test_a_configuration_error_goes_to_stderr_with_status_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metricstream", "serve", "--interval", "0"],
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "interval must be positive" in result.stderr


def test_watch_says_it_gave_up_once() -> None:
    port = free_port()  # nobody listens there
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricstream",
            "watch",
            f"ws://127.0.0.1:{port}/metrics/stream",
            "--max-attempts",
            "1",
        ],
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("gave up") == 1, result.stderr
    # Each attempt's failure is said once, not by a handler and a log line both.
    assert result.stderr.count("error: cannot connect") == 2, result.stderr


def test_redaction_covers_queries_headers_and_registered_secrets() -> None:
    assert redact("GET /x?a=1&token=abc&b=2") == "GET /x?a=1&token=***&b=2"
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    assert redact("proto metricstream.token.YWJj") == "proto metricstream.token.***"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s - %s", ("a", "?token=z"), None)
    assert RedactFilter().filter(record)
    assert record.getMessage() == "a - ?token=***"


def test_warnings_go_through_the_handler_not_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        with (tmp_path / "log").open("w") as stream:
            handler = configure_logging("warning", "json", stream=stream)
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("deprecated thing, token=abc", DeprecationWarning, stacklevel=1)
            handler.flush()
        [record] = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    finally:
        for extra in list(root.handlers):
            if extra not in before:
                root.removeHandler(extra)
        root.setLevel(level)
        logging.captureWarnings(False)
    assert record["logger"] == "py.warnings"
    assert "DeprecationWarning: deprecated thing, token=***" in record["message"]
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")


def test_configuring_twice_keeps_one_handler(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        with (tmp_path / "log").open("w") as stream:
            first = configure_logging("info", "text", stream=stream)
            second = configure_logging("info", "json", stream=stream)
            assert first not in root.handlers
            assert second in root.handlers
            logging.getLogger("metricstream.test").info("once")
            second.flush()
        lines = (tmp_path / "log").read_text().splitlines()
        assert [json.loads(line)["message"] for line in lines] == ["once"]
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)


def test_library_modules_log_through_named_loggers_only() -> None:
    """No root-logger calls, handlers or prints outside the command-line modules."""
    import ast

    package = ROOT / "src" / "metricstream"
    # Modules that are the command line (they may print and configure).
    commands = {"cli.py", "_logging.py", "_options.py", "__main__.py"}
    root_calls = {"debug", "info", "warning", "error", "exception", "critical", "log"}
    problems = []
    for path in sorted(package.rglob("*.py")):
        if path.name in commands:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            where = f"{path.relative_to(package)}:{node.lineno}"
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if func.value.id == "logging" and func.attr in root_calls | {"basicConfig"}:
                    problems.append(f"{where} logging.{func.attr}()")
                if func.attr == "addHandler":
                    problems.append(f"{where} addHandler()")
            if isinstance(func, ast.Attribute) and func.attr == "getLogger" and not node.args:
                problems.append(f"{where} getLogger() (the root logger)")
            if isinstance(func, ast.Name) and func.id == "print":
                problems.append(f"{where} print()")
    assert problems == []
