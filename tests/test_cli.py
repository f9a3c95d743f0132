"""The ``metricstream`` command, run as a real subprocess."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

import metricstream
from metricstream import cli
from metricstream.cli import build_parser
from metricstream.protocol import MessageType

from .support import free_port, scaled


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


# Libraries of the extras: a command that does not run the server or the
# terminal dashboard must not pay for importing them.
_HEAVY = ("fastapi", "starlette", "uvicorn", "textual")


def _imported(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the command in a fresh interpreter; its result and every top-level
    package it imported (from ``-X importtime``, which lists each import)."""
    # Without coverage's subprocess hook, which imports modules of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE_", "COV_CORE"))}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "metricstream", *args],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
        env=env,
    )
    imported = {
        line.rsplit("|", 1)[1].strip().partition(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    # The header line ("... | package") is not an import.
    imported.discard("package")
    return result, imported


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("--version",),
        ("schema", "--compact"),
        ("schema-js",),
        ("watch", "--help"),
        ("dashboard", "--help"),
        ("demo", "--help"),
    ],
    ids=" ".join,
)
def test_a_command_imports_no_extra_it_does_not_run(args: tuple[str, ...]) -> None:
    result, imported = _imported(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metricstream" in imported, "the import list was not read"
    assert not imported & set(_HEAVY), f"{' '.join(args)} imported {imported & set(_HEAVY)}"


def test_watch_runs_without_the_server_or_the_dashboard() -> None:
    port = free_port()
    result, imported = _imported(
        "watch", f"ws://127.0.0.1:{port}/metrics/stream", "--max-attempts", "0"
    )
    # It ran: tried, and gave up.
    assert result.returncode == 1, result.stderr[-2000:]
    assert "websockets" in imported
    assert not imported & set(_HEAVY), f"watch imported {imported & set(_HEAVY)}"


def test_serve_imports_its_module_when_it_runs() -> None:
    # The other side of the lazy listing: the command run gets its real parser.
    result, imported = _imported("serve", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: metricstream serve" in result.stdout
    assert "--ssl-keyfile" in result.stdout
    assert "uvicorn" in imported


def test_help_lists_each_command_with_its_modules_own_help_line() -> None:
    # ``metricstream --help`` lists commands from a table in cli.py; each line
    # must be the one the command's module registers.
    def help_lines(parser: argparse.ArgumentParser) -> dict[str, str | None]:
        (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return {choice.dest: choice.help for choice in action._choices_actions}

    listed = help_lines(build_parser())
    assert set(listed) == {"schema", *(c for _, cs, _ in cli._COMMAND_MODULES for c in cs)}
    for command in listed:
        assert help_lines(build_parser(command))[command] == listed[command], command
