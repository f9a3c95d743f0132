"""A gateway for ``uvicorn --workers N``: each worker's requests go to Redis.

Every worker records its requests with :class:`MetricsMiddleware` and
publishes them, as events only, into the stream shared through the Redis at
``$GATEWAY_REDIS``; the totals are the aggregator's (see docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from metricstream.collector import MetricsCollector, MetricsMiddleware
from metricstream.protocol import EVENT_TYPES
from metricstream.server import RedisPublisher

publisher = RedisPublisher(os.environ["GATEWAY_REDIS"], types=EVENT_TYPES)
collector = MetricsCollector(publisher, system_stats=False, interval=0.2)


async def completion(request: Request) -> JSONResponse:
    body = await request.json()
    tokens = int(body["tokens"])
    await asyncio.sleep(float(body.get("sleep", 0.0)))
    return JSONResponse(
        {
            "id": body["id"],
            "object": "chat.completion",
            "model": body["model"],
            "choices": [],
            "usage": {
                "prompt_tokens": tokens,
                "completion_tokens": 2 * tokens,
                "total_tokens": 3 * tokens,
            },
        }
    )


async def pid(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid(), "pending": publisher.pending})


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    async with publisher, collector:
        yield


app = MetricsMiddleware(
    Starlette(
        routes=[
            Route("/v1/chat/completions", completion, methods=["POST"]),
            Route("/pid", pid),
        ],
        lifespan=lifespan,
    ),
    collector=collector,
    exclude_paths=["/pid"],
)
