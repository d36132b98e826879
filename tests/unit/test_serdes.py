"""Kafka key/value serdes: round trips, Java wire compatibility, range errors, tombstones, AVRO.

The byte layouts are those of Kafka's Java serdes (``IntegerSerializer`` & co. write
big-endian two's complement / IEEE 754; ``StringSerializer`` and ``UUIDSerializer`` write
UTF-8 text), so a waxflow flow and a Java producer or consumer read each other's records.
AVRO runs against ``confluent_kafka``'s in-process mock registry (``mock://``).
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import struct
import uuid
from typing import Any

import pytest

import waxflow.connectors.avro as avro_mod
from waxflow.connectors import serdes
from waxflow.connectors.avro import avro_deserializer, avro_serializer
from waxflow.connectors.serdes import (
    DESERIALIZERS,
    SERIALIZERS,
    SerdeError,
    deserializer,
    serializer,
)
from waxflow.errors import SerdeStop
from waxflow.operators.deserialize import decode
from waxflow.records import RawRecord

NAMES = ["STRING", "INTEGER", "LONG", "SHORT", "FLOAT", "DOUBLE", "BYTES", "UUID", "JSON",
         "ION", "VOID"]

# (serde, value given to the serializer, value the deserializer must return)
ROUND_TRIPS: list[tuple[str, Any, Any]] = [
    ("STRING", "hello", "hello"),
    ("STRING", "", ""),
    ("STRING", "héllo wörld ✓ 𝄞", "héllo wörld ✓ 𝄞"),
    ("INTEGER", 0, 0),
    ("INTEGER", 1, 1),
    ("INTEGER", -1, -1),
    ("INTEGER", 2**31 - 1, 2**31 - 1),
    ("INTEGER", -(2**31), -(2**31)),
    ("INTEGER", "42", 42),  # template output is text
    ("LONG", 2**63 - 1, 2**63 - 1),
    ("LONG", -(2**63), -(2**63)),
    ("LONG", 1_700_000_000_123, 1_700_000_000_123),
    ("SHORT", 2**15 - 1, 2**15 - 1),
    ("SHORT", -(2**15), -(2**15)),
    ("FLOAT", 1.5, 1.5),
    ("FLOAT", -0.25, -0.25),
    ("FLOAT", "2.5", 2.5),
    ("DOUBLE", math.pi, math.pi),
    ("DOUBLE", -1e300, -1e300),
    ("DOUBLE", 7, 7.0),
    ("BYTES", b"\x00\x01\xfe\xff", b"\x00\x01\xfe\xff"),
    ("BYTES", b"", b""),
    ("UUID", "123e4567-e89b-12d3-a456-426614174000", "123e4567-e89b-12d3-a456-426614174000"),
    ("JSON", {"a": 1, "b": [True, None, 2.5, "x"], "c": {"d": "é"}},
     {"a": 1, "b": [True, None, 2.5, "x"], "c": {"d": "é"}}),
    ("JSON", [1, 2, 3], [1, 2, 3]),
    ("JSON", "text", "text"),
    ("JSON", 0, 0),
    ("ION", {"a": 1, "b": [True, False, None, 1.5, "s", b"\x00\x01"], "c": {"d": -3}},
     {"a": 1, "b": [True, False, None, 1.5, "s", b"\x00\x01"], "c": {"d": -3}}),
    ("ION", 2**70, 2**70),
    ("ION", "plain text", "plain text"),
    ("ION", [], []),
    ("VOID", None, None),
]


@pytest.mark.parametrize(("name", "given", "expected"), ROUND_TRIPS,
                         ids=[f"{n}-{i}" for i, (n, _g, _e) in enumerate(ROUND_TRIPS)])
def test_round_trip(name: str, given: Any, expected: Any) -> None:
    data = SERIALIZERS[name](given)
    back = DESERIALIZERS[name](data)
    assert back == expected
    assert type(back) is type(expected)


def test_every_serializer_has_a_deserializer() -> None:
    assert set(NAMES) <= set(SERIALIZERS)
    assert set(SERIALIZERS) == set(DESERIALIZERS)
    for name in SERIALIZERS:
        assert serializer(name) is SERIALIZERS[name]
        assert deserializer(name) is DESERIALIZERS[name]


def test_byte_array_is_an_alias_of_bytes() -> None:
    assert SERIALIZERS["BYTE_ARRAY"](b"\x01") == SERIALIZERS["BYTES"](b"\x01") == b"\x01"
    assert DESERIALIZERS["BYTE_ARRAY"](b"\x01") == b"\x01"


# Kafka's Java serdes, byte for byte
JAVA_WIRE: list[tuple[str, Any, bytes]] = [
    ("INTEGER", 1, b"\x00\x00\x00\x01"),
    ("INTEGER", -1, b"\xff\xff\xff\xff"),
    ("INTEGER", 256, b"\x00\x00\x01\x00"),
    ("INTEGER", 2**31 - 1, b"\x7f\xff\xff\xff"),
    ("INTEGER", -(2**31), b"\x80\x00\x00\x00"),
    ("LONG", 1, b"\x00\x00\x00\x00\x00\x00\x00\x01"),
    ("LONG", -2, b"\xff\xff\xff\xff\xff\xff\xff\xfe"),
    ("LONG", 2**32, b"\x00\x00\x00\x01\x00\x00\x00\x00"),
    ("SHORT", 1, b"\x00\x01"),
    ("SHORT", -1, b"\xff\xff"),
    ("SHORT", 258, b"\x01\x02"),
    ("FLOAT", 1.0, b"\x3f\x80\x00\x00"),
    ("FLOAT", -2.0, b"\xc0\x00\x00\x00"),
    ("DOUBLE", 1.0, b"\x3f\xf0\x00\x00\x00\x00\x00\x00"),
    ("DOUBLE", -2.5, b"\xc0\x04\x00\x00\x00\x00\x00\x00"),
    ("STRING", "héllo", "héllo".encode()),
    ("UUID", "123E4567-E89B-12D3-A456-426614174000",  # Java's UUID.toString(): lower case
     b"123e4567-e89b-12d3-a456-426614174000"),
    ("JSON", {"a": [1, "é"]}, '{"a":[1,"é"]}'.encode()),
    ("BYTES", b"\x00\xff", b"\x00\xff"),
]


@pytest.mark.parametrize(("name", "value", "wire"), JAVA_WIRE,
                         ids=[f"{n}-{i}" for i, (n, _v, _w) in enumerate(JAVA_WIRE)])
def test_java_wire_format(name: str, value: Any, wire: bytes) -> None:
    assert SERIALIZERS[name](value) == wire
    # and what a Java producer wrote reads back
    expected = str(uuid.UUID(value)) if name == "UUID" else value
    assert DESERIALIZERS[name](wire) == expected


def test_numbers_are_big_endian_like_java() -> None:
    for name, fmt in (("INTEGER", ">i"), ("LONG", ">q"), ("SHORT", ">h")):
        assert SERIALIZERS[name](123) == struct.pack(fmt, 123)
        assert SERIALIZERS[name](123) != struct.pack("<" + fmt[1:], 123)


def test_float_keeps_single_precision() -> None:
    # 0.1 is not representable: FLOAT (4 bytes) rounds like Java's (float) cast
    back = DESERIALIZERS["FLOAT"](SERIALIZERS["FLOAT"](0.1))
    assert back == struct.unpack(">f", struct.pack(">f", 0.1))[0]
    assert back != 0.1
    assert DESERIALIZERS["DOUBLE"](SERIALIZERS["DOUBLE"](0.1)) == 0.1


def test_special_floats() -> None:
    assert DESERIALIZERS["DOUBLE"](SERIALIZERS["DOUBLE"](math.inf)) == math.inf
    assert math.isnan(DESERIALIZERS["FLOAT"](SERIALIZERS["FLOAT"]("nan")))
    assert SERIALIZERS["DOUBLE"](math.inf) == b"\x7f\xf0\x00\x00\x00\x00\x00\x00"


# values out of the type's range, or not numbers at all: SerdeError naming the type
RANGE_ERRORS: list[tuple[str, Any]] = [
    ("INTEGER", 2**31),
    ("INTEGER", -(2**31) - 1),
    ("LONG", 2**63),
    ("LONG", -(2**63) - 1),
    ("SHORT", 2**15),
    ("SHORT", -(2**15) - 1),
    ("INTEGER", "abc"),
    ("LONG", "12abc"),
    ("FLOAT", "abc"),
    ("DOUBLE", "one"),
    ("INTEGER", math.nan),
    ("INTEGER", True),
    ("DOUBLE", False),
    ("LONG", [1]),
    ("SHORT", {"v": 1}),
]


@pytest.mark.parametrize(("name", "value"), RANGE_ERRORS,
                         ids=[f"{n}-{i}" for i, (n, _v) in enumerate(RANGE_ERRORS)])
def test_number_out_of_range_or_not_a_number(name: str, value: Any) -> None:
    with pytest.raises(SerdeError, match=name):
        SERIALIZERS[name](value)


def test_integer_2_pow_31_message() -> None:
    with pytest.raises(SerdeError) as err:
        SERIALIZERS["INTEGER"](2**31)
    assert str(err.value).startswith(f"INTEGER cannot hold {2**31}")


@pytest.mark.parametrize(("name", "value"), [("FLOAT", 1e39), ("INTEGER", math.inf),
                                             ("LONG", -math.inf)])
def test_overflow_is_a_serde_error(name: str, value: Any) -> None:
    with pytest.raises(SerdeError, match=name):
        SERIALIZERS[name](value)


@pytest.mark.parametrize("name", ["INTEGER", "LONG", "SHORT"])
def test_integer_types_reject_fractions(name: str) -> None:
    with pytest.raises(SerdeError, match=name):
        SERIALIZERS[name](1.5)


WRONG_PAYLOADS: list[tuple[str, bytes, str]] = [
    ("INTEGER", b"\x00\x00\x01", "INTEGER expects 4 bytes, got 3"),
    ("LONG", b"\x00" * 4, "LONG expects 8 bytes, got 4"),
    ("SHORT", b"\x00" * 3, "SHORT expects 2 bytes, got 3"),
    ("FLOAT", b"", "FLOAT expects 4 bytes, got 0"),
    ("DOUBLE", b"\x00", "DOUBLE expects 8 bytes, got 1"),
    ("STRING", b"\xc3\x28", "not valid UTF-8"),
    ("JSON", b'{"a": ', "malformed JSON"),
    ("UUID", b"not-a-uuid", "not a UUID"),
    ("ION", b"\xe0\x01\x00\xea\xff\xff", "malformed ION"),
    ("VOID", b"x", "VOID expects an empty payload"),
]


@pytest.mark.parametrize(("name", "payload", "message"), WRONG_PAYLOADS,
                         ids=[n for n, _p, _m in WRONG_PAYLOADS])
def test_payload_that_does_not_fit(name: str, payload: bytes, message: str) -> None:
    with pytest.raises(SerdeError, match=message):
        DESERIALIZERS[name](payload)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("UUID", "not-a-uuid", "not a UUID"),
    ("JSON", {1, 2}, "JSON cannot encode"),
    ("BYTES", 12, "BYTES expects bytes or text"),
    ("VOID", "something", "VOID expects no value"),
])
def test_value_that_does_not_fit(name: str, value: Any, message: str) -> None:
    with pytest.raises(SerdeError, match=message):
        SERIALIZERS[name](value)


@pytest.mark.parametrize("name", sorted(SERIALIZERS))
def test_none_is_a_tombstone(name: str) -> None:
    assert SERIALIZERS[name](None) is None
    assert DESERIALIZERS[name](None) is None


def test_void_accepts_only_empty() -> None:
    assert SERIALIZERS["VOID"](b"") is None
    assert SERIALIZERS["VOID"]("") is None
    assert DESERIALIZERS["VOID"](b"") is None


def test_string_serializer_takes_what_templates_produce() -> None:
    assert SERIALIZERS["STRING"](b"raw") == b"raw"
    assert SERIALIZERS["STRING"](42) == b"42"
    assert SERIALIZERS["STRING"]({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


def test_bytes_from_base64_and_text() -> None:
    # a deserialized BYTES value is {"$base64": ...} in an execution's JSON: it goes back as is
    assert SERIALIZERS["BYTES"]({"$base64": "AAH+/w=="}) == b"\x00\x01\xfe\xff"
    assert SERIALIZERS["BYTES"]("é") == "é".encode()


def test_json_deserializer_reads_any_json_value() -> None:
    assert DESERIALIZERS["JSON"](b" [1, 2] ") == [1, 2]
    assert DESERIALIZERS["JSON"](b"null") is None


def test_ion_reads_text_ion_too() -> None:
    assert DESERIALIZERS["ION"](b'{a: 1, b: "x", c: [true, null]}') == \
        {"a": 1, "b": "x", "c": [True, None]}


def test_ion_is_binary() -> None:
    data = SERIALIZERS["ION"]({"a": 1})
    assert data is not None and data.startswith(b"\xe0\x01\x00\xea")  # binary version marker


def test_unknown_serde_name() -> None:
    with pytest.raises(SerdeError, match="unknown serde NOPE"):
        serializer("NOPE")
    with pytest.raises(SerdeError, match="unknown serde AVRO"):
        deserializer("AVRO")  # AVRO is built per trigger/task from the registry


# ---------------------------------------------------------------------------- AVRO

ORDER_SCHEMA = json.dumps({
    "type": "record", "name": "Order", "namespace": "tests.waxflow",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "item", "type": "string"},
        {"name": "qty", "type": ["null", "int"], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "addr", "type": {"type": "record", "name": "Addr",
                                  "fields": [{"name": "zip", "type": "string"}]}},
    ],
})
ORDER = {"id": 7, "item": "book", "qty": 2, "tags": ["a", "b"], "addr": {"zip": "75001"}}


@pytest.fixture
def mock_url() -> str:
    """A fresh ``mock://`` registry URL: the client's in-process registry, empty."""
    return f"mock://unit-{uuid.uuid4().hex[:8]}"


