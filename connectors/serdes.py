"""Kafka key/value (de)serializers by Kestra's names, compatible with Kafka's Java serdes.

Numbers are big-endian like ``IntegerSerializer``/``LongSerializer``/...; STRING and UUID are
UTF-8 text; JSON is UTF-8 JSON. A null payload (tombstone) deserializes to ``None`` for every
type. A payload that does not fit its type raises :class:`SerdeError` with the reason.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

Deserializer = Callable[[bytes | None], Any]
Serializer = Callable[[Any], bytes | None]
_Serde = TypeVar("_Serde")


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


def _ion(data: bytes | None) -> Any:
    if data is None:
        return None
    from waxflow.connectors.ion import ion_loads

    try:
        return ion_loads(data)
    except Exception as exc:
        raise SerdeError(f"malformed ION: {exc}") from None


DESERIALIZERS: dict[str, Deserializer] = {
    "ION": _ion,
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


def _by_name(table: Mapping[str, _Serde], name: str) -> _Serde:
    """``table[name]``; an unknown name raises :class:`SerdeError` listing the known ones."""
    try:
        return table[name]
    except KeyError:
        raise SerdeError(f"unknown serde {name}; expected one of {sorted(table)}") from None


def deserializer(name: str) -> Deserializer:
    """The deserializer for a serde name (validated by the flow model beforehand)."""
    return _by_name(DESERIALIZERS, name)


def _ser_struct(fmt: str, name: str, kind: type) -> Serializer:
    packer = struct.Struct(fmt)

    def ser(value: Any) -> bytes | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise SerdeError(f"{name} expects a number, got {type(value).__name__}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise SerdeError(f"{name} expects a whole number, got {value!r}")
        try:
            return packer.pack(kind(value))
        except (ValueError, OverflowError, struct.error) as exc:
            raise SerdeError(f"{name} cannot hold {value!r}: {exc}") from None

    return ser


def _ser_string(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return str(value).encode()


def _ser_json(value: Any) -> bytes | None:
    if value is None:
        return None
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise SerdeError(f"JSON cannot encode the value: {exc}") from None


def _ser_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, dict) and set(value) == {"$base64"}:
        import base64

        return base64.b64decode(value["$base64"])
    if isinstance(value, str):
        return value.encode()
    raise SerdeError(f"BYTES expects bytes or text, got {type(value).__name__}")


def _ser_uuid(value: Any) -> bytes | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(str(value))).encode()
    except ValueError:
        raise SerdeError(f"not a UUID: {str(value)[:40]!r}") from None


def _ser_ion(value: Any) -> bytes | None:
    if value is None:
        return None
    from waxflow.connectors.ion import ion_dumps

    return ion_dumps(value)


def _ser_void(value: Any) -> None:
    if value not in (None, b"", ""):
        raise SerdeError("VOID expects no value")
    return None


SERIALIZERS: dict[str, Serializer] = {
    "STRING": _ser_string,
    "JSON": _ser_json,
    "UUID": _ser_uuid,
    "BYTES": _ser_bytes,
    "BYTE_ARRAY": _ser_bytes,
    "ION": _ser_ion,
    "VOID": _ser_void,
    "INTEGER": _ser_struct(">i", "INTEGER", int),
    "LONG": _ser_struct(">q", "LONG", int),
    "SHORT": _ser_struct(">h", "SHORT", int),
    "FLOAT": _ser_struct(">f", "FLOAT", float),
    "DOUBLE": _ser_struct(">d", "DOUBLE", float),
}


def serializer(name: str) -> Serializer:
    """The serializer for a serde name (AVRO is built per task: it needs a schema)."""
    return _by_name(SERIALIZERS, name)
