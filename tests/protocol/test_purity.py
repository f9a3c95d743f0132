"""The protocol core is pure: no asyncio, no network library, anywhere in it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import metricstream.protocol

FORBIDDEN = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "websockets",
    "starlette",
    "fastapi",
    "uvicorn",
    "httpx",
    "aiohttp",
    "urllib",
    "http",
    "threading",
}
PROTOCOL_DIR = Path(metricstream.protocol.__file__).parent


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_module_under_protocol_imports_io_libraries() -> None:
    files = sorted(PROTOCOL_DIR.rglob("*.py"))
    assert len(files) >= 5
    for path in files:
        assert not imported_roots(path) & FORBIDDEN, path


def test_importing_the_protocol_loads_no_io_library() -> None:
    # Also catches indirect imports (through a dependency) that the AST check cannot see.
    code = (
        "import sys, metricstream.protocol; "
        f"bad = sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules); "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout.strip()
    assert out == ""


def clean_env() -> dict[str, str]:
    """The environment without coverage's subprocess hook, which imports I/O modules."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
