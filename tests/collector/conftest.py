"""Fixtures of the collector tests."""

from __future__ import annotations

import pytest

from tests.collector.helpers import ManualClock, RecordingPublisher


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(100.0)


@pytest.fixture
def wall() -> ManualClock:
    return ManualClock(1_700_000_000.0)


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()
