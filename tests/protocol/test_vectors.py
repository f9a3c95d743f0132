"""The shared protocol vectors, run against the Python session and the browser client.

``vectors.json`` holds cases both implementations must judge alike: sequence
verdicts, epochs, close-code actions, filter decisions, batch decoding and
resume URLs. The Python side runs here; the JavaScript side runs the page's
own ES modules under Node's test runner (``vectors.test.mjs``), from a test
below so that ``make test`` runs it too.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from metricstream.client import build_url
from metricstream.protocol import (
    STREAM_SUBPROTOCOL,
    STREAM_TYPES,
    TOKEN_SUBPROTOCOL_PREFIX,
    ClientSession,
    Filter,
    SequenceTracker,
    WebSocketMessage,
    close_action,
    javascript,
    token_from_subprotocols,
    token_subprotocol,
)

from ..support import require_executable, scaled

HERE = Path(__file__).resolve().parent
VECTORS: dict[str, Any] = json.loads((HERE / "vectors.json").read_text())
STATIC_JS = Path(javascript.__file__).resolve().parents[1] / "dashboard/web/static/js"


def cases(kind: str) -> list[Any]:
    return [pytest.param(case, id=case.get("name", str(i))) for i, case in enumerate(VECTORS[kind])]


@pytest.mark.parametrize("case", cases("sequence"))
def test_sequence_verdicts(case: dict[str, Any]) -> None:
    tracker = SequenceTracker()
    start = case["start"]
    tracker.start(start["epoch"], start["sequence"], resumed=start["resumed"])
    assert [tracker.observe(s).verdict.value for s in case["observe"]] == case["verdicts"]


@pytest.mark.parametrize("case", cases("resume_start"))
def test_init_keeps_or_replaces_the_position(case: dict[str, Any]) -> None:
    tracker = SequenceTracker()
    first, then = case["first"], case["then"]
    tracker.start(first["epoch"], first["sequence"], resumed=first["resumed"])
    assert tracker.start(then["epoch"], then["sequence"], resumed=then["resumed"]) is case["kept"]
    assert tracker.last_sequence == case["last"]


@pytest.mark.parametrize("case", cases("close"))
def test_close_actions(case: dict[str, Any]) -> None:
    assert close_action(case["code"]).value == case["action"]


@pytest.mark.parametrize("case", cases("filter"))
def test_filter_decisions(case: dict[str, Any]) -> None:
    filt = Filter.of(case["types"], case["models"])
    assert filt.accepts(case["type"], case["model"]) is case["accepts"]


@pytest.mark.parametrize("case", cases("subscribe"))
def test_filter_requests(case: dict[str, Any]) -> None:
    session = ClientSession()
    session.start()
    session.connect()
    session.opened()
    session.receive(b'{"type":"init","timestamp":1,"sequence":1,"data":{}}', now=0.0)
    types, models = case["types"], case["models"]
    request = session.set_filter(
        None if types is None else tuple(types), None if models is None else tuple(models)
    )
    assert request.answered
    [frame] = request.frames
    message = json.loads(frame)
    data = message.get("data")
    if data is not None:
        # The encoder leaves null fields out; absent and null mean the same.
        data = {"types": data.get("types"), "models": data.get("models")}
    assert {"type": message["type"], "data": data} == case["message"]


@pytest.mark.parametrize("case", cases("batch"))
def test_batch_decoding(case: dict[str, Any]) -> None:
    # Filtered to every stream type, so that a gap is not answered by a resync.
    session = ClientSession(types=tuple(t.value for t in STREAM_TYPES))
    session.start()
    session.connect()
    session.opened()
    init = {"type": "init", "sequence": 0, "data": {}, "metadata": {"epoch": "e"}}
    session.receive(json.dumps(init).encode(), now=0)
    events = session.receive(case["frame"].encode(), now=0)
    delivered = [e.sequence for e in events if isinstance(e, WebSocketMessage)]
    assert delivered == case["sequences"]
    assert session.parse_errors == case["invalid"]


@pytest.mark.parametrize("case", cases("resume_url"))
def test_resume_urls(case: dict[str, Any]) -> None:
    options = case["options"]
    session = ClientSession(
        resume=options["resume"],
        batch=options["batch"],
        token=options["token"],
        types=None if options["types"] is None else tuple(options["types"]),
        models=None if options["models"] is None else tuple(options["models"]),
    )
    if case["position"] is not None:
        position = case["position"]
        session.tracker.start(position["epoch"], position["last"], resumed=False)
    url = build_url(case["base"], session.url_params())
    assert dict(parse_qsl(urlsplit(url).query)) == case["query"]
    assert url.startswith(case["base"].split("?")[0])


def test_the_javascript_client_passes_the_same_vectors() -> None:
    node = require_executable("node", "install Node.js 20 or newer (apt-get install nodejs)")
    result = subprocess.run(
        [node, "--test", str(HERE / "vectors.test.mjs")],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        env={**os.environ, "METRICSTREAM_STATIC_JS": str(STATIC_JS)},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every kind of vector ran: a runner that found nothing must not pass.
    for kind in ("sequence", "resume_start", "close", "filter", "subscribe", "batch", "resume_url"):
        assert f"# {kind}:" in result.stdout or kind in result.stdout, kind
    assert "# fail 0" in result.stdout
    total = sum(len(VECTORS[k]) for k in VECTORS if isinstance(VECTORS[k], list))
    assert f"# pass {total}" in result.stdout, result.stdout[-500:]


def test_the_committed_protocol_js_is_current() -> None:
    committed = (STATIC_JS / "protocol.js").read_text(encoding="utf-8")
    assert committed == javascript.render(), (
        "static/js/protocol.js is stale: run "
        "`metricstream schema-js --output src/metricstream/dashboard/web/static/js/protocol.js`"
    )


def test_schema_js_writes_the_module(tmp_path: Path) -> None:
    from metricstream.cli import main

    target = tmp_path / "protocol.js"
    assert main(["schema-js", "--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == javascript.render()


def test_the_token_subprotocol_round_trips() -> None:
    entry = token_subprotocol("s3cret/+=é")
    assert entry.startswith(TOKEN_SUBPROTOCOL_PREFIX)
    # An HTTP token: no padding or other separators a subprotocol may not hold.
    assert not set(entry) & set('=/+ ,;"')
    assert token_from_subprotocols([STREAM_SUBPROTOCOL, entry]) == "s3cret/+=é".encode()
    assert token_from_subprotocols([STREAM_SUBPROTOCOL]) is None
    assert token_from_subprotocols([TOKEN_SUBPROTOCOL_PREFIX + "!!"]) is None
