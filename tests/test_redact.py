"""One set of masking rules for logs, client URLs and the stream's error texts."""

from __future__ import annotations

import pytest

from metricstream import _redact
from metricstream._logging import add_secret, redact
from metricstream._redact import redact_text, redact_url
from metricstream.client._config import WebSocketConfig
from metricstream.collector import MetricsCollector
from metricstream.protocol import MessageType, encode
from metricstream.protocol.auth import token_subprotocol
from tests.collector.helpers import RecordingPublisher


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("GET /x?a=1&token=abc&b=2", "GET /x?a=1&token=***&b=2"),
        ("GET /cb?access_token=abc#frag", "GET /cb?access_token=***#frag"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ("rejected bearer abc, retry", "rejected bearer ***, retry"),
        ("api_key=s3cr3t&x=1", "api_key=***&x=1"),
        ("API-Key: s3cr3t", "API-Key: ***"),
        ('{"api_key": "s3cr3t", "n": 1}', '{"api_key": "***", "n": 1}'),
        ("Incorrect key: sk-live-0123456789abcdef.", "Incorrect key: sk-live***."),
        ("proto metricstream.token.YWJj", "proto metricstream.token.***"),
        ("wss://ada:pa55@host:8/s", "wss://ada:***@host:8/s"),
        # Words that only look alike stay.
        ("max_tokens=5, prompt_tokens=3 tokens", "max_tokens=5, prompt_tokens=3 tokens"),
        ("task-runner ask-me", "task-runner ask-me"),
    ],
)
def test_each_pattern_is_masked(text: str, masked: str) -> None:
    assert redact_text(text) == masked
    # The logging filter and the client's URLs apply the very same rules.
    assert redact(text) == masked
    assert redact_url(text) == masked


def test_registered_secrets_are_masked_in_every_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_redact, "_secrets", set())
    add_secret("hunter2-long")
    assert redact_text("said hunter2-long twice: hunter2-long") == "said *** twice: ***"
    entry = token_subprotocol("hunter2-long").removeprefix("metricstream.token.")
    assert redact_text(f"offered {entry}") == "offered ***"


def test_client_repr_masks_token_and_password() -> None:
    config = WebSocketConfig(url="ws://ada:pa55@127.0.0.1:9/ws?token=t0ps3cret&x=1")
    text = repr(config)
    assert "t0ps3cret" not in text
    assert "pa55" not in text
    assert "token=***" in text
    assert "ada:***@" in text


def test_the_collector_masks_every_publishers_error_texts() -> None:
    publisher = RecordingPublisher()
    collector = MetricsCollector(publisher, system_stats=False)
    payload = collector.record_request(
        "m", 1, 1, 5.0, status="error", error_message="upstream: Bearer abc.def"
    )
    assert payload.error_message == "upstream: Bearer ***"
    error = collector.record_error(
        "auth",
        "bad key sk-abcd0123456789",
        stack_trace='File "x", line 1\nValueError: api_key=s3cr3t',
    )
    assert error.error_message == "bad key sk-abcd***"
    assert error.stack_trace == 'File "x", line 1\nValueError: api_key=***'
    published = "".join(encode(m).decode() for m in publisher.messages)
    assert publisher.of_type(MessageType.ERROR_UPDATE)
    for secret in ("abc.def", "0123456789", "s3cr3t"):
        assert secret not in published
