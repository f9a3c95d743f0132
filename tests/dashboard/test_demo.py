"""``metricstream demo`` runs a server, shows it, and cleans up after itself."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from ..support import free_port, scaled


def test_demo_without_a_terminal_prints_live_summaries_and_stops_its_server() -> None:
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricstream",
            "demo",
            "--port",
            str(port),
            "--seed",
            "2",
            "--duration",
            "3",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"web dashboard: http://127.0.0.1:{port}/" in result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("seq")]
    assert len(lines) >= 2, result.stdout
    assert "req/s" in lines[-1]
    # The server is gone: nothing listens on its port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_demo_moves_to_a_free_port_when_its_port_is_taken() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "metricstream", "demo", "--port", str(taken), "--duration", "1"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=scaled(60),
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert f"port {taken} is taken" in result.stderr
