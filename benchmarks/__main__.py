"""``python -m benchmarks [--quick] [--only NAME ...]``: run, print one table, save JSON."""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from ._proc import kill_all, raise_nofile_limit
from ._report import machine, render_table, save
from ._suite import BENCHMARKS, FULL, QUICK, SMOKE

RESULTS = Path(__file__).resolve().parent / "results"


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so every ``finally`` kills its children.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; exit status 1 when a target was missed or a run failed."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="metricstream benchmarks against baselines"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short runs (development)")
    mode.add_argument("--smoke", action="store_true", help="tiny runs (tests)")
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to save the JSON")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else QUICK if args.quick else FULL

    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C must reach the ``finally`` blocks even when started from a shell
    # that left SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    atexit.register(kill_all)
    nofile = raise_nofile_limit()
    before = machine()
    print(
        f"metricstream benchmarks ({cfg.name}); load average before: "
        f"{' '.join(f'{x:.2f}' for x in before['load_average'])}; open files limit {nofile}",
        flush=True,
    )
    started = time.monotonic()
    started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    try:
        from ._suite import run_all

        rows, errors = run_all(
            cfg, args.only, progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True)
        )
    except KeyboardInterrupt:
        print("interrupted: every process started was killed", file=sys.stderr)
        return 130
    finally:
        kill_all()
    after = machine()
    print()
    print(render_table(rows))
    for name, error in errors.items():
        print(f"\n{name} failed: {error}")
    payload = {
        "started": started_at,
        "config": cfg.name,
        "seconds": time.monotonic() - started,
        "machine": before,
        "load_average_after": after["load_average"],
        "rows": [row.as_dict() for row in rows],
        "errors": errors,
    }
    path = save(args.results, payload)
    print(
        f"\nload average before/after: {before['load_average'][0]:.2f} / "
        f"{after['load_average'][0]:.2f}; {time.monotonic() - started:.0f} s; saved {path}"
    )
    missed = any(row.passed is False for row in rows)
    return 1 if missed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