def test_avro_round_trip(mock_url: str) -> None:
    props = {"schema.registry.url": mock_url}
    ser = avro_serializer(props, ORDER_SCHEMA, "value")
    data = ser(ORDER, "orders")
    assert data is not None
    assert data[0] == 0  # Confluent wire format: magic byte, 4-byte schema id, AVRO body
    schema_id = int.from_bytes(data[1:5], "big")
    assert avro_deserializer(props)(data) == ORDER
    # registered under the topic's subject, with the id found in the payload
    registry = avro_mod._registry(props)
    assert "orders-value" in registry.get_subjects()
    assert registry.get_latest_version("orders-value").schema_id == schema_id


def test_avro_defaults_fill_missing_optional_fields(mock_url: str) -> None:
    props = {"schema.registry.url": mock_url}
    data = avro_serializer(props, ORDER_SCHEMA, "value")(
        {"id": 1, "item": "x", "addr": {"zip": "1"}}, "orders")
    assert avro_deserializer(props)(data) == {"id": 1, "item": "x", "qty": None, "tags": [],
                                              "addr": {"zip": "1"}}


def test_avro_key_and_primitive_schema(mock_url: str) -> None:
    props = {"schema.registry.url": mock_url}
    key = avro_serializer(props, '"string"', "key")("k-1", "orders")
    assert avro_deserializer(props)(key) == "k-1"
    assert "orders-key" in avro_mod._registry(props).get_subjects()


