"""``serve`` behind a reverse proxy: ``--root-path`` and ``--proxy-headers``.

The proxy is played by the test: it sends what nginx sends (prefix stripped,
``X-Forwarded-For``/``-Proto`` set) from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect

from .support import scaled
from .test_logging import serve

TOKEN = "proxy-token"
FORWARDED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}


async def stream_through(port: int) -> str:
    url = f"ws://127.0.0.1:{port}/metrics/stream"
    headers = {"Authorization": f"Bearer {TOKEN}", **FORWARDED}
    async with connect(url, additional_headers=headers) as ws:
        frame = await asyncio.wait_for(ws.recv(), scaled(10))
    message: str = json.loads(frame)["type"]
    return message


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
def test_the_app_under_a_prefix_with_forwarded_headers(trusted: bool) -> None:
    allowed = "127.0.0.1" if trusted else "192.0.2.1"
    args = ("--token", TOKEN, "--root-path", "/ms", "--proxy-headers")
    with serve(*args, "--forwarded-allow-ips", allowed) as (port, output):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=FORWARDED) as http:
            page = http.get("/", params={"token": TOKEN})
            refused = http.get("/")
            health = http.get("/healthz")
        assert asyncio.run(stream_through(port)) == "init"
    assert page.status_code == 200
    # The page finds its assets and the stream relative to its own address,
    # so that under /ms/ it asks for /ms/static/... and /ms/metrics/stream.
    assert 'src="static/js/main.js"' in page.text
    assert refused.status_code == 401  # the token gate sees through the prefix
    assert health.status_code == 200
    log = output[1]
    access = [line for line in log.splitlines() if "GET /ms/?token=***" in line]
    assert access, log
    if trusted:
        assert all("203.0.113.9" in line for line in access)
    else:
        assert not any("203.0.113.9" in line for line in log.splitlines())
    assert TOKEN not in log
