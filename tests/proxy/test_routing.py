"""Several upstreams, chosen by the model a request names."""

from __future__ import annotations

import json

import httpx
import pytest

from metricstream.exceptions import ConfigError
from metricstream.proxy.cli import parse_upstreams
from tests.proxy.conftest import Exchange, Reply, StandIn, running_proxy, watching
from tests.support import free_port, scaled


def _named(name: str) -> object:
    async def handler(exchange: Exchange) -> Reply:
        body = json.dumps({"served_by": name}).encode()
        return Reply(headers=[("Content-Type", "application/json")], pieces=[body])

    return handler


def test_upstream_options_split_into_a_default_and_routes() -> None:
    assert parse_upstreams(["http://a:8000"]) == ("http://a:8000", {})
    assert parse_upstreams(
        [
            "meta-llama/Llama-3.1-8B-Instruct=http://vllm:8000",
            "http://fallback:8000/v1?key=value",
            "llama3.2=http://ollama:11434",
        ]
    ) == (
        "http://fallback:8000/v1?key=value",
        {
            "meta-llama/Llama-3.1-8B-Instruct": "http://vllm:8000",
            "llama3.2": "http://ollama:11434",
        },
    )
    for bad in (["http://a", "http://b"], ["m=http://a", "m=http://b"], ["=http://a"], ["m="]):
        with pytest.raises(ConfigError):
            parse_upstreams(bad)


async def test_requests_go_to_the_upstream_of_their_model() -> None:
    async with (
        StandIn(_named("one")) as one,  # type: ignore[arg-type]
        StandIn(_named("two")) as two,  # type: ignore[arg-type]
        running_proxy(None, routes={"m1": one.url, "m2": two.url + "/v1/"}) as proxy,
        watching(proxy) as stream,
        httpx.AsyncClient(base_url=proxy.url, timeout=scaled(30)) as http,
    ):
        first = await http.post("/v1/chat/completions", json={"model": "m1"})
        second = await http.post("/v1/chat/completions", json={"model": "m2"})
        # Names no model: every upstream is asked; these answer no model
        # list, so the first route's answer passes through as it is.
        listing = await http.get("/v1/models")
        unknown = await http.post("/v1/chat/completions", json={"model": "m3"})
        records = await stream.until("request_update", 4)
        [error] = await stream.until("error_update", 1)
    assert first.json() == {"served_by": "one"}
    assert second.json() == {"served_by": "two"}
    assert listing.json() == {"served_by": "one"}
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "model_not_found"
    assert [e.target for e in one.exchanges] == ["/v1/chat/completions", "/v1/models"]
    assert [e.target for e in two.exchanges] == ["/v1/chat/completions", "/v1/models"]
    assert [r["data"]["model"] for r in records] == ["m1", "m2", "(none)", "m3"]
    assert records[3]["data"]["status"] == "error"
    assert error["data"]["error_type"] == "model_not_found"


async def test_a_default_upstream_takes_the_models_no_route_names() -> None:
    async with (
        StandIn(_named("default")) as fallback,  # type: ignore[arg-type]
        StandIn(_named("special")) as special,  # type: ignore[arg-type]
        running_proxy(fallback.url, routes={"special": special.url}) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=scaled(30)) as http,
    ):
        other = await http.post("/v1/embeddings", json={"model": "anything"})
        routed = await http.post("/v1/embeddings", json={"model": "special"})
    assert other.json() == {"served_by": "default"}
    assert routed.json() == {"served_by": "special"}


def test_a_proxy_needs_somewhere_to_send() -> None:
    from metricstream.collector import MetricsCollector
    from metricstream.proxy import RecordingProxy, upstream_client
    from metricstream.server import MetricsHub, create_app

    hub = MetricsHub()
    collector = MetricsCollector(hub, system_stats=False)
    app = create_app(hub)
    client = upstream_client()
    with pytest.raises(ConfigError, match="give an upstream"):
        RecordingProxy(app, upstream=None, collector=collector, client=client)
    with pytest.raises(ConfigError, match="http"):
        RecordingProxy(app, upstream="vllm:8000", collector=collector, client=client)
    with pytest.raises(ConfigError, match="http"):
        RecordingProxy(
            app, upstream=None, routes={"m": "ftp://files"}, collector=collector, client=client
        )


def _models(*names: str, status: int = 200) -> object:
    async def handler(exchange: Exchange) -> Reply:
        listing = {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}
        body = json.dumps(listing if status == 200 else {"error": {"message": "no"}}).encode()
        return Reply(status=status, headers=[("Content-Type", "application/json")], pieces=[body])

    return handler


async def test_models_are_listed_where_a_request_for_them_would_go() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    async with (
        StandIn(_models("a", "b", "shared")) as fallback,  # type: ignore[arg-type]
        StandIn(_models("m1", "x")) as one,  # type: ignore[arg-type]
        StandIn(_models("shared", "y")) as two,  # type: ignore[arg-type]
        running_proxy(fallback.url, routes={"m1": one.url, "shared": two.url, "m3": down}) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=scaled(30)) as http,
    ):
        headers = {"Authorization": "Bearer sk-k", "Accept-Encoding": "gzip"}
        listing = await http.get("/v1/models", headers=headers)
    assert listing.status_code == 200
    # "x" and "y" would go to the default upstream, which does not list
    # them; "shared" goes to its route; the unreachable upstream is left out.
    assert [m["id"] for m in listing.json()["data"]] == ["a", "b", "m1", "shared"]
    assert listing.json()["object"] == "list"
    for upstream in (fallback, one, two):
        [seen] = upstream.exchanges
        assert (seen.method, seen.target) == ("GET", "/v1/models")
        assert seen.header("Authorization") == ["Bearer sk-k"]
        assert seen.header("Accept-Encoding") == []


async def test_a_failing_reference_upstream_answers_models_as_it_would_alone() -> None:
    async with (
        StandIn(_models(status=401)) as fallback,  # type: ignore[arg-type]
        StandIn(_models("m1")) as one,  # type: ignore[arg-type]
        running_proxy(fallback.url, routes={"m1": one.url}) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=scaled(30)) as http,
    ):
        listing = await http.get("/v1/models")
    assert listing.status_code == 401
    assert listing.json() == {"error": {"message": "no"}}
    async with (
        running_proxy(
            f"http://127.0.0.1:{free_port()}", routes={"m1": f"http://127.0.0.1:{free_port()}"}
        ) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=scaled(30)) as http,
    ):
        assert (await http.get("/v1/models")).status_code == 502
