"""Dial URLs: the parameters a client adds keep the user's own."""

from __future__ import annotations

from metricstream.client import build_url


def test_build_url_sets_replaces_and_keeps_parameters() -> None:
    url = build_url(
        "ws://h:1/metrics/stream?keep=1&since=5",
        {"since": "7", "epoch": "e", "types": "a,b", "models": None},
    )
    assert url == "ws://h:1/metrics/stream?keep=1&since=7&epoch=e&types=a,b"


def test_build_url_escapes_values() -> None:
    assert build_url("wss://h/s", {"token": "a b&c"}) == "wss://h/s?token=a+b%26c"


def test_build_url_keeps_what_the_user_put_in_the_url_unless_overridden() -> None:
    # A None value (the client has no token of its own) must not strip the
    # user's ?token=, nor any other parameter of theirs.
    url = build_url("wss://h/s?token=abc&keep=1", {"token": None, "since": None, "batch": "1"})
    assert url == "wss://h/s?token=abc&keep=1&batch=1"
    assert build_url("wss://h/s?token=abc", {"token": "xyz"}) == "wss://h/s?token=xyz"
