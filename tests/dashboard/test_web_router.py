"""The dashboard's HTTP side: page, assets, headers, caching, no stray paths.

Served by the real ``create_app`` on uvicorn, so these also check that the
stream server includes the page.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from metricstream.dashboard.web import CONTENT_SECURITY_POLICY, create_web_router, load_assets
from metricstream.server import MetricsHub, StreamServer, create_app, uvicorn_config

from ..support import scaled, wait_until


@pytest.fixture
async def base() -> AsyncIterator[str]:
    hub = MetricsHub(heartbeat_interval=None)
    server = StreamServer(
        uvicorn_config(create_app(hub), host="127.0.0.1", port=0, log_level="warning"), hub
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), 10, "the server to start")
    if task.done():
        task.result()  # raises what stopped it
    try:
        yield f"http://127.0.0.1:{server.bound_port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, scaled(30))


async def test_page_and_assets_have_types_and_security_headers(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-cache"
        # Every asset the page names is served with its type.
        linked = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
        assert "static/js/main.js" in linked
        types = {}
        for path in linked:
            asset = await client.get("/" + path)
            assert asset.status_code == 200, path
            types[path] = asset.headers["content-type"]
        assert types["static/app.css"] == "text/css; charset=utf-8"
        assert types["static/js/main.js"] == "text/javascript; charset=utf-8"
        assert types["static/favicon.svg"] == "image/svg+xml"


def test_policy_allows_nothing_inline_or_foreign() -> None:
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self' ws: wss:"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    # The page itself has no inline script or style to allow.
    page = load_assets()["index.html"].body.decode()
    assert "<style" not in page
    assert " style=" not in page
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert re.search(r"\son[a-z]+\s*=", page) is None  # no inline event handlers


async def test_revalidation_answers_304(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        first = await client.get("/static/js/client.js")
        etag = first.headers["etag"]
        again = await client.get("/static/js/client.js", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        head = await client.head("/")
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) == len(load_assets()["index.html"].body)


@pytest.mark.parametrize(
    "path",
    [
        "/static/nope.js",
        "/static/../_web.py",
        "/static/%2e%2e/_web.py",
        "/static/..%2f__init__.py",
        "/static/js",
        "/static/",
        "/static/index.html/x",
    ],
)
async def test_only_packaged_assets_are_served(base: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        response = await client.get(path)
        assert response.status_code == 404
        assert b"import" not in response.content


def test_assets_are_read_from_the_package() -> None:
    assets = load_assets()
    assert {"index.html", "app.css", "favicon.svg", "js/main.js", "js/client.js"} <= set(assets)
    assert all(not name.endswith(".py") for name in assets)
    router = create_web_router(assets=assets)
    paths = {getattr(route, "path", None) for route in router.routes}
    assert paths == {"/", "/static/{path:path}"}


def test_a_package_without_its_page_is_refused() -> None:
    assets = load_assets()
    del assets["index.html"]
    with pytest.raises(RuntimeError, match=r"index\.html"):
        create_web_router(assets=assets)