def test_avro_tombstone(mock_url: str) -> None:
    props = {"schema.registry.url": mock_url}
    assert avro_serializer(props, ORDER_SCHEMA, "value")(None, "orders") is None
    assert avro_deserializer(props)(None) is None


@pytest.mark.parametrize(("value", "field", "reason"), [
    ({**ORDER, "id": "seven"}, "id", "an integer is required"),
    ({**ORDER, "item": 5}, "item", "must be string"),
    ({**ORDER, "qty": 2**40}, "qty", "do not match"),
    ({**ORDER, "addr": {"zip": 75001}}, "zip", "must be string"),
    ({k: v for k, v in ORDER.items() if k != "item"}, "item", "no value and no default"),
], ids=["long-gets-text", "string-gets-int", "union-out-of-range", "nested", "missing"])
def test_avro_value_that_does_not_fit_names_the_field(
    mock_url: str, value: dict[str, Any], field: str, reason: str
) -> None:
    ser = avro_serializer({"schema.registry.url": mock_url}, ORDER_SCHEMA, "value")
    with pytest.raises(SerdeError) as err:
        ser(value, "orders")
    message = str(err.value)
    assert reason in message
    assert field in message
    if field == "zip":
        assert "on field zip on field addr" in message  # the path to the nested field


def test_avro_needs_a_registry_and_a_schema() -> None:
    with pytest.raises(SerdeError, match=r"serdeProperties\.schema\.registry\.url"):
        avro_serializer({}, ORDER_SCHEMA, "value")
    with pytest.raises(SerdeError, match="AVRO key needs keyAvroSchema"):
        avro_serializer({"schema.registry.url": "mock://x"}, None, "key")
    with pytest.raises(SerdeError, match="AVRO value needs valueAvroSchema"):
        avro_serializer({"schema.registry.url": "mock://x"}, "", "value")


