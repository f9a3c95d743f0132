"""WebSocketConfig validates on construction and prints well."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from metricstream.client import Dialect, OverflowPolicy, WebSocketConfig
from metricstream.exceptions import ConfigError


def test_defaults() -> None:
    config = WebSocketConfig(url="ws://127.0.0.1:8765/metrics/stream")
    assert config.dialect is Dialect.AUTO
    assert config.queue_overflow is OverflowPolicy.DROP_OLDEST
    assert config.max_queue_size == 100
    assert config.heartbeat_interval == 30.0
    assert config.jitter == 0.5
    assert (config.debug, config.auto_connect, config.resume) == (False, True, True)
    assert config.protocols is None
    assert config.ssl is None
    assert dict(config.headers or {}) == {}
    assert (config.reconnect_interval, config.max_reconnect_interval) == (1.0, 30.0)
    assert config.reconnect_decay == 1.5
    assert config.heartbeat_timeout <= config.heartbeat_interval
    backoff = config.make_backoff()
    assert backoff.base_delay(1) == 1.0
    assert backoff.base_delay(100) == 30.0
    assert repr(config) == "WebSocketConfig(url='ws://127.0.0.1:8765/metrics/stream')"


def test_repr_shows_changes_but_never_secrets() -> None:
    config = WebSocketConfig(
        url="ws://h/s", token="s3cret", headers={"X-Api-Key": "k3y"}, heartbeat_interval=2
    )
    text = repr(config)
    assert "s3cret" not in text
    assert "k3y" not in text
    assert "X-Api-Key" in text
    assert "heartbeat_interval=2" in text
    assert "token='***'" in text
    in_url = WebSocketConfig(url="ws://user:pw@h:1/s?types=a,b&token=s3cret")
    assert repr(in_url) == "WebSocketConfig(url='ws://user:***@h:1/s?types=a,b&token=***')"


def test_strings_are_coerced_and_sequences_frozen() -> None:
    # What an untyped caller (a command line, a settings file) passes.
    loose: dict[str, Any] = {
        "dialect": "fakeai",
        "queue_overflow": "drop_newest",
        "types": ["a", "b"],
        "protocols": "metrics.v1",
        "headers": [("X-Trace", "1")],
    }
    config = WebSocketConfig(url="wss://h/s", **loose)
    assert config.dialect is Dialect.FAKEAI
    assert config.queue_overflow is OverflowPolicy.DROP_NEWEST
    assert config.protocols == ("metrics.v1",)
    assert dict(config.headers or {}) == {"X-Trace": "1"}
    more: dict[str, Any] = {"queue_overflow": "raise", "dialect": "native"}
    other = WebSocketConfig(url="ws://h/s", **more)
    assert other.queue_overflow is OverflowPolicy.RAISE
    assert other.dialect is Dialect.NATIVE
    context = ssl.create_default_context()
    assert WebSocketConfig(url="wss://h/s", ssl=context).ssl is context
    assert config.types == ("a", "b")
    assert config.replace(models=["m"]).models == ("m",)


def test_timeout_may_exceed_interval() -> None:
    config = WebSocketConfig(url="ws://h/s", heartbeat_interval=1, heartbeat_timeout=3)
    assert config.heartbeat_timeout == 3


@pytest.mark.parametrize(
    "changes",
    [
        {"url": "http://h/s"},
        {"url": "ws:///nohost"},
        {"url": 5},
        {"dialect": "klingon"},
        {"queue_overflow": "drop_everything"},
        {"debug": 1},
        {"auto_connect": None},
        {"protocols": []},
        {"protocols": ["a b"]},
        {"protocols": [""]},
        {"headers": {"X-A": "1\r\nX-Evil: 1"}},
        {"headers": {"Bad Name": "1"}},
        {"headers": {"Host": "elsewhere"}},
        {"headers": {"Sec-WebSocket-Protocol": "x"}},
        {"headers": {"Authorization": "Bearer a"}, "token": "b"},
        {"headers": {"X-A": 1}},
        {"headers": ["X-A"]},
        {"ssl": True},
        {"ssl": ssl.create_default_context()},
        {"token": ""},
        {"token": "a\r\nX-Evil: 1"},
        {"types": "metrics_update"},
        {"types": ["a,b"]},
        {"models": [""]},
        {"heartbeat_interval": 0},
        {"heartbeat_timeout": -1},
        {"heartbeat_timeout": float("nan")},
        {"open_timeout": float("inf")},
        {"close_timeout": True},
        {"reconnect_interval": "1"},
        {"max_reconnect_interval": 0.5, "reconnect_interval": 1.0},
        {"reconnect_decay": 0.5},
        {"jitter": 2},
        {"max_reconnect_attempts": -1},
        {"max_message_size": 0},
        {"max_queue_size": 1.5},
        {"message_queue_size": True},
    ],
)
def test_invalid_values_raise_config_error(changes: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"url": "ws://127.0.0.1:1/s", **changes}
    with pytest.raises(ConfigError):
        WebSocketConfig(**settings)
