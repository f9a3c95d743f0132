"""The public API is curated: sorted ``__all__``, every name importable and
documented, no second name for anything, the exception tree as drawn, and
each layer importable without the ones above it."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import typing

import pytest

import metricstream.exceptions

PACKAGES = [
    "metricstream",
    "metricstream.exceptions",
    "metricstream.protocol",
    "metricstream.client",
    "metricstream.sync",
    "metricstream.server",
    "metricstream.collector",
    "metricstream.store",
    "metricstream.dashboard.tui",
    "metricstream.dashboard.web",
    "metricstream.proxy",
]


def _isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions: the order ``ruff`` (RUF022) keeps."""
    if name.isupper():
        return (0, name)
    return (1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_key)
    assert len(exported) == len(set(exported))
    for attr in exported:
        assert hasattr(module, attr), f"{name}.{attr}"


@pytest.mark.parametrize("name", PACKAGES)
def test_public_names_have_docstrings(name: str) -> None:
    module = importlib.import_module(name)
    for attr in module.__all__:
        obj = getattr(module, attr)
        # Type aliases (``Callable[...]``, ``Literal[...]``) cannot carry a docstring.
        if callable(obj) and not attr.isupper() and typing.get_origin(obj) is None:
            assert obj.__doc__, f"{name}.{attr} has no docstring"


@pytest.mark.parametrize("name", PACKAGES)
def test_no_public_name_is_a_second_name(name: str) -> None:
    # A class or function is exported under its own name, once: an "earlier
    # name" alias would show up here as a name that differs from __name__.
    module = importlib.import_module(name)
    seen: dict[int, str] = {}
    for attr in module.__all__:
        obj = getattr(module, attr)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        assert obj.__name__ == attr, f"{name}.{attr} is another name of {obj.__name__}"
        assert id(obj) not in seen, f"{name}.{attr} and {name}.{seen[id(obj)]} are one object"
        seen[id(obj)] = attr


@pytest.mark.parametrize(
    ("owner", "attr"),
    [
        ("metricstream.client", "ClientConfig"),
        ("metricstream.client", "MetricStreamClient"),
        ("metricstream.client", "SyncClient"),
        ("metricstream.sync", "SyncClient"),
        ("metricstream.client", "Retry"),
        ("metricstream.client:WebSocketService", "connected"),
        ("metricstream.store:MetricsStore", "subscription"),
    ],
)
def test_earlier_names_are_gone(owner: str, attr: str) -> None:
    module, _, cls = owner.partition(":")
    target: object = importlib.import_module(module)
    if cls:
        target = getattr(target, cls)
    assert not hasattr(target, attr)


def _tree_in_docstring() -> list[tuple[int, str]]:
    """(depth, class name) for each class drawn in ``exceptions``' docstring."""
    doc = metricstream.exceptions.__doc__ or ""
    drawn = []
    for line in doc.splitlines():
        root = re.match(r"^    ([A-Z]\w+Error)$", line)
        if root:
            drawn.append((0, root.group(1)))
            continue
        # A child: tree guides, then "├── Name" or "└── Name".
        child = re.match(r"^    ((?:[│ ]   )*)[├└]── ([A-Z]\w+Error)\b", line)
        if child:
            drawn.append((len(child.group(1)) // 4 + 1, child.group(2)))
    return drawn


def _tree_of_classes() -> list[tuple[int, str]]:
    """(depth, class name), depth first in drawing order, from the classes themselves."""
    module = metricstream.exceptions
    exported = {getattr(module, n) for n in module.__all__}
    order = {name: index for index, name in enumerate(n for _, n in _tree_in_docstring())}
    found: list[tuple[int, str]] = []

    def walk(cls: type, depth: int) -> None:
        found.append((depth, cls.__name__))
        children = [c for c in cls.__subclasses__() if c in exported]
        for child in sorted(children, key=lambda c: order.get(c.__name__, len(order))):
            walk(child, depth + 1)

    walk(module.MetricStreamError, 0)
    return found


def test_exception_tree_is_drawn_completely_and_correctly() -> None:
    drawn = _tree_in_docstring()
    assert drawn, "no tree found in the exceptions docstring"
    assert drawn == _tree_of_classes()
    # Every exception the package defines is in the tree and exported.
    module = metricstream.exceptions
    defined = {
        n for n, o in vars(module).items() if inspect.isclass(o) and issubclass(o, Exception)
    }
    assert defined == {n for _, n in drawn} == set(module.__all__)


def test_every_raised_exception_is_the_projects() -> None:
    # "also a ValueError" and friends: the compatibility bases the docstring promises.
    module = metricstream.exceptions
    for name, base in [
        ("ConfigError", ValueError),
        ("PublishError", ValueError),
        ("InvalidFilterError", ValueError),
        ("InvalidMetricError", ValueError),
        ("ClientClosedError", RuntimeError),
        ("StreamConnectionError", ConnectionError),
        ("ConnectionRejectedError", ConnectionError),
    ]:
        assert issubclass(getattr(module, name), base), name


@pytest.mark.parametrize(
    ("layer", "absent"),
    [
        ("metricstream", ["metricstream.client", "metricstream.store", "asyncio", "websockets"]),
        ("metricstream.protocol", ["metricstream.client", "asyncio", "websockets"]),
        (
            "metricstream.server",
            ["metricstream.client", "metricstream.store", "metricstream.collector", "websockets"],
        ),
        ("metricstream.store", ["metricstream.server", "metricstream.collector", "starlette"]),
    ],
)
def test_a_layer_does_not_load_the_layers_above_it(layer: str, absent: list[str]) -> None:
    # A fresh interpreter: this test process has long imported everything.
    code = (
        f"import sys, {layer}\n"
        f"loaded = sorted(m for m in {absent!r} if m in sys.modules)\n"
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "", f"import {layer} loaded {result.stdout.strip()}"