def test_avro_deserializer_rejects_foreign_bytes(mock_url: str) -> None:
    de = avro_deserializer({"schema.registry.url": mock_url})
    with pytest.raises(SerdeError, match="not AVRO of a registered schema"):
        de(b"plain text")
    with pytest.raises(SerdeError, match="not AVRO of a registered schema"):
        de(b"\x00\x00\x00\x03\xe7\x02")  # framed, but schema id 999 is unknown


def test_mock_registry_is_shared_by_url(mock_url: str) -> None:
    """What one serializer registers, a deserializer built later for the same URL finds."""
    props = {"schema.registry.url": mock_url}
    data = avro_serializer(props, ORDER_SCHEMA, "value")(ORDER, "orders")
    assert avro_deserializer(dict(props))(data) == ORDER
    other = avro_deserializer({"schema.registry.url": f"{mock_url}-other"})
    with pytest.raises(SerdeError, match="not AVRO of a registered schema"):
        other(data)


# -- bad input never crashes the deserializer: depth limit, and any decoder error is a
#    SerdeError (onSerdeError then applies) ------------------------------------------------

def nested(depth: int, inner: bytes = b"1") -> bytes:
    """JSON (and text ION) arrays nested ``depth`` levels deep around ``inner``."""
    return b"[" * depth + inner + b"]" * depth


