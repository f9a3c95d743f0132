"""The browser page takes the protocol's constants from ``protocol.js``.

``protocol.js`` is generated from :mod:`metricstream.protocol`; a constant the
page's own modules spell out again would drift from it silently (the page once
heartbeated every 10 s where the protocol says 30). A scan of the page's
modules refuses such literals, and the page's options run under
``node --test`` to show that what the page leaves unset is the protocol's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from metricstream.protocol import (
    FATAL_HTTP_STATUSES,
    STREAM_SUBPROTOCOL,
    TOKEN_SUBPROTOCOL_PREFIX,
    CloseCode,
    javascript,
)

from ..support import require_executable, scaled

HERE = Path(__file__).resolve().parent
STATIC_JS = Path(javascript.__file__).resolve().parents[1] / "dashboard/web/static/js"
PAGE_MODULES = sorted(p for p in STATIC_JS.glob("*.js") if p.name != "protocol.js")


def _protocol_defaults() -> dict[str, object]:
    match = re.search(r"PROTOCOL_DEFAULTS = Object\.freeze\((\{.*?\})\);", javascript.render())
    assert match is not None, "protocol.js no longer exports PROTOCOL_DEFAULTS"
    defaults: dict[str, object] = json.loads(match.group(1))
    return defaults


def _without_comments(source: str) -> str:
    # Whole-line and trailing ``//`` comments and ``/* */`` blocks: prose may
    # name a code ("4001 stops with an error"), code may not.
    source = re.sub(r"^\s*/\*.*?\*/", "", source, flags=re.S | re.M)
    source = re.sub(r"^\s*//.*$", "", source, flags=re.M)
    return re.sub(r"\s//\s.*$", "", source, flags=re.M)


def _expression(code: str, start: int) -> str:
    """The expression from ``start`` to the ``,``, ``;`` or bracket that ends it."""
    depth = 0
    for index in range(start, len(code)):
        char = code[index]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            if depth == 0:
                return code[start:index]
            depth -= 1
        elif char in ",;" and depth == 0:
            return code[start:index]
    return code[start:]


def hard_coded(source: str) -> list[str]:
    """Protocol constants ``source`` (a page module) spells out instead of importing."""
    code = _without_comments(source)
    codes = {int(c): f"CloseCode.{c.name}" for c in CloseCode}
    codes.update(dict.fromkeys(FATAL_HTTP_STATUSES, "FATAL_HTTP_STATUSES"))
    found = []
    for pattern in (
        r"\.close\(\s*(\d+)",  # ws.close(1000, ...)
        r"\b\w*(?:code|status)\w*\s*[!=]==?\s*(\d+)",  # code === 4001
        r"(\d+)\s*[!=]==?\s*\w*(?:code|status)\w*\b",  # 4001 === code
        r"\bcase\s+(\d+)\s*:",  # switch (code) { case 4008: ... }
    ):
        for match in re.finditer(pattern, code, flags=re.I):
            number = int(match.group(1))
            if number in codes:
                found.append(f"{match.group(0).strip()!r}: use {codes[number]}")
    for name in _protocol_defaults():
        # An option the protocol defines, set from an expression holding a
        # number (``heartbeatInterval: seconds(params, "heartbeat", 10)``)
        # and not from PROTOCOL_DEFAULTS: a default spelt out again.
        for match in re.finditer(rf"\b{name}\s*:", code):
            value = _expression(code, match.end())
            if re.search(r"(?<![\w.])\d", value) and "PROTOCOL_DEFAULTS" not in value:
                found.append(f"{name}: {value.strip()!r}: use PROTOCOL_DEFAULTS.{name}")
    found.extend(
        f"{quote}{value}{quote}: use {constant}"
        for constant, value in (
            ("STREAM_SUBPROTOCOL", STREAM_SUBPROTOCOL),
            ("TOKEN_SUBPROTOCOL_PREFIX", TOKEN_SUBPROTOCOL_PREFIX),
        )
        for quote in ('"', "'", "`")
        if f"{quote}{value}{quote}" in code
    )
    return found


@pytest.mark.parametrize("module", PAGE_MODULES, ids=lambda p: p.name)
def test_page_modules_import_the_protocol_constants(module: Path) -> None:
    assert hard_coded(module.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("snippet", "named"),
    [
        ('conn.ws.close(1000, "resync");', "CloseCode.NORMAL"),
        ("if (code === 4001) stop();", "CloseCode.BAD_TOKEN"),
        ("if (4008 == lastCloseCode) again();", "CloseCode.SLOW_CONSUMER"),
        ("switch (code) {\n  case 1008:\n    stop();\n}", "CloseCode.POLICY_VIOLATION"),
        ("if (response.status === 401) ask();", "FATAL_HTTP_STATUSES"),
        ("new StreamClient(url, { heartbeatInterval: 10000 });", "PROTOCOL_DEFAULTS"),
        (
            'const o = {\n  heartbeatInterval: seconds(params, "heartbeat", 10, 0.1, 300),\n};',
            "PROTOCOL_DEFAULTS.heartbeatInterval",
        ),
        ("const o = { heartbeatTimeout: given ?? 5000 };", "PROTOCOL_DEFAULTS.heartbeatTimeout"),
        ("const o = { offlineQueueSize: 50 };", "PROTOCOL_DEFAULTS.offlineQueueSize"),
        ('new WebSocket(url, ["metricstream"]);', "STREAM_SUBPROTOCOL"),
        ("const entry = 'metricstream.token.' + token;", "TOKEN_SUBPROTOCOL_PREFIX"),
    ],
)
def test_the_scan_finds_a_hard_coded_constant(snippet: str, named: str) -> None:
    found = hard_coded(snippet)
    assert len(found) == 1, found
    assert named in found[0]


@pytest.mark.parametrize(
    "snippet",
    [
        "// a 4001 close stops the client\nconn.ws.close(CloseCode.NORMAL);",
        "conn.ws.close(4000, 'abandoned');",  # not a protocol code: the page's own
        "const seconds = ms / 1000;",
        "heartbeatInterval: PROTOCOL_DEFAULTS.heartbeatInterval,",
        'heartbeatTimeout: ms(params, "heartbeat_timeout", PROTOCOL_DEFAULTS.heartbeatTimeout),',
        "const o = { heartbeatInterval: interval, debug: false };",
        'const path = "metrics/stream";',
    ],
)
def test_the_scan_leaves_other_code_alone(snippet: str) -> None:
    assert hard_coded(snippet) == []


def test_the_page_defaults_are_the_protocol_defaults() -> None:
    node = require_executable("node", "install Node.js 20 or newer (apt-get install nodejs)")
    result = subprocess.run(
        [node, "--test", str(HERE / "page_options.test.mjs")],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        env={**os.environ, "METRICSTREAM_STATIC_JS": str(STATIC_JS)},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The runner found and ran the cases: an empty run must not pass.
    assert re.search(r"^# pass [1-9]", result.stdout, flags=re.M), result.stdout
