"""Every benchmark, in its tiny ``SMOKE`` configuration, with real subprocesses.

These check that the benchmarks run end to end, produce well-formed rows and
kill every process they start. They assert no timing: figures from a shared
machine mean nothing at this size (``make bench`` is where figures come from).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from benchmarks import BENCHMARKS, SMOKE, Row, live_children, render_table, run_all
from tests.support import scaled, wait_until_sync

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
_RUN = (sys.executable, "-m", "benchmarks", "--smoke")


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _assert_well_formed(rows: list[Row], name: str) -> None:
    assert rows, f"{name} produced no rows"
    for row in rows:
        assert row.benchmark
        assert row.figure
        assert isinstance(row.value, float)
        assert not math.isnan(row.value), f"{name}: {row.figure} is NaN"
        assert row.passed in (True, False, None)
        if row.target:
            assert row.passed is not None, f"{name}: {row.figure} has a target but no verdict"
        json.dumps(row.as_dict(), allow_nan=True)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_benchmark_runs_and_cleans_up(name: str) -> None:
    before = _descendants()
    rows, errors = run_all(SMOKE, [name])
    assert errors == {}
    _assert_well_formed(rows, name)
    # Every child was killed and reaped: none left, none a zombie.
    assert live_children() == []
    assert _descendants() - before == set()
    assert render_table(rows).count("\n") == len(rows) + 1


def test_storm_sees_no_gaps_or_duplicates() -> None:
    rows, errors = run_all(SMOKE, ["storm"])
    assert errors == {}
    by_figure = {row.figure: row for row in rows}
    assert by_figure["gaps seen (messages missing)"].value == 0
    assert by_figure["duplicates seen"].value == 0


def test_command_line_prints_the_table_and_saves_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [*_RUN, "--results", str(tmp_path), "--only", "memory"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(120),
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    assert "RSS per idle connection" in done.stdout
    (saved,) = tmp_path.glob("*.json")
    payload = json.loads(saved.read_text())
    assert payload["config"] == "smoke"
    assert payload["machine"]["nproc"] == os.cpu_count()
    assert len(payload["machine"]["load_average"]) == 3
    assert {row["benchmark"] for row in payload["rows"]} == {"memory"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_runner_kills_every_process_it_started(
    tmp_path: Path, signum: signal.Signals
) -> None:
    runner = subprocess.Popen(
        [*_RUN, "--results", str(tmp_path), "--only", "slow"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        parent = psutil.Process(runner.pid)

        def both_started() -> list[psutil.Process]:
            children = parent.children(recursive=True)
            return children if len(children) >= 2 else []

        children = wait_until_sync(
            both_started, 60, "the runner to start its server and load generator", interval=0.05
        )
        assert len(children) >= 2, "the runner never started its server and load generator"
        runner.send_signal(signum)
        assert runner.wait(timeout=scaled(30)) != 0
        _, alive = psutil.wait_procs(children, timeout=scaled(10))
        assert alive == []
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
