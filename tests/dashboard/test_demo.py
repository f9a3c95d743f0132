"""``metricstream demo`` runs a server, shows it, and cleans up after itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

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


def test_demo_ignores_the_settings_meant_for_a_server_of_ones_own(tmp_path: Path) -> None:
    # A token, a scrape target and a config file set for `serve` must not
    # reach the demo's server: its dashboard would be refused (4001).
    config = tmp_path / "serve.toml"
    config.write_text('[serve]\ntoken = "from-file"\n')
    env = {
        **os.environ,
        "METRICSTREAM_TOKEN": "s3cret",
        "METRICSTREAM_SCRAPE": "http://127.0.0.1:9/metrics",
        "METRICSTREAM_CONFIG": str(config),
    }
    result = subprocess.run(
        [
            *(sys.executable, "-m", "metricstream", "demo"),
            *("--port", str(free_port()), "--seed", "3", "--duration", "2"),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "4001" not in result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("seq")], result.stdout
