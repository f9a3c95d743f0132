"""The ``metricstream`` command.

Each subcommand lives beside the code it drives and registers itself through
an ``add_parser(subparsers)`` function. That module is imported only when its
command is the one run: ``metricstream --help`` lists every command from the
table below without importing any of them, so it neither needs an extra nor
pays for one (the server's modules load FastAPI and uvicorn), and
``metricstream watch`` loads the client's modules alone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from ._logging import configure_logging
from ._options import resolve_options
from .exceptions import ConfigError

__all__ = ["main"]

# Modules whose ``add_parser`` adds subcommands, in --help order, with the
# commands each adds (and their help lines, the same as the module's own:
# ``metricstream --help`` shows these without importing the module) and the
# extra its imports need. When that extra is not
# installed the commands are still listed, and running one says which extra
# to install instead of failing with a traceback.
_COMMAND_MODULES: tuple[tuple[str, dict[str, str], str | None], ...] = (
    ("metricstream.server.cli", {"serve": "run the stream server"}, "server"),
    ("metricstream.client.cli", {"watch": "print a stream's messages live"}, None),
    (
        "metricstream.dashboard.cli",
        {
            "dashboard": "live terminal dashboard of a stream",
            "demo": "run a demo server and open the dashboard on it",
        },
        None,
    ),
    (
        "metricstream.proxy.cli",
        {"proxy": "record the traffic of any OpenAI-compatible server"},
        "proxy",
    ),
    (
        "metricstream.protocol.javascript",
        {
            "schema-js": (
                "print the protocol's constants as an ES module (the web page's protocol.js)"
            )
        },
        None,
    ),
)


def command_modules() -> tuple[str, ...]:
    """The modules that add subcommands, in --help order."""
    return tuple(module for module, _, _ in _COMMAND_MODULES)


# Top-level module of a third-party library -> the extra that installs it.
_EXTRA_OF: dict[str, str] = {
    "fastapi": "server",
    "starlette": "server",
    "uvicorn": "server",
    "prometheus_client": "server",
    "psutil": "server",
    "textual": "tui",
    "rich": "tui",
    "pynvml": "gpu",
}


def _missing_extra(exc: ImportError) -> str | None:
    """The extra that would install the module ``exc`` failed to import, if known."""
    name = (getattr(exc, "name", None) or "").partition(".")[0]
    return _EXTRA_OF.get(name)


def _needs_extra_message(command: str, extra: str, module: str | None) -> str:
    what = f" ({module} is not installed)" if module else ""
    return (
        f"metricstream {command} needs the '{extra}' extra{what}: "
        f"pip install 'metricstream[{extra}]'"
    )


def _add_listed(subparsers: Any, command: str, help_text: str) -> None:
    # A command whose module is not imported: listed with its help line, and
    # taking any arguments (even --help), which the second parse, with the
    # module's own parser, reads.
    parser = subparsers.add_parser(command, help=help_text, add_help=False, prefix_chars="\0")
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    parser.set_defaults(func=None)


def _add_unavailable(
    subparsers: Any, command: str, help_text: str, extra: str, module: str
) -> None:
    message = _needs_extra_message(command, extra, module)
    parser = subparsers.add_parser(
        command,
        help=f"{help_text} (needs the '{extra}' extra)",
        description=message,
        add_help=False,
        # No option prefix: whatever follows (even --help) is an argument,
        # and running it gets the one-line answer.
        prefix_chars="\0",
    )
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)

    def unavailable(_: argparse.Namespace) -> int:
        print(message, file=sys.stderr)
        return 2

    parser.set_defaults(func=unavailable)


def _schema(args: argparse.Namespace) -> int:
    from .protocol import json_schema

    json.dump(json_schema(), sys.stdout, indent=None if args.compact else 2)
    sys.stdout.write("\n")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``metricstream`` command.

    Every command is listed with its help line; only ``command``'s module is
    imported and adds its real subparser (with the other commands of that
    module). Without ``command`` no command module is imported: that parser
    tells which command was asked for, and answers ``--help`` and
    ``--version``.
    """
    parser = argparse.ArgumentParser(
        prog="metricstream",
        description="Real-time LLM-serving metrics over WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    schema = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of every wire message",
        description="Print the JSON Schema (2020-12) of every wire message.",
    )
    schema.add_argument("--compact", action="store_true", help="one line instead of indented")
    schema.set_defaults(func=_schema)
    for module_name, commands, extra in _COMMAND_MODULES:
        if command not in commands:
            for name, help_text in commands.items():
                _add_listed(subparsers, name, help_text)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").partition(".")[0]
            if extra is None or missing in ("", "metricstream"):
                raise
            for name, help_text in commands.items():
                _add_unavailable(subparsers, name, help_text, extra, missing)
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status.

    Logging is configured here, once, for every command (stderr, tokens
    redacted; see :mod:`metricstream._logging`); commands with an option
    table get their options resolved from flags, environment and file.
    """
    args = build_parser().parse_args(argv)
    command: str = args.command
    if args.func is None:
        # The command's module, imported now that it is the one run, parses
        # the arguments again with its own options.
        args = build_parser(command).parse_args(argv)
    try:
        options = getattr(args, "options", None)
        if options is not None:
            resolve_options(args, command, options)
        if hasattr(args, "log_format"):
            configure_logging(args.log_level, args.log_format)
        else:
            # Interactive commands: warnings and errors, worded like their notes.
            configure_logging("warning", "text", prefix=f"metricstream {command}")
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (``| head``) went away: not an error worth a traceback.
        sys.stderr.close()
        return 0
    except ConfigError as exc:
        # A bad option value (URL, token, interval): say what, not a traceback.
        print(f"metricstream {command}: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        # An optional extra is missing: say which, not a traceback.
        extra = _missing_extra(exc)
        if extra is None:
            raise
        print(_needs_extra_message(command, extra, exc.name), file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
