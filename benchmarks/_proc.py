"""Subprocess control and measurement for the benchmarks.

Every child runs in its own session (so its own process group), pinned to one
CPU with ``taskset``; :func:`kill_all` kills every group still alive and runs
on normal exit, on exceptions (the runner's ``finally``) and on SIGTERM/SIGINT.
Children talk JSON lines on stdout; stderr goes to a temporary file whose tail
is shown when a child fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

__all__ = [
    "Child",
    "ChildError",
    "kill_all",
    "live_children",
    "raise_nofile_limit",
    "spawn",
    "wait_until",
]

SERVER_CPU = 0
LOAD_CPU = 1
_REPO = Path(__file__).resolve().parent.parent
_children: list[Child] = []


class ChildError(RuntimeError):
    """A child failed, exited early, or did not answer in time."""


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard one (inherited by children)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _pin(cpu: int) -> list[str]:
    if cpu >= (os.cpu_count() or 1):
        cpu = 0
    if shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


class Child:
    """A running benchmark subprocess, spoken to in JSON lines."""

    def __init__(
        self,
        name: str,
        module: str,
        args: list[str],
        cpu: int,
        *,
        program: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.name = name
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in kill()
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO), environment.get("PYTHONPATH", "")) if p
        )
        environment.update(env or {})
        # ``program`` runs another executable (a peer in its own virtualenv)
        # instead of ``python -m module``.
        start = program if program is not None else [sys.executable, "-m", module]
        command = [*_pin(cpu), *start, *args]
        self.popen = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=cwd or _REPO,
            env=environment,
            start_new_session=True,
        )
        if not shutil.which("taskset"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.popen.pid, {cpu % (os.cpu_count() or 1)})
        self.pid = self.popen.pid
        self.process = psutil.Process(self.pid)
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        assert self.popen.stdout is not None
        self._selector.register(self.popen.stdout, selectors.EVENT_READ)
        _children.append(self)

    # talking ------------------------------------------------------------------

    def send(self, command: str) -> None:
        """Write one command line to the child's stdin."""
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(command.encode() + b"\n")
            self.popen.stdin.flush()
        except BrokenPipeError as exc:
            raise ChildError(f"{self.name} exited: {self.stderr_tail()}") from exc

    def read_event(self, timeout: float) -> dict[str, Any]:
        """The next JSON line from the child's stdout (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        while True:
            line, sep, rest = self._buffer.partition(b"\n")
            if sep:
                self._buffer = rest
                if line.startswith(b"{"):
                    event: dict[str, Any] = json.loads(line)
                    return event
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildError(f"{self.name}: no answer within {timeout:.0f} s")
            if self._selector.select(remaining):
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ChildError(f"{self.name} exited: {self.stderr_tail()}")
                self._buffer += chunk

    def ask(self, command: str, timeout: float = 30.0) -> dict[str, Any]:
        """Send a command and return its answer."""
        self.send(command)
        return self.read_event(timeout)

    def stderr_tail(self, size: int = 2000) -> str:
        """The end of what the child wrote to stderr."""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0, os.SEEK_END)
            end = self._stderr.tell()
            self._stderr.seek(max(0, end - size))
            return self._stderr.read().decode(errors="replace").strip()
        return ""

    # measuring ----------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """CPU time of the process so far, seconds.

        From ``/proc/<pid>/schedstat`` (nanoseconds, summed over its threads)
        when the kernel has it: ``/proc/<pid>/stat`` counts in clock ticks
        (10 ms), too coarse for the short windows of a quick run.
        """
        try:
            total = 0
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[0])
            if total:
                return total / 1e9
        except (OSError, ValueError, IndexError):
            pass
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far: Python work vs the kernel's (socket writes)."""
        times = self.process.cpu_times()
        return float(times.user), float(times.system)

    def rss(self) -> int:
        """Resident set size, bytes."""
        return int(self.process.memory_info().rss)

    def http_get(self, port: int, path: str, timeout: float = 5.0) -> str:
        """GET ``http://127.0.0.1:port/path`` (the servers' /metrics, /healthz)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            body: bytes = r.read()
            return body.decode()

    # stopping -----------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the child's whole process group and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._selector.close()
        self._stderr.close()
        with contextlib.suppress(ValueError):
            _children.remove(self)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def spawn(
    name: str,
    module: str,
    args: list[str],
    *,
    cpu: int,
    program: list[str] | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Child:
    """Start ``python -m module args`` (or ``program args``) pinned to ``cpu``;
    kill it with :meth:`Child.kill`."""
    return Child(name, module, args, cpu, program=program, env=env, cwd=cwd)


def kill_all() -> None:
    """Kill every child still running (idempotent)."""
    while _children:
        _children[-1].kill()


def live_children() -> list[int]:
    """PIDs of the children started here that are still alive (for the tests)."""
    return [c.pid for c in _children if c.popen.poll() is None]


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout``; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
