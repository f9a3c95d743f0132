"""Helpers shared by the test suite.

``require_*`` skip a test whose external dependency is missing, with the reason
said plainly; with ``METRICSTREAM_REQUIRE_ALL=1`` (set by CI) the same check
fails instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = [
    "TIMEOUT_FACTOR",
    "fakeai_chat",
    "free_port",
    "require",
    "require_executable",
    "scaled",
    "wait_until",
]

#: Multiply every test deadline by this (``METRICSTREAM_TEST_TIMEOUT_FACTOR``),
#: for slow or loaded machines.
TIMEOUT_FACTOR = float(os.environ.get("METRICSTREAM_TEST_TIMEOUT_FACTOR", "1"))


def scaled(seconds: float) -> float:
    """A test deadline, scaled by ``TIMEOUT_FACTOR``."""
    return seconds * TIMEOUT_FACTOR


async def wait_until(condition: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
    """Wait until ``condition()`` holds; fail after ``within`` seconds, scaled.

    Polls, briefly: the conditions are statistics and states that no event
    announces. Where an event exists, await the event instead.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(within)
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {scaled(within):g} s waiting for {what or condition}")
        await asyncio.sleep(0.005)


def require(condition: bool, reason: str) -> None:
    """Skip (or, under CI, fail) unless ``condition`` holds."""
    if condition:
        return
    message = f"missing dependency: {reason}"
    if os.environ.get("METRICSTREAM_REQUIRE_ALL") == "1":
        pytest.fail(message + " (METRICSTREAM_REQUIRE_ALL=1 forbids skipping)")
    pytest.skip(message)


def require_executable(name_or_path: str, how_to_install: str) -> str:
    """Return the path of an executable, or skip/fail saying how to get it."""
    path = shutil.which(name_or_path) or (
        name_or_path if Path(name_or_path).is_file() and os.access(name_or_path, os.X_OK) else None
    )
    require(path is not None, f"{name_or_path!r} not found; {how_to_install}")
    assert path is not None
    return path


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def fakeai_chat(port: int, count: int) -> None:
    """Send ``count`` chat completions to a FakeAI server, for it to report."""
    import httpx

    body = {"model": "openai/gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=scaled(30)) as http:
        for _ in range(count):
            response = await http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
            response.raise_for_status()
