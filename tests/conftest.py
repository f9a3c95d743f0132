"""Suite-wide configuration; fixtures specific to one part live beside its tests."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, settings

from .support import answers, free_port, require, require_executable, wait_until

# CI runs more examples; a developer's loop stays quick.
settings.register_profile("ci", max_examples=400, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


_FAKEAI = Path(__file__).resolve().parents[1] / ".venv-fakeai" / "bin" / "fakeai"


class FakeAI:
    """A real FakeAI server process on a fixed port, which a test may kill and restart."""

    def __init__(self, executable: str, port: int) -> None:
        self.executable = executable
        self.port = port
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start it and wait until it answers ``/health``."""
        process = self.process = await asyncio.create_subprocess_exec(
            self.executable,
            "server",
            "--port",
            str(self.port),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        async with httpx.AsyncClient() as http:

            async def started() -> bool:
                if process.returncode is not None:
                    assert process.stderr is not None
                    tail = (await process.stderr.read()).decode(errors="replace")[-400:]
                    require(False, f"the FakeAI server exited at startup: {tail}")
                return await answers(http, f"http://127.0.0.1:{self.port}/health")

            # Polling: the server announces readiness only by answering.
            await wait_until(started, 60, "the FakeAI server to answer", interval=0.1)

    async def kill(self) -> None:
        """SIGKILL it (FakeAI ignores SIGTERM) and reap it."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
        if process.stderr is not None:
            await process.stderr.read()
        self.process = None


@pytest.fixture
async def fakeai_server() -> AsyncIterator[FakeAI]:
    """A real FakeAI server (``make fakeai`` installs it) on a free port."""
    executable = require_executable(
        os.environ.get("METRICSTREAM_FAKEAI", str(_FAKEAI)), "run `make fakeai`"
    )
    server = FakeAI(executable, free_port())
    try:
        await server.start()
        yield server
    finally:
        await server.kill()


@pytest.fixture
def fakeai(fakeai_server: FakeAI) -> int:
    """The port of a running FakeAI server."""
    return fakeai_server.port
