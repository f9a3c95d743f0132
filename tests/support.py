"""Helpers shared by the test suite.

``require_*`` skip a test whose external dependency is missing, with the reason
said plainly; with ``METRICSTREAM_REQUIRE_ALL=1`` (set by CI) the same check
fails instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import pytest

if TYPE_CHECKING:
    import httpx

__all__ = [
    "TIMEOUT_FACTOR",
    "answers",
    "fakeai_chat",
    "free_port",
    "require",
    "require_executable",
    "scaled",
    "wait_healthy",
    "wait_until",
    "wait_until_sync",
]

T = TypeVar("T")

#: Multiply every test deadline by this (``METRICSTREAM_TEST_TIMEOUT_FACTOR``),
#: for slow or loaded machines.
TIMEOUT_FACTOR = float(os.environ.get("METRICSTREAM_TEST_TIMEOUT_FACTOR", "1"))


def scaled(seconds: float) -> float:
    """A test deadline, scaled by ``TIMEOUT_FACTOR``."""
    return seconds * TIMEOUT_FACTOR


@overload
async def wait_until(
    condition: Callable[[], Awaitable[T]],
    within: float = ...,
    what: str = ...,
    *,
    interval: float = ...,
) -> T: ...
@overload
async def wait_until(
    condition: Callable[[], T], within: float = ..., what: str = ..., *, interval: float = ...
) -> T: ...
async def wait_until(
    condition: Callable[[], Any], within: float = 5.0, what: str = "", *, interval: float = 0.005
) -> Any:
    """Wait until ``condition()`` is truthy and return that value; fail after
    ``within`` seconds, scaled.

    ``condition`` may be a coroutine function (a probe of a server that says
    it is ready only by answering). Polls, every ``interval`` seconds: the
    conditions are statistics and states that no event announces. Where an
    event exists, await the event instead.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(within)
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            pytest.fail(f"timed out after {scaled(within):g} s waiting for {what or condition}")
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], T], within: float = 5.0, what: str = "", *, interval: float = 0.02
) -> T:
    """:func:`wait_until` for tests without an event loop (subprocesses, a
    browser driven synchronously): blocks the thread between polls."""
    deadline = time.monotonic() + scaled(within)
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {scaled(within):g} s waiting for {what or condition}")
        time.sleep(interval)
    return value


async def answers(http: httpx.AsyncClient, url: str) -> bool:
    """Whether ``url`` answers with a success status now; False while
    nothing listens there yet."""
    import httpx

    try:
        return (await http.get(url)).is_success
    except httpx.TransportError:
        return False


def wait_healthy(
    url: str,
    proc: subprocess.Popen[Any],
    within: float = 30.0,
    *,
    verify: ssl.SSLContext | bool = True,
) -> None:
    """Wait until ``url`` answers 200; fail at once, with what the server
    wrote to its piped stderr, if ``proc`` exits first."""
    import httpx

    with httpx.Client(verify=verify, timeout=1) as http:

        def answering() -> bool:
            assert proc.poll() is None, f"the server exited early: {proc.communicate()[1]}"
            try:
                return http.get(url).status_code == 200
            except httpx.TransportError:
                return False

        # Polling: the server says it is ready only by answering.
        wait_until_sync(answering, within, f"{url} to answer 200", interval=0.1)


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
