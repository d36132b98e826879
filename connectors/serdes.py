"""Kafka key/value (de)serializers by Kestra's names, compatible with Kafka's Java serdes.

Numbers are big-endian like ``IntegerSerializer``/``LongSerializer``/...; STRING and UUID are
UTF-8 text; JSON is UTF-8 JSON (written compact, non-ASCII kept; NaN and infinities refused;
a UUID written as its text and an enum member as its value). A null payload (tombstone)
deserializes to ``None`` for every type. A payload that does not fit its type raises
:class:`SerdeError` with the reason, and so does every other failure of a deserializer (a
decoder's own exception, ``RecursionError``, ``MemoryError``): a bad record is a serde error
of that record, never a crash of the job.

JSON and ION values nested deeper than :data:`MAX_DEPTH` levels of arrays/objects are serde
errors too. Later steps walk values recursively on Python's stack (recursion limit 1,000),
so a value that decodes can still break them: measured on Python 3.11, an execution whose
outputs hold a value ~500 levels deep fails to build its document (the job stopped), a batch
file holding one ~330 levels deep fails to read back, and ``pyarrow.json`` (the bulk path of
``waxflow.connectors.jsonbatch``) kills the process with SIGSEGV at ~20,000 levels on the main
thread and at under 1,000 on a 256 KiB thread stack. 200 levels leaves room for all of them.
"""

from __future__ import annotations

import enum
import json
import operator
import re
import struct
import uuid
from collections.abc import Callable, Mapping
from itertools import accumulate, repeat
from typing import Any, TypeVar

import orjson

Deserializer = Callable[[bytes | None], Any]
Serializer = Callable[[Any], bytes | None]
_Serde = TypeVar("_Serde")


MAX_DEPTH = 200
"""Deepest nesting of arrays/objects a JSON or ION value may have (module doc: why)."""


class SerdeError(ValueError):
    """A payload could not be (de)serialized; the message says what was expected."""


def failure(exc: BaseException, name: str | None = None) -> SerdeError:
    """A deserializer's unexpected exception as a one-line :class:`SerdeError` naming it
    (``name``: the serde, e.g. JSON)."""
    if isinstance(exc, SerdeError):
        return exc
    prefix = f"{name} " if name else ""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    if isinstance(exc, RecursionError):
        return SerdeError(f"{prefix}value nested too deep to decode ({text})")
    kind = type(exc).__name__
    return SerdeError(f"{prefix}deserializer failed: {kind}: {text}" if text
                      else f"{prefix}deserializer failed: {kind}")


def guarded(name: str, de: Deserializer) -> Deserializer:
    """``de`` raising nothing but :class:`SerdeError` (see :func:`failure`)."""

    def safe(data: bytes | None) -> Any:
        try:
            return de(data)
        except SerdeError:
            raise
        except Exception as exc:  # any decoder failure is this record's serde error
            raise failure(exc, name) from None

    safe.__name__ = safe.__qualname__ = f"guarded_{getattr(de, '__name__', name)}"
    return safe


# a JSON string, escapes included; an unterminated one runs to the end (linear: no backtracking)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.?)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # opening 2, closing 0


def json_depth(data: bytes) -> int:
    """How deep arrays and objects nest in the JSON text ``data`` (brackets inside strings
    do not count; ``{}`` is 1, ``[[1]]`` 2). Exact for valid JSON; for malformed text, the
    deepest nesting its brackets open."""
    steps = _JSON_STRING.sub(b"", data).translate(_BRACKET_STEPS, _NOT_BRACKETS)
    return max(0, max(accumulate(map(operator.sub, steps, repeat(1))), default=0))


def json_too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text ``data`` nests deeper than ``limit`` levels. Cheap for the
    common case: text with at most ``limit`` opening brackets (or bytes) cannot."""
    if len(data) <= limit or data.count(b"[") + data.count(b"{") <= limit:
        return False
    return json_depth(data) > limit


def _too_deep(value: Any, limit: int) -> bool:
    """Whether a decoded value nests lists/dicts deeper than ``limit`` (iterative walk)."""
    if not isinstance(value, dict | list):
        return False
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        todo += [(c, depth + 1) for c in children if isinstance(c, dict | list)]
    return False


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


#: a run of 19 digits: possibly an integer past 64 bits, which orjson reads as a float
#: (json.loads keeps it exact); found as 19 zeros in the text with every digit made a
#: zero (0.5 us for 200 bytes, against 3.4 for the regular expression ``\d{19}``)
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_DIGITS = b"0" * 19


def _json(data: bytes | None) -> Any:
    """JSON text as Python values, exactly as ``json.loads`` decodes it. orjson decodes it
    first (measured: 1.3 against 5.0 us for a 200-byte record): for text it accepts, its
    values are json's (floats correctly rounded, the last of duplicate keys); text with a
    19-digit run, and everything it refuses (malformed text, invalid UTF-8, NaN, 1e400,
    lone surrogates), takes json's path, which decides and words the error as before."""
    if data is None:
        return None
    if not json_too_deep(data) and data.translate(_DIGITS_TO_ZERO).find(_LONG_DIGITS) < 0:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return _json_loads(data)


