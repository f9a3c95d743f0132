"""The token in its three forms, the subprotocol the server selects, and the
token on the HTTP pages (``/``, ``/metrics``), against a real uvicorn."""

from __future__ import annotations

import base64

import httpx
import pytest

from metricstream.server import ServerSettings
from metricstream.server._endpoint import _token_ok

from .conftest import close_code, open_client, recv, running

TOKEN = "s3cret/+=:"  # not an HTTP token as it stands: needs the base64url form


def token_entry(token: str) -> str:
    return "metricstream.token." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


async def test_a_subprotocol_entry_carries_the_token_and_metricstream_is_selected() -> None:
    async with (
        running(settings=ServerSettings(token=TOKEN)) as server,
        open_client(server.url(), subprotocols=["metricstream", token_entry(TOKEN)]) as ws,
    ):
        # A browser fails the handshake unless one offered protocol is
        # echoed; the token entry itself must never be.
        assert ws.subprotocol == "metricstream"
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "metricstream"
        assert (await recv(ws))["type"] == "init"


async def test_a_wrong_subprotocol_token_is_closed_with_4001_after_a_valid_handshake() -> None:
    async with running(settings=ServerSettings(token=TOKEN)) as server:
        for offered in (
            ["metricstream", token_entry("wrong")],
            ["metricstream", "metricstream.token.!!not-base64"],
            ["metricstream"],
        ):
            async with open_client(server.url(), subprotocols=offered) as ws:
                assert ws.subprotocol == "metricstream"
                assert await close_code(ws) == 4001
        assert server.hub.stats.rejections["token"] == 3


async def test_bearer_header_and_query_still_work_and_no_subprotocol_is_forced() -> None:
    async with running(settings=ServerSettings(token=TOKEN)) as server:
        async with open_client(
            server.url(), additional_headers={"Authorization": f"Bearer {TOKEN}"}
        ) as ws:
            assert ws.subprotocol is None
            assert (await recv(ws))["type"] == "init"
        query = httpx.QueryParams({"token": TOKEN})
        async with open_client(server.url(str(query))) as ws:
            assert (await recv(ws))["type"] == "init"


def test_every_form_is_compared_and_only_the_right_token_passes() -> None:
    right, wrong = "abc", "abd"
    assert _token_ok(right, f"Bearer {right}", {})
    assert _token_ok(right, f"bearer   {right}", {})
    assert _token_ok(right, "", {"token": [right]})
    assert _token_ok(right, "", {}, ("x", token_entry(right)))
    assert not _token_ok(right, f"Bearer {wrong}", {"token": [wrong]}, (token_entry(wrong),))
    assert not _token_ok(right, f"Basic {right}", {})
    assert not _token_ok(right, "", {}, (f"metricstream.token.{right}!",))


@pytest.mark.parametrize("protect", [True, False])
async def test_the_page_and_metrics_honour_the_token_when_configured(protect: bool) -> None:
    settings = ServerSettings(token=TOKEN, protect_http=protect)
    async with (
        running(settings=settings) as server,
        httpx.AsyncClient(base_url=f"http://{server.base}") as http,
    ):
        bare = {path: (await http.get(path)).status_code for path in ("/", "/metrics")}
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        with_header = {
            path: (await http.get(path, headers=bearer)).status_code for path in ("/", "/metrics")
        }
        with_query = {
            path: (await http.get(path, params={"token": TOKEN})).status_code
            for path in ("/", "/metrics")
        }
        wrong = (await http.get("/metrics", headers={"Authorization": "Bearer no"})).status_code
        asset = (await http.get("/static/js/client.js")).status_code
        health = await http.get("/healthz")
    expected_bare = 401 if protect else 200
    assert bare == {"/": expected_bare, "/metrics": expected_bare}
    assert with_header == {"/": 200, "/metrics": 200}
    assert with_query == {"/": 200, "/metrics": 200}
    assert wrong == expected_bare
    # The page's code is public (it holds no figures); health never needs the token.
    assert asset == 200
    assert health.status_code == 200
    assert set(health.json()) == {"status", "connections", "sequence", "epoch"}
    assert TOKEN not in health.text


async def test_a_401_says_how_to_authenticate() -> None:
    async with (
        running(settings=ServerSettings(token=TOKEN)) as server,
        httpx.AsyncClient(base_url=f"http://{server.base}") as http,
    ):
        response = await http.get("/metrics")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in response.text
