"""Frames encoded once: the WebSocket framing and the direct-write detection."""

from __future__ import annotations

import struct

import pytest

from metricstream.server import DirectWriter, EncodedFrame, text_frame


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e" + struct.pack("!H", 126)),
        (65535, b"\x81\x7e" + struct.pack("!H", 65535)),
        (65536, b"\x81\x7f" + struct.pack("!Q", 65536)),
    ],
)
def test_text_frame_uses_the_shortest_length_form(size: int, header: bytes) -> None:
    payload = b"x" * size
    assert text_frame(payload) == header + payload


def test_encoded_frame_holds_every_form_of_one_message() -> None:
    frame = EncodedFrame.of_text('{"type":"ping","note":"é"}')
    assert frame.text == '{"type":"ping","note":"é"}'
    assert frame.data == frame.text.encode()
    assert frame.size == len(frame.data) == len(frame.text) + 1
    assert frame.wire == text_frame(frame.data)
    assert "ping" in repr(frame)


async def _receive() -> dict[str, str]:
    return {"type": "websocket.disconnect"}


def test_direct_writer_is_not_used_without_uvicorn_behind_receive() -> None:
    assert DirectWriter.detect(_receive) is None
    assert DirectWriter.detect(object()) is None