@pytest.mark.parametrize(("text", "depth"), [
    (b"1", 0), (b"{}", 1), (b"[]", 1), (b'{"a":[1,{"b":[]}]}', 4), (nested(7), 7),
    (b'["[[[[", "{{{"]', 1),                        # brackets inside strings do not count
    (b'["a\\"[[[[", "\\\\", [[2]]]', 3),             # escaped quote, escaped backslash
    (b'{"k[": {"\\u005b": ["]]]]"]}}', 3),
    (b"[1, [2, [3]], [4]]", 3),
])
def test_json_depth(text: bytes, depth: int) -> None:
    assert serdes.json_depth(text) == depth
    assert serdes.json_too_deep(text, limit=depth) is False
    if depth > 0:
        assert serdes.json_too_deep(text, limit=depth - 1) is True
    json.loads(text)  # the cases are valid JSON


def test_json_nested_up_to_the_limit_decodes_and_deeper_is_a_serde_error() -> None:
    limit = serdes.MAX_DEPTH
    assert DESERIALIZERS["JSON"](nested(limit)) == json.loads(nested(limit))
    for depth in (limit + 1, 900, 5_000, 100_000):  # 5,000 deep raised RecursionError before
        with pytest.raises(SerdeError, match=f"JSON nested deeper than {limit} levels"):
            DESERIALIZERS["JSON"](nested(depth))
    with pytest.raises(SerdeError, match="deeper than"):
        DESERIALIZERS["JSON"](b'{"a":' * 5_000)  # malformed too: still no RecursionError


def test_many_brackets_in_strings_are_not_depth() -> None:
    value = b'{"s": "' + b"[{" * 5_000 + b'", "t": ["' + b"\\\"[" * 1_000 + b'"]}'
    assert DESERIALIZERS["JSON"](value) == json.loads(value)


def test_huge_integer_is_a_serde_error() -> None:
    """``int()`` refuses more than 4,300 digits with ValueError: that crashed the step."""
    with pytest.raises(SerdeError, match="JSON cannot be decoded: Exceeds the limit"):
        DESERIALIZERS["JSON"](b"1" * 5_000)


def test_ion_too_deep_is_a_serde_error() -> None:
    limit = serdes.MAX_DEPTH
    assert DESERIALIZERS["ION"](nested(limit)) == json.loads(nested(limit))
    for depth in (limit + 1, 400, 5_000):  # 400: to_python's own recursion gave up
        with pytest.raises(SerdeError, match=r"ION nested deeper than|ION: Container nesting"):
            DESERIALIZERS["ION"](nested(depth))


