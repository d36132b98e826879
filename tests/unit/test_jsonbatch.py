"""waxflow.connectors.jsonbatch: bulk-encoded JSON batches equal the record-by-record decode."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pj
import pytest
from amazon.ion import simpleion

from waxflow.connectors import jsonbatch, serdes, storage
from waxflow.connectors.ion import to_python
from waxflow.connectors.serdes import SerdeError
from waxflow.connectors.storage import Storage, read_records
from waxflow.connectors.tabular import rows, to_table
from waxflow.errors import WaxflowError
from waxflow.records import RawRecord, RecordFields, headers_text


def raw(i: int, value: bytes | None, key: bytes | None = None,
        headers: tuple[tuple[str, bytes | None], ...] = ()) -> RecordFields:
    return ("orders", i % 3, 100 + i, key if key is not None else str(i).encode(),
            value, 1_700_000_000_000 + i, headers)


def decoded(fields: RecordFields) -> dict[str, Any]:
    """What the record-by-record path stores for a JSON value with a STRING key."""
    r = RawRecord(*fields)
    return {"key": None if r.key is None else r.key.decode(),
            "value": None if r.value is None else json.loads(r.value),
            "topic": r.topic, "partition": r.partition, "offset": r.offset,
            "timestamp": r.timestamp, "headers": headers_text(r.headers)}


def reference(records: list[RecordFields]) -> pa.Table:
    """The table of the decoded records, value fields first (as waxflow.connectors.tabular)."""
    table = pa.Table.from_struct_array(pa.array(list(rows(decoded(r) for r in records))))
    meta = [n for n in table.column_names if n.startswith("_")]
    return table.select([n for n in table.column_names if n not in meta] + meta)


RECORDS = [
    raw(0, b'{"id":0,"amount":1.5,"ts":"2024-05-01T12:00:00.000Z","day":"2024-05-01",'
           b'"nested":{"at":"2024-05-01 10:00:00","n":[1,2]},"tags":["a"],"none":null}'),
    raw(1, b'{"id":1,"amount":2,"extra":true,"note":"say \\"hi\\"\\n\\u00e9\\ud83d\\ude00"}',
        key='k "1" \\ é'.encode(), headers=(("trace", b"abc"), ("empty", None))),
    raw(2, b'{ "id" : 2 ,\n "amount" : -0.25 }', key=b""),
]


def test_encode_equals_record_by_record_decode(tmp_path: Path) -> None:
    batch = jsonbatch.encode(RECORDS)
    assert batch is not None and batch.count == 3
    want = reference(RECORDS)
    assert batch.table.equals(want), (batch.table.schema, want.schema)
    # date-like strings stay strings (pyarrow would infer timestamps)
    assert batch.table.schema.field("day").type == pa.string()
    assert batch.table.schema.field("nested").type.field("at").type == pa.string()
    # fields of later records are columns too (not only the first record's)
    assert batch.table.column("extra").to_pylist() == [None, True, None]
    # the file: JSON (so Ion text), one entry per record, equal to the decoded records
    uri = Storage(str(tmp_path)).put_data("b.ion", batch.data, batch.table)
    storage._RECENT.clear()
    assert list(read_records(uri)) == [decoded(r) for r in RECORDS]
    ion = [to_python(v) for v in simpleion.load(io.BytesIO(batch.data), single_value=False)]
    assert ion == [decoded(r) for r in RECORDS]
    # read back without the kept table: one pyarrow parse gives the same table
    again = jsonbatch.read_table(batch.data)
    assert again is not None and again.equals(want)
    assert to_table(uri).equals(want)
    assert to_table(uri, metadata=False).column_names == [
        n for n in want.column_names if not n.startswith("_")]


def test_kept_table_is_used_while_the_file_is_unchanged(tmp_path: Path) -> None:
    batch = jsonbatch.encode(RECORDS)
    assert batch is not None
    uri = Storage(str(tmp_path)).put_data("b.ion", batch.data, batch.table)
    assert to_table(uri) is batch.table
    Path(uri.removeprefix("file://")).write_bytes(batch.data + b"\n")
    assert to_table(uri) is not batch.table


@pytest.mark.parametrize("value", [
    None,                                   # tombstone
    b"5", b"[1,2]", b'"text"',               # not an object
    b"", b"  ",                              # empty
    b'{"a":1}{"a":2}',                       # two objects in one value
    b'{"a":1} ',                             # trailing whitespace: not provably one object
    b'{"a":NaN}', b'{"a":Infinity}',          # not JSON
    b'{"a":18446744073709551616}',            # beyond int64: pyarrow would round to double
    b'{"a":1,"a":2}',                         # duplicate field
    b'{"a":"\xff"}',                          # invalid UTF-8
    b'{"a":"x"}',                             # type differs from the other records' `a`
    b'{"a":1',                                # malformed
])
def test_what_bulk_cannot_do_exactly_falls_back(value: bytes | None) -> None:
    records = [raw(0, b'{"a":1}'), raw(1, value), raw(2, b'{"a":3}')]
    assert jsonbatch.encode(records) is None


def test_two_values_cannot_trade_rows() -> None:
    # 2 records, 2 rows in total, but record 0 holds two objects and record 1 none
    assert jsonbatch.encode([raw(0, b'{"a":1}\n{"a":2}'), raw(1, b"\n")]) is None


def test_invalid_utf8_key_falls_back() -> None:
    assert jsonbatch.encode([raw(0, b'{"a":1}', key=b"\xff")]) is None


def test_records_of_several_topics_and_without_timestamps() -> None:
    records: list[RecordFields] = [("a%b", 0, 1, b"k", b'{"x":1}', None, ()),
                                  ("other", 1, 2, None, b'{"x":2}', 5, (("h", b"v"),))]
    batch = jsonbatch.encode(records)
    assert batch is not None
    assert batch.table.equals(reference(records))
    assert [json.loads(line) for line in batch.data.splitlines()] == [
        decoded(r) for r in records]


def test_null_keys_and_timestamps_type_like_the_decode() -> None:
    records: list[RecordFields] = [("t", 0, i, None, b'{"a":%d}' % i, None, ()) for i in range(3)]
    batch = jsonbatch.encode(records)
    assert batch is not None
    assert batch.table.equals(reference(records))
    assert pa.types.is_null(batch.table.schema.field("_key").type)


def test_value_fields_named_like_metadata_are_replaced() -> None:
    records = [raw(0, b'{"_offset":-1,"a":1}')]
    batch = jsonbatch.encode(records)
    assert batch is not None
    assert batch.table.column("_offset").to_pylist() == [100]
    assert batch.table.column_names.count("_offset") == 1


def test_binary_ion_files_still_read(tmp_path: Path) -> None:
    recs = [decoded(r) for r in RECORDS]
    uri, count = Storage(str(tmp_path)).put_records("old.ion", recs)
    storage._RECENT.clear()
    assert count == 3 and list(read_records(uri)) == recs
    assert to_table(uri).equals(reference(RECORDS))


def test_produce_reads_a_bulk_stored_batch(tmp_path: Path) -> None:
    from waxflow.connectors.kafka_produce import load_records

    batch = jsonbatch.encode(RECORDS)
    assert batch is not None
    uri = Storage(str(tmp_path)).put_data("b.ion", batch.data)
    assert load_records(uri) == [decoded(r) for r in RECORDS]


@pytest.mark.parametrize("bad", [b'{"n":{"x":NaN}}', b'{"l":[1.5,Infinity]}',
                                 b'{"n":{"l":[{"x":18446744073709551616}]}}'])
def test_nested_values_are_checked_too(bad: bytes) -> None:
    records = [raw(0, b'{"n":{"x":1.5},"l":[2.5]}'), raw(1, bad), raw(2, b'{"n":null}')]
    assert jsonbatch.encode(records) is None
    assert jsonbatch.encode([records[0], records[2]]) is not None


# -- depth: the bulk path rejects exactly what the record-by-record decode rejects ---------

def deep_object(depth: int) -> bytes:
    """A JSON object nested ``depth`` levels deep (the object itself is level 1)."""
    return b'{"a":' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"


def test_values_up_to_the_depth_limit_stay_in_bulk(tmp_path: Path) -> None:
    limit = serdes.MAX_DEPTH
    records = [raw(0, deep_object(limit)), raw(1, deep_object(limit))]
    batch = jsonbatch.encode(records)
    assert batch is not None, "within the limit: the bulk path keeps it"
    assert [json.loads(line) for line in batch.data.splitlines()] == [
        decoded(r) for r in records]
    uri = Storage(str(tmp_path)).put_data("deep.ion", batch.data)
    path = Path(uri.removeprefix("file://"))
    assert jsonbatch.read_table(path.read_bytes()) is not None, "its file reads back in bulk"


@pytest.mark.parametrize("depth", [serdes.MAX_DEPTH + 1, 600, 5_000, 100_000])
def test_a_value_too_deep_sends_the_batch_record_by_record(
        depth: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback decode then rejects exactly that record (a serde error); a long deep value
    never reaches pyarrow, whose parser crashes the process (SIGSEGV) on very deep input."""
    parsed: list[int] = []
    read_json = pj.read_json

    def spy(source: Any, **kwargs: Any) -> pa.Table:
        parsed.append(len(source.getvalue()))
        return read_json(source, **kwargs)

    monkeypatch.setattr(pj, "read_json", spy)  # the module jsonbatch calls
    bad = deep_object(depth)
    records = [raw(0, b'{"a":[1]}'), raw(1, bad), raw(2, b'{"a":[3]}')]
    assert jsonbatch.encode(records) is None
    if len(bad) > jsonbatch.PRECHECK_BYTES:
        assert parsed == [], "a long deep value must be refused before the parse"
    with pytest.raises(SerdeError, match=f"nested deeper than {serdes.MAX_DEPTH} levels"):
        serdes.DESERIALIZERS["JSON"](bad)
    for good in (records[0], records[2]):
        assert good[4] is not None
        serdes.DESERIALIZERS["JSON"](good[4])
    assert jsonbatch.encode([records[0], records[2]]) is not None


