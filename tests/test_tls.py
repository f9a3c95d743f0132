"""``serve`` over TLS with a throwaway CA: the Python client, ``watch`` and the
web page all reach the stream over ``wss://``, the token travelling as a
header, a query parameter and a subprotocol respectively."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect

from metricstream.client import WebSocketConfig, WebSocketService
from metricstream.protocol import MessageType

from .support import free_port, require_executable, scaled, wait_healthy
from .test_logging import command_env

TOKEN = "tls-test-token"


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca`` (and nothing else)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
    return context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``serve --demo`` on https/wss with a certificate for 127.0.0.1; yields the port."""
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metricstream",
            "serve",
            "--demo",
            "--port",
            str(port),
            "--interval",
            "0.2",
            "--ssl-certfile",
            str(folder / "cert.pem"),
            "--ssl-keyfile",
            str(folder / "key.pem"),
        ],
        env=command_env(METRICSTREAM_TOKEN=TOKEN),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_healthy(f"https://127.0.0.1:{port}/healthz", proc, 30, verify=client_context(ca))
        yield port
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=scaled(30))
        # The page and the clients below all authenticated: never in a log line.
        assert TOKEN not in stderr
        assert "[accepted]" in stderr


def test_plain_http_is_not_served_on_the_tls_port(tls_server: int) -> None:
    with pytest.raises(httpx.TransportError), httpx.Client(timeout=scaled(5)) as http:
        http.get(f"http://127.0.0.1:{tls_server}/healthz")


async def test_the_python_client_streams_over_wss(ca: trustme.CA, tls_server: int) -> None:
    config = WebSocketConfig(
        url=f"wss://127.0.0.1:{tls_server}/metrics/stream",
        token=TOKEN,
        ssl=client_context(ca),
    )
    got: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def on_metrics(data: object, _: object) -> None:
        if not got.done():
            got.set_result(data.requests_per_second)  # type: ignore[attr-defined]

    async with WebSocketService(config) as service:
        service.subscribe(MessageType.METRICS_UPDATE, on_metrics)
        assert await asyncio.wait_for(got, scaled(20)) >= 0


def test_the_client_refuses_a_certificate_it_cannot_verify(tls_server: int) -> None:
    # Without the CA the default context must fail: TLS is really checked.
    with (
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        httpx.Client(timeout=scaled(5)) as http,
    ):
        http.get(f"https://127.0.0.1:{tls_server}/healthz")


def test_watch_over_wss_with_the_token_in_the_url(
    ca: trustme.CA, tls_server: int, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    env = command_env(SSL_CERT_FILE=str(bundle))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricstream",
            "watch",
            f"wss://127.0.0.1:{tls_server}/metrics/stream?token={TOKEN}",
            "--type",
            "metrics_update",
            "--count",
            "2",
            "--max-attempts",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # The snapshot (init), then a live update: the stream was authorised.
    assert len(lines) == 2
    assert " init #" in lines[0]
    assert " metrics_update #" in lines[1], result.stdout
    # The URL it reports has the token hidden.
    assert TOKEN not in result.stderr
    assert "token=***" in result.stderr


@pytest.mark.browser
def test_the_web_page_streams_over_wss_with_the_token_as_a_subprotocol(tls_server: int) -> None:
    from playwright.sync_api import sync_playwright

    from .dashboard.test_web import CHROMIUM, CHROMIUM_ARGS, wait_in_page

    executable = require_executable(CHROMIUM, "apt-get install chromium")
    sockets: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=[*CHROMIUM_ARGS, "--ignore-certificate-errors"]
        )
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.on("websocket", lambda ws: sockets.append(ws.url))
            page.goto(f"https://127.0.0.1:{tls_server}/?token={TOKEN}")
            wait_in_page(page, "document.body.dataset.connection === 'connected'", 15, "connected")
            card = "document.querySelector('[data-metric=total_requests] .card-value').textContent"
            wait_in_page(page, f"{card} !== '—'", 15, "a first total")
            # The subprotocol the server selected, as the browser saw it.
            protocol = page.evaluate("() => window.metricstream.client._conn.ws.protocol")
        finally:
            browser.close()
    assert sockets, "the page opened no WebSocket"
    url = sockets[0]
    assert url.startswith(f"wss://127.0.0.1:{tls_server}/metrics/stream")
    assert "token" not in url  # it travelled as a subprotocol entry instead
    assert protocol == "metricstream"


KEY_PASSWORD = "tls-key-pass-5p8"


def encrypted_key_pair(ca: trustme.CA, folder: Path, password: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, encrypted with ``password`` (PKCS#8 PEM)."""
    from cryptography.hazmat.primitives import serialization

    cert = ca.issue_cert("127.0.0.1", "localhost")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    key_path, cert_path = folder / "encrypted-key.pem", folder / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    return cert_path, key_path


def serve_command(port: int, cert: Path, key: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "metricstream",
        "serve",
        "--port",
        str(port),
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
        *extra,
    ]


async def first_frame(url: str, context: ssl.SSLContext) -> str:
    async with connect(url, ssl=context) as ws:
        frame = await asyncio.wait_for(ws.recv(), scaled(10))
    assert isinstance(frame, str)
    return frame


def test_an_encrypted_key_serves_wss_with_its_password(ca: trustme.CA, tmp_path: Path) -> None:
    cert, key = encrypted_key_pair(ca, tmp_path, KEY_PASSWORD)
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    port = free_port()
    proc = subprocess.Popen(
        serve_command(port, cert, key, "--log-level", "debug"),
        env=command_env(METRICSTREAM_SSL_KEYFILE_PASSWORD=KEY_PASSWORD),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # No controlling terminal: a prompt for the password would fail, not wait.
        start_new_session=True,
    )
    try:
        wait_healthy(f"https://127.0.0.1:{port}/healthz", proc, 30, verify=client_context(ca))
        url = f"wss://127.0.0.1:{port}/metrics/stream"
        frame = asyncio.run(first_frame(url, client_context(ca)))
        assert json.loads(frame)["type"] == "init"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=scaled(30))
    assert "[accepted]" in stderr
    assert "over TLS (wss://)" in stderr
    assert KEY_PASSWORD not in stderr


@pytest.mark.parametrize(
    ("how", "message"),
    [
        (["--ssl-keyfile-password", "not-the-pass-3k"], "cannot decrypt the TLS key"),
        ([], "is encrypted: give its password"),
    ],
    ids=["wrong password", "no password"],
)
def test_an_encrypted_key_without_its_password_is_one_line_and_status_2(
    ca: trustme.CA, tmp_path: Path, how: list[str], message: str
) -> None:
    cert, key = encrypted_key_pair(ca, tmp_path, KEY_PASSWORD)
    result = subprocess.run(
        serve_command(free_port(), cert, key, *how),
        env=command_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
        start_new_session=True,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("metricstream serve: ")
    assert message in lines[0]
    assert str(key) in lines[0]
    assert "not-the-pass-3k" not in result.stderr
    assert result.stdout == ""