@pytest.mark.parametrize("name", sorted(DESERIALIZERS))
@pytest.mark.parametrize("payload", [b"\x00" * 9, b"\xe0\x01\x00\xea" + b"\xde" * 40,
                                     nested(5_000), b"\xff" * 3, bytes(range(256)), b"{"])
def test_deserializers_raise_nothing_but_serde_errors(name: str, payload: bytes) -> None:
    with contextlib.suppress(SerdeError):
        DESERIALIZERS[name](payload)


@pytest.mark.parametrize(("exc", "message"), [
    (RecursionError("maximum recursion depth exceeded"),
     "X value nested too deep to decode (maximum recursion depth exceeded)"),
    (MemoryError(), "X deserializer failed: MemoryError"),
    (KeyError("schema 7"), "X deserializer failed: KeyError: 'schema 7'"),
    (RuntimeError("line one\nline two"), "X deserializer failed: RuntimeError: line one"),
])
def test_guarded_turns_any_decoder_error_into_one_line(exc: Exception, message: str) -> None:
    def broken(data: bytes | None) -> Any:
        raise exc

    with pytest.raises(SerdeError) as caught:
        serdes.guarded("X", broken)(b"payload")
    assert str(caught.value) == message


class _Broken:
    """A decoder failing as third-party ones do (AVRO, a registry client, ...)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self, data: bytes | None) -> Any:
        raise self.exc


@pytest.mark.parametrize("exc", [RecursionError("maximum recursion depth exceeded"),
                                 MemoryError(), ValueError("bad"), IndexError("x")])
def test_decode_makes_any_decoder_error_the_records_serde_error(exc: Exception) -> None:
    """The deserialize step: SKIPPED/DLQ get an error naming topic/partition@offset, FAIL a
    SerdeStop; before, anything but SerdeError crashed the step (and the job)."""
    raw = RawRecord("orders", 2, 41, b"k", b"v", None, ())
    string = DESERIALIZERS["STRING"]
    rec = decode(raw, string, _Broken(exc), fail=False, filters={})
    assert rec.error is not None
    assert rec.error.startswith("cannot deserialize the value of record orders/2@41: ")
    assert type(exc).__name__ in rec.error or "nested too deep" in rec.error
    with pytest.raises(SerdeStop, match=r"key of record orders/2@41: .*onSerdeError FAIL"):
        decode(raw, _Broken(exc), string, fail=True, filters={})


def test_keyboard_interrupt_is_not_a_serde_error() -> None:
    raw = RawRecord("orders", 0, 1, None, b"v", None, ())
    with pytest.raises(KeyboardInterrupt):
        decode(raw, DESERIALIZERS["STRING"], _Broken(KeyboardInterrupt()), fail=False,
               filters={})


_JSON_EDGES = [
    b'{"a":1,"a":2}', b"-0", b"-0.0", b"1E5", b"0.1e-999", b"1.5e308", b"1e400", b"-1e400",
    b"NaN", b"-Infinity", b'"\\ud800"', b'"\\u0000"', b'"\x7f"', b"\t[1] \n",
    b"123456789012345678901234567890", b"-9223372036854775809", b"18446744073709551615",
    b"18446744073709551616", b'{"id":"12345678901234567890123"}', b'"caf\xc3\xa9"',
    b"\xef\xbb\xbf{}", b'"\xed\xa0\x80"', b'"\xff"', b'"a\x01b"', b"[1,]", b"01", b'{"a":1}x',
    b"", b" ", b"[" * 201 + b"]" * 201,
]


def _json_outcome(decode: Any, data: bytes) -> tuple[str, Any]:
    try:
        value = decode(data)
    except Exception as exc:
        return "error", str(exc)
    return "value", (type(value).__name__, repr(value))


_REFERENCE = serdes.guarded("JSON", serdes._json_loads)  # json.loads alone (before orjson)


@pytest.mark.parametrize("data", _JSON_EDGES, ids=repr)
def test_json_decodes_exactly_as_json_loads(data: bytes) -> None:
    """orjson decodes first; every value (its type too) and every error are json.loads's:
    an integer past 64 bits stays exact, NaN/1e400/lone surrogates still decode, malformed
    text and invalid UTF-8 are refused with json's words."""
    de = deserializer("JSON")
    assert _json_outcome(de, data) == _json_outcome(_REFERENCE, data)