def test_brackets_inside_long_strings_are_not_depth() -> None:
    value = b'{"s":"' + b"[" * 5_000 + b'","n":[[1]]}'
    batch = jsonbatch.encode([raw(0, value)])
    assert batch is not None
    assert batch.table.column("s").to_pylist() == ["[" * 5_000]


@pytest.mark.parametrize("how", ["put_records", "put_data"])
def test_unwritable_storage_is_one_storage_error_naming_the_path(
        how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A storage path under a regular file (root ignores permissions, so this is what fails
    for every user): mkdir fails, and the error names the file, the OS error and the
    setting (it was a bare NotADirectoryError)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("WAXFLOW_STORAGE", str(blocker / "storage"))
    store = Storage()
    with pytest.raises(storage.StorageError) as caught:
        if how == "put_records":
            store.put_records("ns/flow/x.ion", [decoded(RECORDS[0])])
        else:
            store.put_data("ns/flow/x.ion", b"{}\n")
    message = str(caught.value)
    assert message.startswith(f"cannot write internal storage file {blocker}/storage/ns/flow/"
                              "x.ion: [Errno 20] Not a directory")
    assert f"$WAXFLOW_STORAGE={blocker}/storage" in message
    assert "\n" not in message
    assert isinstance(caught.value, WaxflowError)
