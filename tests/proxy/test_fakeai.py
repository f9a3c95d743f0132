"""The real OpenAI SDK, through the proxy, to the real FakeAI server."""

from __future__ import annotations

from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.conftest import FakeAI
from tests.proxy.conftest import running_proxy, watching
from tests.support import scaled

pytestmark = pytest.mark.fakeai

MODEL = "openai/gpt-oss-120b"
MESSAGES: Any = [{"role": "user", "content": "Say hello in a few words."}]


async def test_sdk_calls_are_answered_and_recorded(fakeai_server: FakeAI) -> None:
    async with running_proxy(f"http://127.0.0.1:{fakeai_server.port}/v1") as proxy:
        sdk = AsyncOpenAI(
            base_url=f"{proxy.url}/v1", api_key="sk-test-key", max_retries=0, timeout=scaled(30)
        )
        async with watching(proxy) as stream, sdk:
            usages: list[tuple[str, int, int]] = []

            chat = await sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert chat.choices[0].message.content
            assert chat.usage is not None
            usages.append(("chat", chat.usage.prompt_tokens, chat.usage.completion_tokens))

            pieces: list[str] = []
            stream_usage = None
            async for chunk in await sdk.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            ):
                if chunk.usage is not None:
                    stream_usage = chunk.usage
                pieces.extend(c.delta.content or "" for c in chunk.choices)
            assert "".join(pieces)
            assert stream_usage is not None, "the upstream sent the usage chunk asked for"
            usages.append(("stream", stream_usage.prompt_tokens, stream_usage.completion_tokens))

            # A stream whose client did not ask for usage: what it receives
            # has no usage chunk, and the recorded tokens are marked estimated.
            plain_chunks = [
                chunk
                async for chunk in await sdk.chat.completions.create(
                    model=MODEL, messages=MESSAGES, stream=True
                )
            ]
            assert all(c.usage is None for c in plain_chunks)
            content_chunks = sum(1 for c in plain_chunks if any(x.delta.content for x in c.choices))

            completion = await sdk.completions.create(model=MODEL, prompt="Once upon a time")
            assert completion.usage is not None
            usages.append(
                ("completion", completion.usage.prompt_tokens, completion.usage.completion_tokens)
            )

            embedding = await sdk.embeddings.create(
                model="sentence-transformers/all-mpnet-base-v2", input="hello"
            )
            assert embedding.data[0].embedding

            models = [m.id async for m in sdk.models.list()]
            assert models

            calls = 6
            records = await stream.until("request_update", calls, seconds=20)
            assert len(records) == calls
            by_endpoint: dict[str, list[dict[str, Any]]] = {}
            for record in records:
                by_endpoint.setdefault(record["data"]["endpoint"], []).append(record)
            assert sorted((k, len(v)) for k, v in by_endpoint.items()) == [
                ("/v1/chat/completions", 3),
                ("/v1/completions", 1),
                ("/v1/embeddings", 1),
                ("/v1/models", 1),
            ]
            chats = [r["data"] for r in by_endpoint["/v1/chat/completions"]]
            plain, streamed, estimated = chats
            assert not plain["streaming"]
            assert (plain["prompt_tokens"], plain["completion_tokens"]) == usages[0][1:]
            assert streamed["streaming"]
            assert (streamed["prompt_tokens"], streamed["completion_tokens"]) == usages[1][1:]
            assert not by_endpoint["/v1/chat/completions"][1].get("metadata")
            assert estimated["streaming"]
            assert by_endpoint["/v1/chat/completions"][2]["metadata"] == {"usage_estimated": True}
            assert estimated["completion_tokens"] == content_chunks
            for data in (streamed, estimated):
                assert data["status"] == "success"
                assert data["model"] == MODEL
                assert 0 <= data["time_to_first_token_ms"] <= data["latency_ms"]
                assert data["inter_token_latency_ms"] is not None
                assert data["inter_token_latency_p50_ms"] <= data["inter_token_latency_p95_ms"]
                assert data["finish_reason"]
            completion_record = by_endpoint["/v1/completions"][0]["data"]
            assert (
                completion_record["prompt_tokens"],
                completion_record["completion_tokens"],
            ) == usages[2][1:]
            for record in records:
                assert record["data"]["status"] == "success"
                assert record["data"]["latency_ms"] > 0
        snapshot = proxy.collector.snapshot()
        assert snapshot.metrics.total_requests == calls
        assert snapshot.metrics.ttft_p50_ms is not None
        # The price table knows this model: the recorded cost is what it says.
        price = proxy.collector.prices[MODEL]
        assert plain["cost"] == pytest.approx(
            price.cost(plain["prompt_tokens"], plain["completion_tokens"]), abs=1e-8
        )
