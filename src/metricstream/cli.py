"""The ``metricstream`` command.

Each subcommand lives beside the code it drives and registers itself through
an ``add_parser(subparsers)`` function; its heavy imports happen only when it
runs, so ``metricstream --help`` works with nothing but the core installed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from . import __version__
from .exceptions import ConfigError

__all__ = ["main"]

# Modules whose ``add_parser`` adds a subcommand, in --help order.
_COMMAND_MODULES: tuple[str, ...] = (
    "metricstream.server.cli",
    "metricstream.client.cli",
    "metricstream.dashboard.cli",
    "metricstream.protocol.javascript",
)


def _schema(args: argparse.Namespace) -> int:
    from .protocol import json_schema

    json.dump(json_schema(), sys.stdout, indent=None if args.compact else 2)
    sys.stdout.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``metricstream`` command."""
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
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (``| head``) went away: not an error worth a traceback.
        sys.stderr.close()
        return 0
    except ConfigError as exc:
        # A bad option value (URL, token, interval): say what, not a traceback.
        print(f"metricstream {args.command}: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        # An optional extra is missing: say which, not a traceback.
        print(
            f"metricstream {args.command}: {exc}. Install the extra it needs, "
            "for example: pip install 'metricstream[all]'",
            file=sys.stderr,
        )
        return 2
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
