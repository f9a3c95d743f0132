"""The README's examples work as written."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx

from metricstream.client import WebSocketConfig, WebSocketService
from metricstream.protocol import MessageType, WebSocketMessage
from metricstream.server import StreamServer, uvicorn_config

from .support import scaled, wait_until

README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def block_containing(text: str) -> str:
    (block,) = [b for b in python_blocks() if text in b]
    return block


def test_every_python_example_compiles() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        compile(block, "README.md", "exec")


async def test_the_gateway_example_streams_its_own_requests() -> None:
    namespace: dict[str, Any] = {}
    exec(block_containing("MetricsMiddleware"), namespace)
    app, hub = namespace["app"], namespace["hub"]

    @app.post("/v1/chat/completions")
    async def chat() -> dict[str, Any]:
        return {
            "model": "my-model",
            "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
            "choices": [{"message": {"role": "assistant", "content": "hi"}}],
        }

    server = StreamServer(uvicorn_config(app, host="127.0.0.1", port=0, log_level="warning"), hub)
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, 10, "the server to start")
        base = f"127.0.0.1:{server.bound_port}"
        async with httpx.AsyncClient(base_url=f"http://{base}") as http:
            for _ in range(3):
                response = await http.post("/v1/chat/completions", json={})
                assert response.status_code == 200

        seen = asyncio.get_running_loop().create_future()

        def on_model(data: Any, message: WebSocketMessage[Any]) -> None:
            if data.model == "my-model" and not seen.done():
                seen.set_result(data)

        config = WebSocketConfig(url=f"ws://{base}/metrics/stream")
        async with WebSocketService(config) as client:
            client.subscribe(MessageType.MODEL_UPDATE, on_model)
            model = await asyncio.wait_for(seen, scaled(10))
        assert model.request_count == 3
        assert model.total_prompt_tokens == 36
        assert model.total_completion_tokens == 90
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, scaled(30))


async def test_the_sync_example_ends_an_idle_wait_with_the_timeout_it_catches() -> None:
    import contextlib
    import io

    from metricstream.server import MetricsHub, ServerSettings

    from .server.conftest import running

    block = block_containing("SyncWebSocketService")
    async with running(MetricsHub(heartbeat_interval=None), ServerSettings()) as server:
        code = block.replace("ws://127.0.0.1:8765/metrics/stream", server.url()).replace(
            "timeout=30", "timeout=0.5"
        )
        assert code != block
        out = io.StringIO()

        def run() -> None:
            with contextlib.redirect_stdout(out):
                exec(code, {})

        # The sync client blocks; the server runs on this loop meanwhile.
        await asyncio.wait_for(asyncio.to_thread(run), scaled(30))
    assert out.getvalue() == "no request for 30 s\n"
