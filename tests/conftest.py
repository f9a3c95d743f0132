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

from .support import free_port, require, require_executable, scaled

# CI runs more examples; a developer's loop stays quick.
settings.register_profile("ci", max_examples=400, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


_FAKEAI = Path(__file__).resolve().parents[1] / ".venv-fakeai" / "bin" / "fakeai"


@pytest.fixture
async def fakeai() -> AsyncIterator[int]:
    """A real FakeAI server (``make fakeai`` installs it) on a free port; yields the port."""
    executable = require_executable(
        os.environ.get("METRICSTREAM_FAKEAI", str(_FAKEAI)), "run `make fakeai`"
    )
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        executable,
        "server",
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient() as http, asyncio.timeout(scaled(60)):
            while True:
                if process.returncode is not None:
                    assert process.stderr is not None
                    tail = (await process.stderr.read()).decode(errors="replace")[-400:]
                    require(False, f"the FakeAI server exited at startup: {tail}")
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/health")).is_success:
                        break
                except httpx.TransportError:
                    pass
                # Polling: the server announces readiness only by answering.
                await asyncio.sleep(0.1)
        yield port
    finally:
        # FakeAI ignores SIGTERM.
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
        if process.stderr is not None:
            await process.stderr.read()
