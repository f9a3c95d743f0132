"""Each extra stands alone: a part never imports another extra's libraries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CASES = [
    # (module imported, libraries it must not load)
    ("metricstream", {"websockets", "fastapi", "uvicorn", "textual", "psutil", "asyncio"}),
    ("metricstream.client", {"fastapi", "starlette", "uvicorn", "textual", "psutil"}),
    ("metricstream.server", {"textual"}),
    ("metricstream.dashboard.web", {"textual"}),
    ("metricstream.store", {"fastapi", "uvicorn", "textual"}),
    ("metricstream.dashboard.tui", {"fastapi", "uvicorn"}),
    ("metricstream.proxy", {"textual"}),
]


@pytest.mark.parametrize(("module", "forbidden"), CASES, ids=[c[0] for c in CASES])
def test_importing_a_part_loads_only_its_own_dependencies(module: str, forbidden: set[str]) -> None:
    code = (
        f"import sys, {module}; "
        f"print(','.join(sorted(m for m in {sorted(forbidden)!r} if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        timeout=60,
    ).stdout.strip()
    assert out == "", f"importing {module} loaded {out}"


def clean_env() -> dict[str, str]:
    """The environment without coverage's subprocess hook, which imports I/O modules."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
