"""The server's public API: sorted ``__all__``, importable, documented."""

from __future__ import annotations

import metricstream.server as server


def _isort_key(name: str) -> tuple[int, str]:
    if name.isupper():
        return (0, name)
    return (1 if name[0].isupper() else 2, name)


def test_all_is_sorted_importable_and_documented() -> None:
    exported = list(server.__all__)
    assert exported == sorted(exported, key=_isort_key)
    for name in exported:
        obj = getattr(server, name)
        if callable(obj) and not name.isupper():
            assert obj.__doc__, f"metricstream.server.{name} has no docstring"
