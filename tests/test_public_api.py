"""The public API is curated: sorted ``__all__``, every name importable and documented."""

from __future__ import annotations

import importlib
import typing

import pytest

PACKAGES = [
    "metricstream",
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
