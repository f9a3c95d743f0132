"""Benchmarks of metricstream against the alternatives, measured in the same run.

Run them with ``make bench`` (``python -m benchmarks``); ``--quick`` for a short
run, ``--only NAME`` for one benchmark. Every server and load generator is a
subprocess in its own process group, pinned to a CPU with ``taskset``, and is
killed when its benchmark ends, fails or is interrupted.

- :mod:`benchmarks._suite` holds the seven benchmarks and their targets;
- :mod:`benchmarks._attackbench` the attack benchmark, with the hostile
  clients of :mod:`benchmarks._attacks` (also used by ``tests/security``);
- :mod:`benchmarks._servers` the servers under test (metricstream and the
  baselines) and the client benchmark's feed;
- :mod:`benchmarks._loadgen` the load generator, built on the minimal
  WebSocket client of :mod:`benchmarks._wsclient`;
- :mod:`benchmarks._clientbench` the client benchmark's consumers;
- :mod:`benchmarks._proc` process control and measurement.
"""

from ._proc import kill_all, live_children
from ._report import Row, render_table
from ._suite import BENCHMARKS, FULL, QUICK, SMOKE, Config, run_all

__all__ = [
    "BENCHMARKS",
    "FULL",
    "QUICK",
    "SMOKE",
    "Config",
    "Row",
    "kill_all",
    "live_children",
    "render_table",
    "run_all",
]
