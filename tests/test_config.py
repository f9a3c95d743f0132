"""Options from flags, METRICSTREAM_* variables and a --config TOML file."""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from metricstream._logging import redact
from metricstream._options import (
    Option,
    add_options,
    documented_tables,
    reference_markdown,
    resolve_options,
    rewrite_reference,
)
from metricstream.exceptions import ConfigError
from metricstream.server._serveopts import stream_settings
from metricstream.server.cli import OPTIONS

from .support import free_port, scaled
from .test_logging import command_env, serve

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="metricstream serve")
    add_options(parser, OPTIONS)
    return resolve_options(parser.parse_args(argv), "serve", OPTIONS, env or {})


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "metricstream.toml"
    path.write_text(text)
    return str(path)


def test_defaults_apply_when_nothing_is_given() -> None:
    args = parse([])
    for option in OPTIONS:
        assert getattr(args, option.name) == option.default, option.name


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        '[serve]\nport = 1111\nhost = "0.0.0.0"\ninterval = 2\nallowed_origins = ["https://a"]\n',
    )
    env = {"METRICSTREAM_PORT": "2222", "METRICSTREAM_INTERVAL": "3.5"}
    args = parse(["--config", config, "--interval", "0.5"], env)
    assert args.port == 2222  # env over file
    assert args.host == "0.0.0.0"  # file over default
    assert args.interval == 0.5  # flag over env
    assert args.allowed_origins == ["https://a"]
    assert args.max_connections == 10_000  # default
    # The file may come from the environment too.
    assert parse([], {"METRICSTREAM_CONFIG": config}).port == 1111


