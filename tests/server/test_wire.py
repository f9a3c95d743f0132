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


@pytest.mark.parametrize("size", [10, 200, 70_000])
def test_encoded_frame_keeps_one_copy_and_derives_the_others(size: int) -> None:
    document = b'{"type":"ping","note":"' + b"x" * size + b'"}'
    frame = EncodedFrame(document)
    # Only the wire bytes are stored; the JSON is a view into them.
    assert not hasattr(frame, "__dict__")
    assert frame.data.obj is frame.wire
    assert frame.data == document
    assert frame.text == document.decode()
    assert frame.size == len(document)
    assert frame.wire == text_frame(document)


async def _receive() -> dict[str, str]:
    return {"type": "websocket.disconnect"}


def test_direct_writer_is_not_used_without_uvicorn_behind_receive() -> None:
    assert DirectWriter.detect(_receive) is None
    assert DirectWriter.detect(object()) is None


def test_an_unexpected_uvicorn_falls_back_to_asgi_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import types

    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from metricstream.server import _wire

    # A protocol object without the attributes the direct path reads, as a
    # uvicorn that renamed them would hand over.
    owner = object.__new__(WebSocketsSansIOProtocol)
    receive = types.MethodType(lambda self: None, owner)
    _wire._fallback_logged = False
    with caplog.at_level("WARNING", logger="metricstream.server"):
        first = DirectWriter.check(receive)
        second = DirectWriter.check(receive)
    assert first[0] is None
    assert second[0] is None
    assert first[1] is not None
    assert "expected attributes" in first[1]
    warnings = [r for r in caplog.records if "through ASGI" in r.getMessage()]
    assert len(warnings) == 1
    # Not uvicorn at all: no writer and no fallback to report.
    assert DirectWriter.check(types.MethodType(lambda self: None, object())) == (None, None)
