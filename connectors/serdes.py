"""Kafka key/value (de)serializers by Kestra's names, compatible with Kafka's Java serdes.

Numbers are big-endian like ``IntegerSerializer``/``LongSerializer``/...; STRING and UUID are
UTF-8 text; JSON is UTF-8 JSON. A null payload (tombstone) deserializes to ``None`` for every
type. A payload that does not fit its type raises :class:`SerdeError` with the reason.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable
from typing import Any

Deserializer = Callable[[bytes | None], Any]


class SerdeError(ValueError):
    """A payload could not be (de)serialized; the message says what was expected."""


def _struct(fmt: str, name: str) -> Deserializer:
    packer = struct.Struct(fmt)

    def de(data: bytes | None) -> Any:
        if data is None:
            return None
        if len(data) != packer.size:
            raise SerdeError(f"{name} expects {packer.size} bytes, got {len(data)}")
        return packer.unpack(data)[0]

    return de


def _string(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SerdeError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _json(data: bytes | None) -> Any:
    text = _string(data)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SerdeError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                         ) from None


def _uuid(data: bytes | None) -> str | None:
    text = _string(data)
    if text is None:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise SerdeError(f"not a UUID: {text[:40]!r}") from None


def _bytes(data: bytes | None) -> bytes | None:
    return data


def _void(data: bytes | None) -> None:
    if data:
        raise SerdeError(f"VOID expects an empty payload, got {len(data)} bytes")
    return None


DESERIALIZERS: dict[str, Deserializer] = {
    "STRING": _string,
    "JSON": _json,
    "UUID": _uuid,
    "BYTES": _bytes,
    "BYTE_ARRAY": _bytes,
    "VOID": _void,
    "INTEGER": _struct(">i", "INTEGER"),
    "LONG": _struct(">q", "LONG"),
    "SHORT": _struct(">h", "SHORT"),
    "FLOAT": _struct(">f", "FLOAT"),
    "DOUBLE": _struct(">d", "DOUBLE"),
}


def deserializer(name: str) -> Deserializer:
    """The deserializer for a serde name (validated by the flow model beforehand)."""
    try:
        return DESERIALIZERS[name]
    except KeyError:
        raise SerdeError(f"unknown serde {name}; expected one of {sorted(DESERIALIZERS)}"
                         ) from None
