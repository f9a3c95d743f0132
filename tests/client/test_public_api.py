"""The client package's public API is curated: sorted, importable, documented."""

from __future__ import annotations

import metricstream.client as client_api

from ..test_public_api import _isort_key


def test_all_is_sorted_importable_and_documented() -> None:
    exported = list(client_api.__all__)
    assert exported == sorted(exported, key=_isort_key)
    assert len(exported) == len(set(exported))
    for name in exported:
        obj = getattr(client_api, name)
        if isinstance(obj, type) or (callable(obj) and not name[0].isupper()):
            assert obj.__doc__, f"metricstream.client.{name} has no docstring"
