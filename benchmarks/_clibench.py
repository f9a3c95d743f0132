"""How long ``metricstream --help`` takes: the command line's start-up.

Baseline, in the same run: the same ``--help`` with every command's module
imported first, which is what building the parser cost while each command's
module was imported to list it (the server's and the proxy's load FastAPI
and uvicorn). A bare interpreter (``python -c pass``) is shown for context:
no command can start faster than that.

Each variant is a fresh interpreter, run in turn with the others so that a
shared machine's noise falls on all of them alike; the median of the runs is
reported. Wall time, since start-up is what a user waits for.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

__all__ = ["measure"]

_EAGER = (
    "import importlib, sys\n"
    "from metricstream import cli\n"
    "for name in cli.command_modules():\n"
    "    importlib.import_module(name)\n"
    "sys.exit(cli.main(['--help']))\n"
)

_VARIANTS: dict[str, list[str]] = {
    "help": [sys.executable, "-m", "metricstream", "--help"],
    "eager": [sys.executable, "-c", _EAGER],
    "python": [sys.executable, "-c", "pass"],
}


def _run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=60
    )
    return time.perf_counter() - start


def measure(runs: int) -> dict[str, Any]:
    """Median wall milliseconds of each variant over ``runs`` interleaved runs."""
    times: dict[str, list[float]] = {name: [] for name in _VARIANTS}
    # One unmeasured round: the first start reads the files from disk.
    for argv in _VARIANTS.values():
        _run(argv)
    for _ in range(runs):
        for name, argv in _VARIANTS.items():
            times[name].append(_run(argv))
    result: dict[str, Any] = {
        f"{name}_ms": 1000 * statistics.median(values) for name, values in times.items()
    }
    result["runs"] = runs
    return result
