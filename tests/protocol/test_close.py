"""The close-code table: every code the protocol names, and what a client does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metricstream.protocol import (
    FATAL_HTTP_STATUSES,
    CloseAction,
    CloseCode,
    close_action,
    handshake_action,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (None, CloseAction.RETRY),  # died without a closing handshake (1006)
        (1000, CloseAction.RETRY),  # the server ended the stream; only our own 1000 is final
        (1001, CloseAction.RETRY),
        (1006, CloseAction.RETRY),
        (1008, CloseAction.FATAL),
        (1009, CloseAction.RETRY),
        (1011, CloseAction.RETRY),
        (1012, CloseAction.RETRY),
        (4001, CloseAction.FATAL),
        (4008, CloseAction.RESET_AND_RETRY),
        (4029, CloseAction.RETRY),
        (4999, CloseAction.RETRY),  # a code the protocol does not name
        (3000, CloseAction.RETRY),
    ],
)
def test_close_code_table(code: int | None, action: CloseAction) -> None:
    assert close_action(code) is action
    if code is not None and code in CloseCode._value2member_map_:
        assert CloseCode(code).action is action


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (401, CloseAction.FATAL),
        (403, CloseAction.FATAL),
        (404, CloseAction.RETRY),
        (429, CloseAction.RETRY),
        (503, CloseAction.RETRY),
    ],
)
def test_handshake_status(status: int, action: CloseAction) -> None:
    assert handshake_action(status) is action
    assert (status in FATAL_HTTP_STATUSES) is (action is CloseAction.FATAL)


def test_close_codes_are_ints_on_the_wire() -> None:
    # Sent as ASGI ``code`` values and compared with what websockets reports.
    assert CloseCode.SLOW_CONSUMER == 4008
    assert isinstance(CloseCode.BAD_TOKEN, int)


def test_protocol_md_table_matches_the_enum() -> None:
    # The documented table names exactly the codes the enum gives a meaning
    # to (1006 is never sent, so the page does not list it as a close).
    text = (DOCS / "protocol.md").read_text()
    section = text.split("## Close codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d{4}) \|", section, re.MULTILINE)}
    assert documented == {int(c) for c in CloseCode if c is not CloseCode.ABNORMAL}
