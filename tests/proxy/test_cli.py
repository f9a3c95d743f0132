"""``metricstream proxy`` as a real subprocess, and price tables from files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from metricstream.collector import DEFAULT_PRICES, ModelPrice, load_prices
from metricstream.exceptions import ConfigError
from tests.proxy.conftest import Exchange, Reply, StandIn
from tests.support import answers, free_port, scaled, wait_until


def test_price_files_in_json_and_toml_extend_the_built_in_table(tmp_path: Path) -> None:
    as_json = tmp_path / "prices.json"
    as_json.write_text(
        json.dumps(
            {
                "my-model": {"prompt_per_million": 1.5, "completion_per_million": 3},
                "gpt-4o": [1, 2],
            }
        )
    )
    prices = load_prices(as_json)
    assert prices["my-model"] == ModelPrice(1.5, 3.0)
    assert prices["gpt-4o"] == ModelPrice(1, 2)  # replaced
    assert prices["gpt-4o-mini"] == DEFAULT_PRICES["gpt-4o-mini"]  # kept
    as_toml = tmp_path / "prices.toml"
    as_toml.write_text('"llama3.2" = [0.1, 0.2]\n')
    assert load_prices(as_toml, base={}) == {"llama3.2": ModelPrice(0.1, 0.2)}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid"),
        ("[1, 2]", "must map model names"),
        ('{"m": [1]}', "price of 'm'"),
        ('{"m": {"prompt_per_million": 1}}', "price of 'm'"),
        ('{"m": [-1, 2]}', "finite number >= 0"),
    ],
)
def test_bad_price_files_are_config_errors(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_prices(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_prices(tmp_path / "missing.json")


async def test_proxy_command_forwards_records_and_prices_from_a_file(tmp_path: Path) -> None:
    completion = {
        "id": "cmpl-9",
        "object": "chat.completion",
        "model": "house-model",
        "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
    }

    async def handler(exchange: Exchange) -> Reply:
        return Reply(
            headers=[("Content-Type", "application/json")],
            pieces=[json.dumps(completion).encode()],
        )

    prices = tmp_path / "prices.toml"
    prices.write_text(
        '"house-model" = { prompt_per_million = 2.0, completion_per_million = 4.0 }\n'
    )
    port = free_port()
    async with StandIn(handler) as upstream:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "metricstream",
            "proxy",
            "--upstream",
            upstream.url + "/v1/",
            "--port",
            str(port),
            "--prices",
            str(prices),
            "--interval",
            "0.1",
            "--log-level",
            "warning",
            start_new_session=True,
        )
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=scaled(10)
            ) as http:
                # Polling: the process announces readiness only by answering.
                await wait_until(
                    lambda: answers(http, "/healthz"), 30, "the proxy to answer", interval=0.05
                )
                response = await http.post(
                    "/v1/chat/completions", json={"model": "house-model", "messages": []}
                )
                assert response.json() == completion
                [seen] = upstream.exchanges
                assert seen.target == "/v1/chat/completions"
                async with connect(f"ws://127.0.0.1:{port}/metrics/stream") as ws:
                    async with asyncio.timeout(scaled(10)):
                        while True:
                            message = json.loads(await ws.recv())
                            if message["type"] == "cost_update":
                                break
            # 1000 prompt tokens at 2.0/M plus 500 completion tokens at 4.0/M.
            assert message["data"]["breakdown_by_model"] == {"house-model": pytest.approx(0.004)}
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            async with asyncio.timeout(scaled(30)):
                code = await process.wait()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert code in (0, -signal.SIGTERM)