def _json_loads(data: bytes) -> Any:
    """JSON text by ``json.loads`` alone: UTF-8, depth and syntax checked, in that order."""
    text = _string(data)
    if text is None:
        return None
    if json_too_deep(data):
        raise SerdeError(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SerdeError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                         ) from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits (sys.int_info)
        raise SerdeError(f"JSON cannot be decoded: {exc}") from None


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
        value = ion_loads(data)
    except RecursionError:
        raise SerdeError(f"ION nested deeper than {MAX_DEPTH} levels") from None
    except Exception as exc:
        if "IERR_STACK_OVERFLOW" in str(exc):  # the C reader's own depth limit (reached
            # first when the process runs with a raised recursion limit)
            raise SerdeError(f"ION nested deeper than {MAX_DEPTH} levels") from None
        raise SerdeError(f"malformed ION: {exc}") from None
    # each container takes at least one byte, so only a longer payload can be too deep
    if len(data) > MAX_DEPTH and _too_deep(value, MAX_DEPTH):
        raise SerdeError(f"ION nested deeper than {MAX_DEPTH} levels")
    return value


_DESERIALIZERS: dict[str, Deserializer] = {
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
DESERIALIZERS: dict[str, Deserializer] = {name: guarded(name, de)
                                          for name, de in _DESERIALIZERS.items()}
"""Every deserializer by name; each raises only :class:`SerdeError` (:func:`guarded`)."""


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
    if type(value) is str:
        return value.encode()
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return str(value).encode()


def _ser_default(value: Any) -> Any:
    """What JSON writes for a value of no JSON type: a UUID as its text, an enum member as its
    value (as orjson writes both); anything else is refused."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _ser_refuse(value: Any) -> Any:
    raise TypeError("not for orjson")


#: ``json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
#: default=_ser_default).encode``, its C encoder built once (``encode`` builds one per call)
#: and without the check for circular references (a value that holds itself fails with
#: RecursionError instead)
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_SER_JSON = (_C_ENCODER(None, _ser_default, json.encoder.encode_basestring, None, ":", ",",
                        False, False, False) if _C_ENCODER is not None else None)
#: orjson leaves to ``default`` (which refuses: json's path then decides) what json writes
#: otherwise or refuses: subclasses of str/int/float/dict/list, dates, dataclasses
_ORJSON_PLAIN = (orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME
                 | orjson.OPT_PASSTHROUGH_DATACLASS)


def _ser_json(value: Any) -> bytes | None:
    """Compact JSON, non-ASCII kept, NaN and infinities refused, UUIDs as text and enum
    members as their value: the bytes of ``json.JSONEncoder(separators=(",", ":"),
    ensure_ascii=False, allow_nan=False, default=_ser_default)``.

    orjson encodes first (measured: 0.5 against 5.5 us for a 12-field record). Its text is
    json's except where it says ``null`` (also its NaN and infinities, which json refuses),
    ``e-`` or ``0.0000`` (floats below 1e-4: json writes ``1e-05`` where orjson writes
    ``0.00001``, ``1e-07`` for ``1e-7``), and what it leaves to ``default`` or refuses (non-str
    keys, integers past 64 bits, subclasses, lone surrogates, nesting past 255): all of those
    take json's encoder, which decides (differential tests). A value that holds itself fails
    with RecursionError, a serde error like any value that cannot be encoded."""
    if value is None:
        return None
    try:
        data = orjson.dumps(value, default=_ser_refuse, option=_ORJSON_PLAIN)
        if b"null" not in data and b"e-" not in data and b"0.0000" not in data:
            return data
    except orjson.JSONEncodeError:
        pass
    try:
        if _SER_JSON is None:
            return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                                    default=_ser_default).encode(value).encode()
        return "".join(_SER_JSON(value, 0)).encode()
    except (TypeError, ValueError, RecursionError) as exc:
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
