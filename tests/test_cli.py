"""The ``metricstream`` command, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import metricstream
from metricstream.protocol import MessageType


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metricstream", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"metricstream {metricstream.__version__}"


def test_schema_prints_a_json_schema_of_every_message() -> None:
    result = run("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$schema"].endswith("2020-12/schema")
    consts = {
        env["properties"]["type"]["const"]
        for name, env in schema["$defs"].items()
        if name.endswith("Message") and name != "Message"
    }
    assert consts == {t.value for t in MessageType}
    metrics = schema["$defs"]["MetricsUpdatePayload"]
    assert "total_requests" in metrics["required"]
    assert metrics["properties"]["error_rate"]["maximum"] == 100
    stream = schema["$defs"]["ModelUpdateMessage"]
    assert stream["required"] == ["type", "data", "sequence"]
    assert run("schema", "--compact").stdout.count("\n") == 1


def test_schema_validates_real_frames() -> None:
    import jsonschema

    from .protocol.test_messages import EXAMPLES

    schema = json.loads(run("schema").stdout)
    validator = jsonschema.Draft202012Validator(schema)
    for mtype, payload in EXAMPLES.items():
        message = metricstream.protocol.make_message(
            mtype, payload, sequence=1 if mtype.value.endswith("_update") else None
        )
        validator.validate(json.loads(metricstream.encode(message)))
    bad = {"type": "metrics_update", "data": {"total_requests": "x"}, "sequence": 1}
    assert not validator.is_valid(bad)


def test_unknown_command_exits_with_usage() -> None:
    result = run("no-such-command")
    assert result.returncode == 2
    assert "usage: metricstream" in result.stderr


def test_a_bad_option_value_is_reported_without_a_traceback() -> None:
    result = run("dashboard", "http://not-a-websocket-url")
    assert result.returncode == 2
    assert "metricstream dashboard: url must be a ws:// or wss:// URL" in result.stderr
    assert "Traceback" not in result.stderr
