"""The direct-write contract, run against whichever uvicorn is importable.

``python uvicorn_contract.py`` serves a hub on a real uvicorn (``StreamServer``)
on a free loopback port, connects a real client and prints a JSON report:
the uvicorn version, whether the connection was written directly, the
fallback count, what the client received and the close code of a graceful
shutdown. ``tests/server/test_uvicorn_range.py`` runs it on the lowest uvicorn
``pyproject.toml`` allows (``PYTHONPATH`` put ahead) and on the installed one.

``--lowest`` prints that lowest version (the Makefile installs it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def uvicorn_requirement() -> str:
    """The uvicorn requirement of pyproject.toml, e.g. ``>=0.35,<0.55``."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    deps = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        deps.extend(extra)
    specs = {d.removeprefix("uvicorn").split(";")[0] for d in deps if d.startswith("uvicorn")}
    if len(specs) != 1:
        raise SystemExit(f"expected one uvicorn requirement, found {specs}")
    return specs.pop()


def lowest() -> str:
    """The version of the ``>=`` bound."""
    for part in uvicorn_requirement().split(","):
        if part.strip().startswith(">="):
            return part.strip()[2:]
    raise SystemExit("the uvicorn requirement has no >= bound")


async def run() -> dict[str, object]:
    import uvicorn
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from metricstream.protocol import MessageType, MetricsUpdatePayload, make_message
    from metricstream.server import MetricsHub, StreamServer, create_app, uvicorn_config

    hub = MetricsHub(heartbeat_interval=None)
    server = StreamServer(uvicorn_config(create_app(hub), port=0, log_level="warning"), hub)
    serving = asyncio.create_task(server.serve())
    # uvicorn.Server offers a flag for "listening", not an event to await.
    while server.bound_port is None:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    received: list[str] = []
    async with connect(f"ws://127.0.0.1:{server.bound_port}/metrics/stream") as ws:
        received.append(json.loads(await ws.recv())["type"])
        (sub,) = hub.subscribers
        payload = MetricsUpdatePayload(
            total_requests=1,
            total_tokens=1,
            total_cost=0.0,
            avg_latency_ms=1.0,
            error_rate=0.0,
            streaming_percentage=0.0,
            requests_per_second=1.0,
            tokens_per_second=1.0,
            active_connections=1,
        )
        hub.publish(make_message(MessageType.METRICS_UPDATE, payload))
        received.append(json.loads(await ws.recv())["type"])
        server.should_exit = True
        try:
            await ws.recv()
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
    await serving
    return {
        "uvicorn": uvicorn.__version__,
        "direct": sub.direct is not None,
        "fallbacks": hub.stats.direct_write_fallbacks,
        "received": received,
        "close_code": code,
    }


def main() -> int:
    if sys.argv[1:] == ["--lowest"]:
        print(lowest())
        return 0
    report = asyncio.run(asyncio.wait_for(run(), 60))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
