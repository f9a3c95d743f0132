"""Close codes, handshake statuses and dial URLs: the client's pure decisions."""

from __future__ import annotations

import pytest

from metricstream.client import Retry, build_url, retry_for_close, retry_for_status


@pytest.mark.parametrize(
    ("code", "retry"),
    [
        (None, Retry.BACKOFF),  # died without a closing handshake (1006)
        (1000, Retry.BACKOFF),  # the server ended the stream; only our own 1000 is final
        (1001, Retry.BACKOFF),
        (1008, Retry.FATAL),
        (1009, Retry.BACKOFF),
        (1011, Retry.BACKOFF),
        (4001, Retry.FATAL),
        (4008, Retry.NOW),
        (4029, Retry.BACKOFF),
    ],
)
def test_close_code_table(code: int | None, retry: Retry) -> None:
    assert retry_for_close(code) is retry


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (401, Retry.FATAL),
        (403, Retry.FATAL),
        (404, Retry.BACKOFF),
        (429, Retry.BACKOFF),
        (503, Retry.BACKOFF),
    ],
)
def test_handshake_status(status: int, retry: Retry) -> None:
    assert retry_for_status(status) is retry


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
