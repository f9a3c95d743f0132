"""Command options defined once: flag, environment variable, TOML key, default, help.

A long-running command (``serve``, and any other that declares an
``OPTIONS`` table in its module) describes each of its options with an
:class:`Option`. From that one table come:

- the command-line flag (``--max-connections``), with its help text;
- the environment variable (``METRICSTREAM_MAX_CONNECTIONS``);
- the key in the command's table of a TOML file given with ``--config``
  (``[serve]`` / ``max_connections = 100``), or ``$METRICSTREAM_CONFIG``;
- the validation of the value, the same whichever source it came from;
- the configuration reference in ``docs/deployment.md``
  (``python -m metricstream._options docs/deployment.md`` rewrites it; a test
  fails when the committed text is stale).

Precedence, highest first: flag, environment, file, default. An invalid
value is refused with exit status 2, naming where it came from. An option
marked ``in_file=False`` (a password) is not read from the file: setting it
there is refused, naming the variable to use instead.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .exceptions import ConfigError

__all__ = [
    "ENV_PREFIX",
    "Option",
    "add_options",
    "check_port",
    "check_positive",
    "check_range",
    "reference_markdown",
    "resolve_options",
]

ENV_PREFIX = "METRICSTREAM_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

Kind = Literal["str", "int", "float", "bool", "list"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, kw_only=True)
class Option:
    """One option of a command, in every form it can be given."""

    name: str
    """Python name, also the TOML key: ``max_connections``."""
    kind: Kind
    """``str``, ``int``, ``float``, ``bool`` (a flag pair) or ``list`` (of strings)."""
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    """Returns why a (typed) value is invalid, or None when it is fine."""
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    secret: bool = False
    """Never shown: not in help defaults, not in error messages."""
    group: str = "options"
    """Section of the ``--help`` output and of the reference."""
    aliases: tuple[str, ...] = ()
    """Other flags accepted for it (older spellings)."""
    in_file: bool = True
    """Whether the TOML file may set it. ``False`` for a secret that must not
    sit in plain text in a file that is copied, versioned and read by more
    people than the secret is meant for; the flag and the variable remain."""

    @property
    def flag(self) -> str:
        """``--max-connections``."""
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """``METRICSTREAM_MAX_CONNECTIONS``."""
        return ENV_PREFIX + self.name.upper()

    def parse_text(self, text: str) -> Any:
        """The value of ``text`` (a flag argument or an environment value), checked."""
        value: Any
        if self.kind == "bool":
            lowered = text.strip().lower()
            if lowered in _TRUE:
                value = True
            elif lowered in _FALSE:
                value = False
            else:
                raise ValueError(f"expected true or false, got {self._show(text)}")
        elif self.kind == "int":
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"expected an integer, got {self._show(text)}") from None
        elif self.kind == "float":
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"expected a number, got {self._show(text)}") from None
        elif self.kind == "list":
            value = [item.strip() for item in text.split(",") if item.strip()]
        else:
            value = text
        return self.validate(value)

    def coerce(self, value: Any) -> Any:
        """A value read from TOML, type-checked and validated."""
        ok: bool
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif self.kind == "list":
            if isinstance(value, str):
                value = [value]
            ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ValueError(f"expected {_KIND_NAMES[self.kind]}, got {self._show(value)}")
        return self.validate(value)

    def validate(self, value: Any) -> Any:
        """``value`` when it is allowed; ValueError saying why not otherwise."""
        if self.kind == "float" and not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {self._show(value)}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {self._show(value)}")
        if self.check is not None:
            problem = self.check(value)
            if problem is not None:
                raise ValueError(f"{self.name} {problem}")
        return value

    def _show(self, value: Any) -> str:
        return "(hidden)" if self.secret else repr(value)


_KIND_NAMES: dict[str, str] = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list": "a list of strings",
}


_METAVARS: dict[str, str] = {"str": "TEXT", "int": "N", "float": "NUM", "list": "ITEM"}


def check_range(low: float, high: float) -> Callable[[Any], str | None]:
    """A check accepting ``low <= value <= high``."""

    def check(value: Any) -> str | None:
        if not low <= value <= high:
            return f"must be between {low:g} and {high:g}, got {value!r}"
        return None

    return check


def check_positive(value: Any) -> str | None:
    """A check accepting values above zero."""
    return None if value > 0 else f"must be positive, got {value!r}"


check_port = check_range(0, 65535)


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add ``--config`` and a flag per option to ``parser``.

    Flags default to "not given" (``argparse.SUPPRESS``), so that
    :func:`resolve_options` can tell a flag from a default and apply the
    precedence; the help text states the real default and the variable.
    """
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"TOML file with the options in a [{parser.prog.split()[-1]}] table "
        f"(env {CONFIG_ENV}); flags and environment variables override it",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in options:
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(option.group)
        help_text = f"{option.help} ({_default_text(option)}; env {option.env})"
        kwargs: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS}
        if option.kind == "bool":
            group.add_argument(
                option.flag, action=argparse.BooleanOptionalAction, help=help_text, **kwargs
            )
            continue
        if option.kind == "list":
            kwargs["action"] = "append"
        group.add_argument(
            option.flag,
            *option.aliases,
            type=_argparse_type(option),
            metavar=option.metavar or _METAVARS[option.kind],
            help=help_text,
            **kwargs,
        )


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return option.parse_text(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.kind  # what argparse calls the type in its errors
    return convert


def _default_text(option: Option) -> str:
    if option.secret or option.default is None or option.default == "":
        return "default: none"
    if option.kind == "bool":
        return f"default: {'on' if option.default else 'off'}"
    if option.kind == "list":
        return f"default: {','.join(option.default) or 'none'}"
    return f"default: {option.default}"


def resolve_options(
    args: argparse.Namespace,
    command: str,
    options: Sequence[Option],
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """Set every option on ``args`` from flag, environment, file or default.

    Raises :class:`ConfigError` for an invalid value or file, naming the
    variable or file key it came from (flag values were checked by argparse).
    """
    environ = os.environ if environ is None else environ
    path = getattr(args, "config", None) or environ.get(CONFIG_ENV) or None
    table = _load_table(Path(path), command, options) if path else {}
    for option in options:
        if hasattr(args, option.name):
            value = getattr(args, option.name)
            if option.kind == "list":
                value = [item for group in value for item in group]
            setattr(args, option.name, value)
            continue
        text = environ.get(option.env)
        if text is not None:
            try:
                value = option.parse_text(text)
            except ValueError as exc:
                raise ConfigError(f"{option.env}: {exc}") from None
        elif option.name in table:
            try:
                value = option.coerce(table[option.name])
            except ValueError as exc:
                raise ConfigError(f"{path}: [{command}] {option.name}: {exc}") from None
        else:
            value = list(option.default) if option.kind == "list" else option.default
        setattr(args, option.name, value)
    args.config = path
    return args


def _load_table(path: Path, command: str, options: Sequence[Option]) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    loose = [key for key, value in data.items() if not isinstance(value, dict)]
    if loose:
        raise ConfigError(
            f"{path}: put options in a table named after the command, e.g. [{command}]; "
            f"found top-level {', '.join(sorted(loose))}"
        )
    table: dict[str, Any] = data.get(command, {})
    known = {option.name for option in options}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown [{command}] option(s): {', '.join(unknown)}")
    for option in options:
        if not option.in_file and option.name in table:
            # The value is never echoed: it is a secret.
            raise ConfigError(
                f"{path}: [{command}] {option.name} is not read from a config file; "
                f"set {option.env} (or {option.flag}) instead"
            )
    return table


# ---------------------------------------------------------------- reference

BEGIN_MARK = "<!-- BEGIN generated configuration reference -->"
END_MARK = "<!-- END generated configuration reference -->"


def reference_markdown(tables: Mapping[str, Sequence[Option]]) -> str:
    """The configuration reference of ``tables`` (command -> options), in Markdown."""
    lines = [
        BEGIN_MARK,
        "<!-- Generated from the OPTIONS tables: python -m metricstream._options "
        "docs/deployment.md -->",
    ]
    for command, options in tables.items():
        lines += [
            "",
            f"#### `metricstream {command}`",
            "",
            f"TOML table: `[{command}]`. Also `--config FILE` / `{CONFIG_ENV}`.",
            "",
            "| Flag | Environment | TOML key | Type | Default | Meaning |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for option in options:
            flag = f"`{option.flag}`"
            if option.kind == "bool":
                flag = f"`{option.flag}` / `--no-{option.flag[2:]}`"
            key = f"`{option.name}`" if option.in_file else "(not read from a file)"
            kind = option.kind if option.choices is None else " \\| ".join(option.choices)
            default = _default_text(option).removeprefix("default: ")
            meaning = option.help.replace("|", "\\|")
            lines.append(f"| {flag} | `{option.env}` | {key} | {kind} | {default} | {meaning} |")
    lines.append(END_MARK)
    return "\n".join(lines)


def documented_tables() -> dict[str, Sequence[Option]]:
    """Every command's OPTIONS table, from the command modules that define one.

    A command module (listed in ``metricstream.cli``) opts in by defining
    ``COMMAND`` (its name) and ``OPTIONS`` (its table); nothing else to
    register.
    """
    from .cli import command_modules

    tables: dict[str, Sequence[Option]] = {}
    for name in command_modules():
        module = importlib.import_module(name)
        options = getattr(module, "OPTIONS", None)
        if options is not None:
            tables[module.COMMAND] = options
    return tables


def rewrite_reference(text: str, reference: str) -> str:
    """``text`` with the block between the markers replaced by ``reference``."""
    pattern = re.compile(re.escape(BEGIN_MARK) + r".*?" + re.escape(END_MARK), re.DOTALL)
    if not pattern.search(text):
        raise ValueError("the document has no generated configuration reference markers")
    return pattern.sub(lambda _: reference, text)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the configuration reference in the given Markdown file."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m metricstream._options DOC.md", file=sys.stderr)
        return 2
    path = Path(args[0])
    path.write_text(rewrite_reference(path.read_text(), reference_markdown(documented_tables())))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
