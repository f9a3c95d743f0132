"""WebSocketConfig validates on construction and prints well."""

from __future__ import annotations

from typing import Any

import pytest

from metricstream.client import Dialect, OverflowPolicy, WebSocketConfig
from metricstream.exceptions import ConfigError


def test_defaults() -> None:
    config = WebSocketConfig(url="ws://127.0.0.1:8765/metrics/stream")
    assert config.dialect is Dialect.AUTO
    assert config.overflow is OverflowPolicy.DROP_OLDEST
    assert config.offline_queue_size == 100
    assert (config.reconnect_interval, config.max_reconnect_interval) == (1.0, 30.0)
    assert config.reconnect_decay == 1.5
    assert config.heartbeat_timeout <= config.heartbeat_interval
    backoff = config.make_backoff()
    assert backoff.base_delay(1) == 1.0
    assert backoff.base_delay(100) == 30.0
    assert "ws://127.0.0.1:8765/metrics/stream" in repr(config)


def test_strings_are_coerced_and_sequences_frozen() -> None:
    # What an untyped caller (a command line, a settings file) passes.
    loose: dict[str, Any] = {"dialect": "fakeai", "overflow": "raise", "types": ["a", "b"]}
    config = WebSocketConfig(url="wss://h/s", **loose)
    assert config.dialect is Dialect.FAKEAI
    assert config.overflow is OverflowPolicy.RAISE
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
        {"overflow": "drop_newest"},
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
        {"reconnect_jitter": 2},
        {"max_reconnect_attempts": -1},
        {"max_frame_size": 0},
        {"offline_queue_size": 1.5},
        {"message_queue_size": True},
    ],
)
def test_invalid_values_raise_config_error(changes: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"url": "ws://127.0.0.1:1/s", **changes}
    with pytest.raises(ConfigError):
        WebSocketConfig(**settings)