def test_booleans_and_lists_from_every_source(tmp_path: Path) -> None:
    config = write(tmp_path, "[serve]\ndemo = true\nproxy_headers = true\n")
    args = parse(["--config", config, "--no-demo"], {"METRICSTREAM_ACCESS_LOG": "off"})
    assert (args.demo, args.proxy_headers, args.access_log) == (False, True, False)
    env = {"METRICSTREAM_ALLOWED_ORIGINS": "https://a, https://b"}
    assert parse([], env).allowed_origins == ["https://a", "https://b"]
    flags = ["--allowed-origins", "https://a", "--allowed-origins", "https://b,https://c"]
    assert parse(flags).allowed_origins == ["https://a", "https://b", "https://c"]


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("port = 99999", {}, "[serve] port: port must be between 0 and 65535"),
        ('port = "8080"', {}, "[serve] port: expected an integer"),
        ("demo = 1", {}, "[serve] demo: expected true or false"),
        ("max_conections = 5", {}, "unknown [serve] option(s): max_conections"),
        ("", {"METRICSTREAM_PORT": "99999"}, "METRICSTREAM_PORT: port must be between"),
        ("", {"METRICSTREAM_INTERVAL": "nan"}, "METRICSTREAM_INTERVAL: expected a finite"),
        ("", {"METRICSTREAM_DEMO": "maybe"}, "METRICSTREAM_DEMO: expected true or false"),
        ("", {"METRICSTREAM_LOG_FORMAT": "xml"}, "expected one of text, json"),
        ('token = "  "', {}, "token must not be empty"),
    ],
)
def test_invalid_values_are_refused_naming_their_source(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    config = write(tmp_path, f"[serve]\n{toml}\n")
    with pytest.raises(ConfigError) as error:
        parse(["--config", config], env)
    assert message in str(error.value)


def test_a_secret_is_never_echoed_in_an_error(tmp_path: Path) -> None:
    config = write(tmp_path, "[serve]\ntoken = 12345678\n")
    with pytest.raises(ConfigError) as error:
        parse(["--config", config])
    assert "12345678" not in str(error.value)
    assert "(hidden)" in str(error.value)


def test_the_key_password_comes_from_flag_or_environment_never_from_the_file(
    tmp_path: Path,
) -> None:
    assert parse(["--ssl-keyfile-password", "pw-flag"]).ssl_keyfile_password == "pw-flag"
    env = {"METRICSTREAM_SSL_KEYFILE_PASSWORD": "pw-env"}
    assert parse([], env).ssl_keyfile_password == "pw-env"
    config = write(tmp_path, '[serve]\nssl_keyfile_password = "pw-in-file-7"\n')
    with pytest.raises(ConfigError, match="not read from a config file") as error:
        parse(["--config", config])
    assert "METRICSTREAM_SSL_KEYFILE_PASSWORD" in str(error.value)
    assert "pw-in-file-7" not in str(error.value)
    # Even when the environment gives it too: the file is wrong to hold it.
    with pytest.raises(ConfigError, match="not read from a config file"):
        parse(["--config", config], env)


def test_the_key_password_is_redacted_once_the_settings_are_built() -> None:
    args = parse(["--ssl-certfile", "c.pem", "--ssl-keyfile-password", "pw-redact-4q"])
    stream_settings(args)
    assert redact("loading with pw-redact-4q failed") == "loading with *** failed"


def test_the_reference_says_where_an_option_is_not_read_from() -> None:
    option = Option(name="key_pass", kind="str", default=None, help="p", in_file=False)
    text = reference_markdown({"thing": [option]})
    assert "| `--key-pass` | `METRICSTREAM_KEY_PASS` | (not read from a file) | str |" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [("port = 1", "put options in a table"), ("[serve\n", "is not valid TOML")],
)
def test_a_malformed_file_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(["--config", write(tmp_path, text)])
    with pytest.raises(ConfigError, match="cannot read the config file"):
        parse(["--config", str(tmp_path / "missing.toml")])


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--port", "99999"], {}, "argument --port: port must be between 0 and 65535"),
        (["--max-connections", "0"], {}, "max_connections must be between"),
        ([], {"METRICSTREAM_PORT": "99999"}, "METRICSTREAM_PORT: port must be between"),
        (["--ssl-keyfile", "k.pem"], {}, "--ssl-keyfile needs --ssl-certfile"),
        (["--ssl-certfile", "/nonexistent.pem"], {}, "cannot use the TLS certificate"),
        (["--ssl-keyfile-password", "x"], {}, "--ssl-keyfile-password needs --ssl-certfile"),
    ],
)
def test_serve_exits_2_on_an_invalid_value(
    argv: list[str], env: dict[str, str], needle: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metricstream", "serve", *argv],
        env=command_env(**env),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


async def handshake_code(url: str) -> int | None:
    """None when the stream answers with its init frame; else the close code."""
    async with connect(url) as ws:
        try:
            await asyncio.wait_for(ws.recv(), scaled(10))
        except ConnectionClosed as exc:
            return None if exc.rcvd is None else exc.rcvd.code
        return None


def test_a_real_server_takes_port_from_env_over_file_and_token_from_flag(tmp_path: Path) -> None:
    file_port = free_port()
    config = write(tmp_path, f'[serve]\nport = {file_port}\ntoken = "from-file"\n')
    env = command_env(METRICSTREAM_CONFIG=config)
    # serve() passes --port itself (from the environment here it would lose to
    # the flag), so the env-over-file rule is shown on the token instead:
    env["METRICSTREAM_TOKEN"] = "from-env"
    with serve("--interval", "0.2", env=env) as (port, _):
        url = f"ws://127.0.0.1:{port}/metrics/stream"
        assert asyncio.run(handshake_code(f"{url}?token=from-file")) == 4001
        assert asyncio.run(handshake_code(f"{url}?token=from-env")) is None
    with serve("--token", "from-flag", env=env) as (port, _):
        url = f"ws://127.0.0.1:{port}/metrics/stream"
        assert asyncio.run(handshake_code(f"{url}?token=from-env")) == 4001
        assert asyncio.run(handshake_code(f"{url}?token=from-flag")) is None


def test_the_committed_configuration_reference_is_current() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    expected = rewrite_reference(doc, reference_markdown(documented_tables()))
    assert doc == expected, (
        "docs/deployment.md is stale: run "
        "`.venv/bin/python -m metricstream._options docs/deployment.md`"
    )
    for option in OPTIONS:
        assert f"`{option.env}`" in doc


def test_the_reference_lists_every_source_of_an_option() -> None:
    option = Option(name="max_things", kind="int", default=3, help="how many | at most")
    text = reference_markdown({"thing": [option]})
    assert "| `--max-things` | `METRICSTREAM_MAX_THINGS` | `max_things` | int | 3 |" in text
    assert "how many \\| at most" in text


def test_minimum_constraints_match_the_declared_lower_bounds() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared: dict[str, str] = {}
    for spec in project["dependencies"] + [
        s for extra in ("server", "tui", "redis") for s in project["optional-dependencies"][extra]
    ]:
        requirement = Requirement(spec)
        floors = [s.version for s in requirement.specifier if s.operator == ">="]
        assert floors, f"{spec} has no lower bound"
        declared[requirement.name] = floors[0]
    pinned: dict[str, tuple[str, str]] = {}
    for line in (ROOT / "constraints" / "minimum.txt").read_text().splitlines():
        text, _, why = line.partition("#")
        if text.strip():
            name, _, version = text.strip().partition("==")
            pinned[name] = (version, why.strip())
    assert set(pinned) == set(declared)
    for name, (version, why) in pinned.items():
        floor = declared[name]
        same = tuple(int(p) for p in version.split(".")[: len(floor.split("."))]) == tuple(
            int(p) for p in floor.split(".")
        )
        # A pin above the declared floor must say why the real floor is higher.
        assert same or why.startswith("floor raised"), f"{name}: {version} vs >={floor}"


def test_the_generator_rewrites_only_the_marked_block(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n\nkept\n\n<!-- BEGIN generated configuration reference -->\nold\n"
        "<!-- END generated configuration reference -->\n\ntail\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "metricstream._options", str(doc)],
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = doc.read_text()
    assert text.startswith("# Title\n\nkept\n\n<!-- BEGIN")
    assert text.endswith("END generated configuration reference -->\n\ntail\n")
    assert "\nold\n" not in text
    assert "`METRICSTREAM_PORT`" in text
    with pytest.raises(ValueError, match="no generated configuration reference"):
        rewrite_reference("no markers\n", "x")
