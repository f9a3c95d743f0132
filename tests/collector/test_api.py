"""The collector's public names: curated, sorted and all importable."""

from __future__ import annotations

import inspect

import metricstream.collector as collector


def test_all_is_sorted_and_complete() -> None:
    assert collector.__all__ == sorted(collector.__all__, key=lambda n: (not n.isupper(), n))
    for name in collector.__all__:
        assert getattr(collector, name) is not None
    public = {n for n in vars(collector) if not n.startswith("_")}
    assert public == set(collector.__all__)


def test_public_names_are_documented() -> None:
    for name in collector.__all__:
        obj = getattr(collector, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"
