"""The direct-write contract on the lowest and the newest uvicorn pyproject.toml allows.

``_wire`` reads uvicorn's internals; the bound in ``pyproject.toml`` says
which versions that was checked on, and this runs a real server and client
on both ends of it (``make test`` installs the lowest into ``.uvicorn-min``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ..support import require, scaled
from .uvicorn_contract import lowest, uvicorn_requirement

SCRIPT = Path(__file__).with_name("uvicorn_contract.py")


def _run(pythonpath: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=scaled(90),
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def _assert_contract(report: dict[str, object]) -> None:
    assert report["direct"] is True, report
    assert report["fallbacks"] == 0, report
    assert report["received"] == ["init", "metrics_update"], report
    assert report["close_code"] == 1001, report


def test_the_bound_has_both_ends() -> None:
    spec = SpecifierSet(uvicorn_requirement())
    assert {s.operator for s in spec} >= {">=", "<"}
    assert importlib.metadata.version("uvicorn") in spec


def test_contract_on_the_installed_uvicorn() -> None:
    report = _run(None)
    assert report["uvicorn"] == importlib.metadata.version("uvicorn")
    _assert_contract(report)


def test_contract_on_the_lowest_allowed_uvicorn() -> None:
    if Version(importlib.metadata.version("uvicorn")) == Version(lowest()):
        # The minimum-versions run (`make test-min`): the lowest is installed.
        directory = None
    else:
        directory = os.environ.get("METRICSTREAM_UVICORN_MIN")
        require(
            directory is not None and (Path(directory) / "uvicorn").is_dir(),
            "the lowest allowed uvicorn in METRICSTREAM_UVICORN_MIN (`make pytest` installs it)",
        )
        assert directory is not None
    report = _run(directory)
    assert Version(str(report["uvicorn"])) == Version(lowest())
    _assert_contract(report)


@pytest.mark.parametrize("name", ["lowest", "uvicorn_requirement"])
def test_the_contract_script_reads_pyproject(name: str) -> None:
    assert globals()[name]()
