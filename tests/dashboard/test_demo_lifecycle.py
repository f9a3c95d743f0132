"""``metricstream demo``'s server child ends with it, however the demo ends:
``q`` in the terminal dashboard, Ctrl-C, SIGTERM, SIGHUP and SIGKILL."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ..support import free_port, scaled, wait_until_sync

ROOT = Path(__file__).resolve().parents[2]


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces.
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


# The waits below poll every POLL seconds: process exit of a non-child and a
# port answering have no event this test could wait on.
POLL = 0.05


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def server_child(demo: subprocess.Popen[bytes], port: int) -> int:
    """Wait for the demo's server to answer; return its pid."""
    wait_until_sync(
        lambda: demo.poll() is not None or healthy(port), 60, "the demo server", interval=POLL
    )
    assert demo.poll() is None, "the demo exited early"
    servers = [pid for pid in children_of(demo.pid) if alive(pid)]
    assert len(servers) == 1, servers
    return servers[0]


def reap(pid: int | None) -> None:
    """SIGKILL a server the demo left behind (only when the test failed)."""
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGKILL)


def start_demo(port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSTREAM_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    return subprocess.Popen(
        [sys.executable, "-m", "metricstream", "demo", "--port", str(port), "--seed", "1"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "how",
    [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
    ids=["ctrl-c", "sigterm", "sighup", "sigkill"],
)
def test_the_server_dies_with_the_demo(how: signal.Signals) -> None:
    port = free_port()
    demo = start_demo(port)
    server: int | None = None
    try:
        server = server_child(demo, port)
        demo.send_signal(how)
        demo.wait(timeout=scaled(30))
        gone = server
        wait_until_sync(
            lambda: not alive(gone), 30, f"the server to exit after {how.name}", interval=POLL
        )
        assert not healthy(port)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        reap(server)


def test_q_in_the_terminal_dashboard_stops_the_server() -> None:
    port = free_port()
    master, slave = pty.openpty()
    env_term = {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "metricstream", "demo", "--port", str(port), "--seed", "1"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("METRICSTREAM_")},
            "PYTHONPATH": str(ROOT / "src"),
            **env_term,
        },
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    screen = bytearray()

    def drain() -> None:
        # The dashboard blocks once the terminal's buffer is full: keep reading.
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            screen.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    server: int | None = None
    try:
        server = server_child(demo, port)
        wait_until_sync(
            lambda: b"metricstream" in screen, 60, "the dashboard to draw", interval=POLL
        )

        def quit_pressed() -> bool:
            if demo.poll() is not None:
                return True
            os.write(master, b"q")
            return False

        # The dashboard reads keys once it is ready; press q until it is.
        wait_until_sync(quit_pressed, 60, "the dashboard to quit on q", interval=POLL)
        assert demo.wait(timeout=scaled(30)) == 0
        gone = server
        wait_until_sync(lambda: not alive(gone), 30, "the server to exit after q", interval=POLL)
        assert not healthy(port)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        os.close(master)
        reader.join(timeout=scaled(5))
        reap(server)