def test_json_floats_decode_as_json_loads() -> None:
    import random

    rnd = random.Random(7)
    de = deserializer("JSON")
    for _ in range(20_000):
        x = rnd.random() * 10 ** rnd.randint(-300, 300)
        for text in (repr(x), f"{x:.17g}", f"{-x:.5e}"):
            got, want = de(f'{{"v":{text}}}'.encode())["v"], json.loads(text)
            assert got == want and type(got) is type(want), text


# -- the JSON serializer: orjson first, exactly json's bytes ----------------------------------
def _json_reference(value: Any) -> tuple[str, Any]:
    """What ``json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
    default=...)`` makes of ``value`` (UUIDs as text, enum members as their value); None is
    a tombstone."""
    if value is None:
        return "value", None
    try:
        text = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                                default=serdes._ser_default).encode(value)
        return "value", text.encode()
    except (TypeError, ValueError, RecursionError):
        return "error", None


def _ser_outcome(value: Any) -> tuple[str, Any]:
    try:
        return "value", SERIALIZERS["JSON"](value)
    except SerdeError:
        return "error", None


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


_LOOP: list[Any] = []
_LOOP.append(_LOOP)


class _Color(enum.Enum):
    RED = 1
    BLUE = (2, "b")


class _Text(str):
    pass


class _Num(int):
    pass


class _Map(dict):  # type: ignore[type-arg]
    pass


_SER_EDGES: list[Any] = [
    {"a": None}, [1, None], {"f": 1e-5}, {"f": 1.5e-7}, {"f": 0.00012}, {"f": 1e16},
    {"f": 1.5e300}, {"f": 5e-324}, {"f": -0.0}, {"f": 100.0}, {"f": 0.1 + 0.2},
    {"nan": math.nan}, {"inf": math.inf}, [-math.inf], {"big": 2**64}, {"big": -(2**63) - 1},
    {"u64": 2**63}, {1: "int key"}, {None: 1, True: 2, 1.5: 3}, {"s": "caf\u00e9 \u2028 \x7f"},
    {"ctl": "\x00\x01\x1f\n\t\"\\"}, {"lone": "\ud800"}, {"e-": "tick-e-1"}, (1, 2),
    uuid.UUID(int=5), {"id": uuid.UUID(int=7)}, _Color.RED, {"c": _Color.BLUE},
    _Text("sub"), {"n": _Num(3)}, _Map(a=1), {_Text("k"): 1}, {1, 2}, b"bytes",
    {"d": __import__("datetime").date(2024, 1, 1)}, object(), True, 0, "", [], {},
    [[[[]]]], {"deep": _nest(300)}, "null", "0.00001", _LOOP,
]


@pytest.mark.parametrize("value", _SER_EDGES, ids=lambda v: type(v).__name__)
def test_json_serializes_exactly_as_json(value: Any) -> None:
    """orjson encodes first; the bytes, and what is refused, are json's: nulls, small floats,
    NaN, big integers, non-str keys, subclasses, lone surrogates and deep nesting take json's
    encoder; UUIDs and enum members are written as their text and value on both."""
    assert _ser_outcome(value) == _json_reference(value)


def test_json_serializes_random_values_as_json() -> None:
    import random

    rnd = random.Random(11)

    def scalar() -> Any:
        kind = rnd.randrange(6)
        if kind == 0:
            return rnd.random() * 10 ** rnd.randint(-12, 20) * rnd.choice((1, -1))
        if kind == 1:
            return rnd.randint(-(2**70), 2**70) if rnd.random() < 0.1 else rnd.randint(-999, 9**9)
        if kind == 2:
            return "".join(chr(rnd.choice((rnd.randrange(32), rnd.randrange(32, 127),
                                          rnd.randrange(0x80, 0x3000))))
                           for _ in range(rnd.randrange(12)))
        return (None, True, False, round(rnd.uniform(-1e4, 1e4), rnd.randrange(6)))[kind - 3]

    def value(depth: int) -> Any:
        if depth > 3 or rnd.random() < 0.4:
            return scalar()
        if rnd.random() < 0.5:
            return [value(depth + 1) for _ in range(rnd.randrange(5))]
        return {f"k{i}{scalar() if rnd.random() < 0.2 else ''}": value(depth + 1)
                for i in range(rnd.randrange(6))}

    for _ in range(20_000):
        v = value(0)
        assert _ser_outcome(v) == _json_reference(v), v
