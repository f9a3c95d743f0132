"""The recording proxy against a direct connection and against LiteLLM's proxy.

Three paths to the same fast upstream stand-in (``benchmarks._openai
upstream``: a fixed stream of SSE chunks, no work per request):

- direct: the load generator talks to the stand-in;
- ``metricstream proxy --upstream ...``: the real command, pinned to one core;
- LiteLLM's proxy (``litellm --config``) from its own virtualenv
  (``make litellm``), configured with the stand-in as the model's
  ``api_base``, pinned to the same core. Skipped when not installed.

For each path the same load generator (on the other core) measures, in the
same run: sequential streamed requests on one connection (end-to-end and
time-to-first-chunk percentiles; "added" figures subtract the direct ones),
then requests/s with several connections kept busy.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._proc import LOAD_CPU, SERVER_CPU, Child, ChildError, spawn, wait_until

__all__ = ["LITELLM", "measure"]

_REPO = Path(__file__).resolve().parent.parent
#: LiteLLM's proxy command, installed by ``make litellm``.
LITELLM = _REPO / ".venv-litellm" / "bin" / "litellm"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_http(child: Child, port: int, path: str, timeout: float) -> None:
    def up() -> bool:
        if child.popen.poll() is not None:
            raise ChildError(f"{child.name} exited: {child.stderr_tail()}")
        try:
            child.http_get(port, path, timeout=2.0)
        except OSError:
            return False
        return True

    if not wait_until(up, timeout, interval=0.2):
        raise ChildError(f"{child.name} did not answer {path} in {timeout:.0f} s")


@contextlib.contextmanager
def _metricstream(upstream: int, lifetime: float) -> Iterator[int]:
    port = _free_port()
    args = ["proxy", "--upstream", f"http://127.0.0.1:{upstream}", "--port", str(port)]
    args += ["--log-level", "warning"]
    with spawn("metricstream proxy", "metricstream", args, cpu=SERVER_CPU) as child:
        _wait_http(child, port, "/healthz", 30)
        yield port


@contextlib.contextmanager
def _litellm(upstream: int) -> Iterator[int]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as home:
        config = Path(home) / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: bench-model\n"
            "    litellm_params:\n"
            "      model: openai/bench-model\n"
            f"      api_base: http://127.0.0.1:{upstream}/v1\n"
            "      api_key: sk-bench\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
        )
        env = {
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
            # No download of the model cost map at start: the network is not ours.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "HOME": home,
        }
        args = ["--config", str(config), "--port", str(port), "--num_workers", "1"]
        with spawn(
            "litellm", "", args, cpu=SERVER_CPU, program=[str(LITELLM)], env=env, cwd=home
        ) as child:
            _wait_http(child, port, "/health/liveliness", 120)
            yield port


def _drive(
    port: int,
    latency_count: int,
    clients: int,
    seconds: float,
    lifetime: float,
    *,
    strict: bool = True,
) -> Any:
    args = ["load", "--port", str(port), "--lifetime", str(lifetime)]
    with spawn("load", "benchmarks._openai", args, cpu=LOAD_CPU) as load:
        load.read_event(timeout=30)
        latency = load.ask(f"latency {latency_count}", timeout=60 + latency_count / 10)
        throughput = load.ask(f"throughput {clients} {seconds}", timeout=60 + 2 * seconds)
    for result in (latency, throughput):
        if "error" in result:
            raise ChildError(f"load on port {port}: {result['error']}")
    failed = throughput["errors"] + latency["latency_errors"]
    if strict and failed:
        # Our own path must answer every request; a peer's failures are
        # reported in the details (and leave out of its figures).
        raise ChildError(f"load on port {port}: {failed} failed requests: {throughput}")
    return {**latency, **throughput, "errors": failed}


def measure(
    *,
    chunks: int,
    latency_count: int,
    clients: int,
    seconds: float,
    lifetime: float,
    litellm: bool,
) -> dict[str, dict[str, float]]:
    """Figures of each path: ``direct``, ``metricstream`` and (if run) ``litellm``."""
    results: dict[str, dict[str, float]] = {}
    args = ["upstream", "--chunks", str(chunks), "--lifetime", str(lifetime)]
    with spawn("upstream", "benchmarks._openai", args, cpu=LOAD_CPU) as upstream:
        up = int(upstream.read_event(timeout=30)["port"])
        results["direct"] = _drive(up, latency_count, clients, seconds, lifetime)
        with _metricstream(up, lifetime) as port:
            results["metricstream"] = _drive(port, latency_count, clients, seconds, lifetime)
        if litellm and os.access(LITELLM, os.X_OK):
            with _litellm(up) as port:
                results["litellm"] = _drive(
                    port, latency_count, clients, seconds, lifetime, strict=False
                )
    return results
