"""JSON Schema (2020-12) of every message, for clients in other languages."""

from __future__ import annotations

from typing import Any

import msgspec

from .codec import DATA_OPTIONAL_TYPES, PAYLOAD_TYPES
from .messages import STREAM_TYPES

__all__ = ["PROTOCOL_VERSION", "json_schema"]

#: The wire protocol version this package speaks.
PROTOCOL_VERSION = 1

_REF_TEMPLATE = "#/$defs/{name}"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a frame: one envelope per message type, as ``oneOf``.

    Every payload Struct becomes a definition under ``$defs``; each envelope
    pins ``type`` to its constant and points ``data`` at its payload.
    """
    payloads = sorted(
        {p for p in PAYLOAD_TYPES.values() if p is not None}, key=lambda p: p.__name__
    )
    _, components = msgspec.json.schema_components(payloads, ref_template=_REF_TEMPLATE)
    envelopes: list[dict[str, Any]] = []
    for mtype, payload in PAYLOAD_TYPES.items():
        name = "".join(part.title() for part in mtype.value.split("_")) + "Message"
        data: dict[str, Any] = (
            {"$ref": _REF_TEMPLATE.format(name=payload.__name__)} if payload else {"type": "null"}
        )
        required = ["type"]
        if payload is not None and mtype not in DATA_OPTIONAL_TYPES:
            required.append("data")
        if mtype in STREAM_TYPES:
            required.append("sequence")
        components[name] = {
            "title": name,
            "type": "object",
            "properties": {
                "type": {"const": mtype.value},
                "timestamp": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Milliseconds since the Unix epoch.",
                },
                "data": data,
                "sequence": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Stream offset; only on stream messages.",
                },
                "metadata": {"type": "object"},
            },
            "required": required,
        }
        envelopes.append({"$ref": _REF_TEMPLATE.format(name=name)})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://metricstream.dev/schema/v{PROTOCOL_VERSION}.json",
        "title": f"metricstream wire protocol v{PROTOCOL_VERSION}",
        "description": "One frame: a message object, or an array of them (batch=1).",
        "oneOf": [
            {"$ref": "#/$defs/Message"},
            {"type": "array", "items": {"$ref": "#/$defs/Message"}},
        ],
        "$defs": {"Message": {"oneOf": envelopes}, **dict(sorted(components.items()))},
    }
