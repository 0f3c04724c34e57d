"""Protobuf fields shown raw: unknown fields of a decoded message, and ``--decode_raw``.

Fields the schema does not know are never dropped: they are listed as field
number, wire type and the bytes (hex), with a best-effort nested decode of
length-delimited ones.
"""

from __future__ import annotations

import contextlib
from typing import Any

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

#: Key of the list of unknown fields in a decoded dict.
UNKNOWN_KEY = "@unknown"
_WIRE_NAMES = {0: "varint", 1: "i64", 2: "len", 3: "sgroup", 4: "egroup", 5: "i32"}


def unknown_field_set(message: Message) -> list[Any]:
    """The raw unknown fields of ``message`` (typed stubs lack UnknownFieldSet iteration)."""
    fields: Any = UnknownFieldSet(message)
    return list(fields)


def unknown_fields(message: Message) -> list[dict[str, Any]]:
    """The fields of ``message`` its schema does not know, as number, wire type and hex."""
    return [unknown_entry(f) for f in unknown_field_set(message)]


def unknown_entry(f: Any) -> dict[str, Any]:
    wire = f.wire_type
    entry: dict[str, Any] = {"field": f.field_number, "wire_type": _WIRE_NAMES.get(wire, str(wire))}
    data = f.data
    if wire == 0:
        entry["value"] = data
    elif wire in (1, 5):
        entry["value"] = data
        entry["hex"] = data.to_bytes(8 if wire == 1 else 4, "little").hex()
    elif wire == 2:
        entry["hex"] = data.hex()
        nested = decode_raw(data)
        if nested is not None:
            entry["fields"] = nested
    elif wire == 3:
        entry["fields"] = [unknown_entry(g) for g in data]
    return entry


def decode_raw(data: bytes, depth: int = 0) -> list[dict[str, Any]] | None:
    """Best-effort ``protoc --decode_raw``: the fields of ``data`` if it parses as a message."""
    if depth > 8 or not data:
        return None
    out: list[dict[str, Any]] = []
    pos, n = 0, len(data)
    try:
        while pos < n:
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if number == 0:
                return None
            entry: dict[str, Any] = {"field": number, "wire_type": _WIRE_NAMES.get(wire, str(wire))}
            if wire == 0:
                entry["value"], pos = _varint(data, pos)
            elif wire == 1:
                if pos + 8 > n:
                    return None
                entry["hex"] = data[pos : pos + 8].hex()
                entry["value"] = int.from_bytes(data[pos : pos + 8], "little")
                pos += 8
            elif wire == 5:
                if pos + 4 > n:
                    return None
                entry["hex"] = data[pos : pos + 4].hex()
                entry["value"] = int.from_bytes(data[pos : pos + 4], "little")
                pos += 4
            elif wire == 2:
                size, pos = _varint(data, pos)
                if pos + size > n:
                    return None
                chunk = data[pos : pos + size]
                pos += size
                entry["hex"] = chunk.hex()
                nested = decode_raw(chunk, depth + 1)
                if nested is not None:
                    entry["fields"] = nested
                else:
                    with contextlib.suppress(UnicodeDecodeError):
                        entry["text"] = chunk.decode("utf-8")
            else:
                return None
            out.append(entry)
    except IndexError:
        return None
    return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


#: The old private name (kept for importers).
_unknown_entry = unknown_entry
