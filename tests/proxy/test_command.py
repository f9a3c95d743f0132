"""``metricstream proxy`` run as a real subprocess, configured like ``serve``:
options from flags, environment and a TOML file; TLS; the token on the
stream, ``/`` and ``/metrics`` and never in the log; the LLM figures at
``/metrics``; an engine scraped beside the proxied traffic."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from metricstream._options import add_options, resolve_options
from metricstream.exceptions import ConfigError
from metricstream.proxy.cli import OPTIONS
from metricstream.server.cli import OPTIONS as SERVE_OPTIONS
from tests.collector.engines import serve_engine
from tests.collector.test_scrape import vllm
from tests.collector.test_scrape_cli import engine_figures_seen, latest
from tests.proxy.conftest import Exchange, Reply, StandIn, sse_event
from tests.support import answers, free_port, scaled, wait_until
from tests.test_logging import command_env, subprotocol_entry

TOKEN = "proxy-tok-7d1e93"


def parse(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="metricstream proxy")
    add_options(parser, OPTIONS)
    return resolve_options(parser.parse_args(argv), "proxy", OPTIONS, env or {})


def test_the_stream_server_options_are_the_same_objects_as_serves() -> None:
    shared = {o.name for o in OPTIONS} & {o.name for o in SERVE_OPTIONS}
    assert {"host", "port", "ssl_certfile", "token", "protect_http", "max_connections"} <= shared
    assert {"handshake_timeout", "log_format", "access_log", "scrape", "interval"} <= shared
    serve = {o.name: o for o in SERVE_OPTIONS}
    for option in OPTIONS:
        if option.name in shared:
            assert option is serve[option.name], option.name


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "metricstream.toml"
    config.write_text(
        '[serve]\nport = 1\n[proxy]\nupstream = ["http://file:8000", "m=http://m:1"]\n'
        "port = 1111\ntimeout = 30\nconnect_timeout = 3\ndashboard = false\n"
    )
    env = {"METRICSTREAM_TIMEOUT": "60", "METRICSTREAM_CONNECT_TIMEOUT": "4"}
    args = parse(["--config", str(config), "--connect-timeout", "5"], env)
    assert args.upstream == ["http://file:8000", "m=http://m:1"]  # file over default
    assert args.port == 1111  # the [proxy] table, not [serve]
    assert args.timeout == 60  # env over file
    assert args.connect_timeout == 5  # flag over env
    assert args.dashboard is False
    assert args.max_upstream_connections == 1000  # default
    env = {"METRICSTREAM_UPSTREAM": "http://env:8000,m=http://m:2"}
    assert parse(["--config", str(config)], env).upstream == ["http://env:8000", "m=http://m:2"]
    assert parse(["--no-dashboard"]).dashboard is False
    config.write_text('[proxy]\ntimeout = "soon"\n')
    with pytest.raises(ConfigError, match=r"\[proxy\] timeout: expected a number"):
        parse(["--config", str(config)])


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--timeout", "0"], {}, "argument --timeout: timeout must be positive"),
        ([], {"METRICSTREAM_CONNECT_TIMEOUT": "-1"}, "METRICSTREAM_CONNECT_TIMEOUT: connect_"),
        ([], {"METRICSTREAM_PORT": "99999"}, "METRICSTREAM_PORT: port must be between"),
        ([], {"METRICSTREAM_UPSTREAM": "ftp://nowhere"}, "must be an http(s) URL"),
        (["--ssl-keyfile", "k.pem"], {}, "--ssl-keyfile needs --ssl-certfile"),
        (["--ssl-certfile", "/nonexistent.pem"], {}, "cannot use the TLS certificate"),
        (["--upstream", "m=http://a:1", "--upstream", "m=http://b:1"], {}, "routed twice"),
        (["--prices", "/nonexistent/prices.json"], {}, "cannot read"),
    ],
)
def test_an_invalid_value_from_any_source_exits_2(
    tmp_path: Path, argv: list[str], env: dict[str, str], needle: str
) -> None:
    if not any(a == "--upstream" for a in argv) and "METRICSTREAM_UPSTREAM" not in env:
        argv = ["--upstream", "http://127.0.0.1:9", *argv]
    result = run_quick(argv, env)
    assert result[0] == 2, result[1]
    assert needle in result[1]
    assert "Traceback" not in result[1]


def test_no_upstream_from_any_source_exits_2(tmp_path: Path) -> None:
    code, stderr = run_quick([], {})
    assert code == 2
    assert "--upstream is required" in stderr
    config = tmp_path / "p.toml"
    config.write_text('[proxy]\nupstream = "http://127.0.0.1:9"\nbogus = 1\n')
    code, stderr = run_quick(["--config", str(config)], {})
    assert code == 2
    assert "unknown [proxy] option(s): bogus" in stderr


def run_quick(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "metricstream", "proxy", *argv],
        env=command_env(**env),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    return result.returncode, result.stderr


@asynccontextmanager
async def proxy_command(
    *args: str,
    env: dict[str, str],
    log: Path,
    verify: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """``metricstream proxy`` on a free port, its stderr into ``log``; yields
    its base URL (https with ``verify``) once ``/healthz`` answers."""
    port = free_port()
    scheme = "https" if verify is not None else "http"
    with log.open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "metricstream",
            "proxy",
            "--port",
            str(port),
            *args,
            env=command_env(**env),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(verify=verify or True, timeout=scaled(5)) as http:

            async def started() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"proxy exited {process.returncode}; see {log}")
                return await answers(http, f"{url}/healthz")

            # Polling: the process announces readiness only by answering.
            await wait_until(started, 30, "the proxy to answer", interval=0.05)
        yield url
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
        async with asyncio.timeout(scaled(30)):
            await process.wait()


COMPLETION: dict[str, Any] = {
    "id": "cmpl-1",
    "object": "chat.completion",
    "model": "stand-in-model",
    "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}


async def answer(exchange: Exchange) -> Reply:
    if b'"stream": true' in exchange.body or b'"stream":true' in exchange.body:
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        return Reply(
            headers=[("Content-Type", "text/event-stream")],
            pieces=[
                sse_event("Hel"),
                sse_event("lo", finish="stop"),
                sse_event(usage=usage),
                b"data: [DONE]\n\n",
            ],
            chunked=True,
        )
    return Reply(
        headers=[("Content-Type", "application/json")],
        pieces=[json.dumps(COMPLETION).encode()],
    )


def samples_of(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


async def test_tls_token_redacted_logs_and_llm_figures_at_metrics(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
    log = tmp_path / "proxy.log"
    async with StandIn(answer) as upstream:
        config = tmp_path / "metricstream.toml"
        # The upstream from the file loses to the one from the environment,
        # the token from the environment to the one from the flag.
        config.write_text(
            f'[proxy]\nupstream = "http://127.0.0.1:9"\ninterval = 0.1\n'
            f'ssl_certfile = "{tmp_path / "cert.pem"}"\nssl_keyfile = "{tmp_path / "key.pem"}"\n'
        )
        env = {
            "METRICSTREAM_CONFIG": str(config),
            "METRICSTREAM_UPSTREAM": upstream.url,
            "METRICSTREAM_TOKEN": "from-env",
            "METRICSTREAM_LOG_LEVEL": "debug",
        }
        async with proxy_command("--token", TOKEN, env=env, log=log, verify=context) as url:
            wss = url.replace("https://", "wss://") + "/metrics/stream"
            async with (
                httpx.AsyncClient(base_url=url, verify=context, timeout=scaled(10)) as http,
                connect(f"{wss}?token={TOKEN}", ssl=context, compression=None) as ws,
            ):
                # Proxied requests carry their own credentials, not the stream's token.
                response = await http.post(
                    "/v1/chat/completions", json={"model": "stand-in-model", "messages": []}
                )
                assert response.json() == COMPLETION
                # No Server or Date header of the proxy's own (the stand-in sends none).
                assert "server" not in response.headers
                assert "date" not in response.headers
                streamed = await http.post(
                    "/v1/chat/completions",
                    json={"model": "stand-in-model", "messages": [], "stream": True},
                )
                assert streamed.content == b"".join(
                    p for p in (await answer(upstream.exchanges[1])).pieces if isinstance(p, bytes)
                )
                # Both requests reach the stream; /metrics has counted them by then
                # (the exporter sees each message before the hub sends it).
                finished: list[dict[str, Any]] = []
                async with asyncio.timeout(scaled(20)):
                    while len(finished) < 2:
                        message = json.loads(await ws.recv())
                        data = message["data"]
                        if message["type"] == "request_update" and data["status"] != "in_progress":
                            finished.append(message)
                assert (await http.get("/metrics")).status_code == 401
                assert (await http.get("/")).status_code == 401
                assert (await http.get("/metrics?token=from-env")).status_code == 401
                exposition = await http.get(
                    "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
                )
                assert exposition.status_code == 200
                assert (await http.get("/", params={"token": TOKEN})).status_code == 200
            # The other ways the token reaches the stream; a wrong one is refused.
            async with connect(
                wss, ssl=context, subprotocols=["metricstream", subprotocol_entry(TOKEN)]
            ) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), scaled(10)))["type"] == "init"
            async with connect(f"{wss}?token=from-env", ssl=context) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), scaled(10))
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 4001
        assert [e.target for e in upstream.exchanges] == ["/v1/chat/completions"] * 2
    samples = samples_of(exposition.text)
    model = ("model", "stand-in-model")
    assert samples[("metricstream_llm_requests_total", (model, ("status", "success")))] == 2
    assert samples[("metricstream_llm_prompt_tokens_total", (model,))] == 11 + 5
    assert samples[("metricstream_llm_completion_tokens_total", (model,))] == 7 + 2
    assert samples[("metricstream_llm_time_to_first_token_seconds_count", (model,))] >= 1
    lines = log.read_text().splitlines()
    encoded = subprotocol_entry(TOKEN).rpartition(".")[2]
    assert [line for line in lines if TOKEN in line or encoded in line] == []
    # The access log saw the authenticated requests, so the redaction was exercised.
    assert any("/metrics/stream?token=***" in line for line in lines)
    assert any("metricstream.server: stream at /metrics/stream over TLS" in ln for ln in lines)


async def test_proxy_scrape_publishes_the_engines_figures_under_a_root_path(tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    with serve_engine() as engine:
        engine.serve(
            vllm(
                prompt=10,
                generation=10,
                running=5,
                waiting=2,
                usage=0.55,
            )
        )
        async with StandIn(answer) as upstream:
            args = ("--upstream", upstream.url, "--scrape", engine.url, "--scrape-interval", "0.1")
            # Served under a prefix a reverse proxy strips: the upstream still
            # gets the path the client asked for.
            args += ("--root-path", "/llm")
            async with proxy_command(*args, "--interval", "0.2", env={}, log=log) as url:
                frames: list[dict[str, Any]] = []
                ws_url = url.replace("http://", "ws://") + "/metrics/stream"
                async with (
                    connect(ws_url, compression=None) as ws,
                    httpx.AsyncClient(base_url=url, timeout=scaled(10)) as http,
                ):
                    response = await http.post(
                        "/v1/chat/completions", json={"model": "stand-in-model", "messages": []}
                    )
                    assert response.json() == COMPLETION

                    def done() -> bool:
                        return engine_figures_seen(
                            frames, running=5, waiting=2, usage_percentage=55.0
                        ) and any(f["type"] == "request_update" for f in frames)

                    async with asyncio.timeout(scaled(30)):
                        while not done():
                            frames.append(json.loads(await ws.recv()))
                    exposition = (await http.get("/metrics")).text
        assert [e.target for e in upstream.exchanges] == ["/v1/chat/completions"]
    metrics = latest(frames, "metrics_update")
    assert metrics is not None
    assert metrics["metadata"]["engines"][engine.url]["engine"] == "vllm"
    samples = samples_of(exposition)
    assert samples[("metricstream_engine_up", (("engine", "vllm"), ("target", engine.url)))] == 1
    model = ("model", "stand-in-model")
    assert samples[("metricstream_llm_requests_total", (model, ("status", "success")))] == 1
