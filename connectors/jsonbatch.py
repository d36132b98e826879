"""Batches of JSON records in bulk: one pyarrow parse instead of ``json.loads`` per record.

A ``kafka.Trigger`` batch of JSON object values (STRING keys) is the common ETL case, and
decoding each value in Python then encoding binary ION cost more than consuming the records.
:func:`encode` does it in bulk:

1. the raw value bytes of the whole batch go through **one** ``pyarrow.json`` parse, which
   validates every value as exactly one JSON object and infers the column types;
2. the batch file is **Ion text**: one line per record, ``{"topic":…,"partition":…,
   "offset":…,"timestamp":…,"key":…,"headers":{…},"value":<the value's own bytes>}`` — JSON
   is Ion text, so any Ion reader reads it (``waxflow.connectors.storage.read_records`` does);
3. the rows table (``waxflow.connectors.tabular.rows``' shape) comes with it, for the batch's tasks.

Guarantee: :func:`encode` returns ``None`` — the caller then decodes record by record and
writes binary ION — whenever the bulk result could differ from ``json.loads`` per record: a
null (tombstone) value, a value that is not one JSON object, an invalid UTF-8 key, NaN or
Infinity, an integer beyond int64 (pyarrow would silently make it a double), a duplicate
field, types that do not fit one table, or a value nested deeper than
``waxflow.connectors.serdes.MAX_DEPTH`` (the record-by-record decode rejects exactly those
as serde errors). Depth is checked twice: values longer than :data:`PRECHECK_BYTES` are
measured before the parse (``pyarrow.json`` recurses on the C stack and crashes the process on
very deep input), and the parse's inferred schema, as deep as the deepest value, covers the
rest at no cost per record. Strings that look like dates stay strings (as with
``json.loads``): pyarrow's timestamp inference is undone by a typed re-parse.
:func:`read_table` turns such a file back into the same rows table without Python decoding.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from waxflow.connectors.serdes import MAX_DEPTH, json_too_deep
from waxflow.records import RecordFields, headers_text

META_COLUMNS = ("_topic", "_partition", "_offset", "_timestamp", "_key")
_FIELDS = ("topic", "partition", "offset", "timestamp", "key")
_PLAIN_KEY = re.compile(rb'[ !#-\[\]-~]*')  # printable ASCII but " and \: no JSON escaping
_INT64_LIMIT = 2.0 ** 63
_READ = pj.ReadOptions(block_size=16 << 20)
PRECHECK_BYTES = 1000
"""Values longer than this are depth-checked before the parse: a shorter one cannot nest
more than 1,000 levels, which ``pyarrow.json`` parses without trouble on a 2 MiB thread
stack (measured: 5,000 levels on 2 MiB; it crashed at ~1,000 on 256 KiB, ~20,000 on 8 MiB)."""


@dataclass
class JsonBatch:
    """A batch encoded by :func:`encode`: the Ion-text file content and its rows table."""

    data: bytes
    table: pa.Table
    count: int


def _string_times(ty: pa.DataType) -> pa.DataType:
    """``ty`` with timestamps/dates (pyarrow's inference from strings) as strings."""
    if pa.types.is_timestamp(ty) or pa.types.is_date(ty):
        return pa.string()
    if pa.types.is_struct(ty):
        return pa.struct([f.with_type(_string_times(f.type)) for f in ty])
    if pa.types.is_list(ty):
        return pa.list_(ty.value_field.with_type(_string_times(ty.value_type)))
    return ty


def _doubles(arr: pa.Array) -> list[pa.Array]:
    """Every double-typed leaf array under ``arr`` (struct fields, list items)."""
    ty = arr.type
    if pa.types.is_floating(ty):
        return [arr]
    if pa.types.is_struct(ty):  # flatten(): children with the struct's nulls applied
        return [d for child in arr.flatten() for d in _doubles(child)]
    if pa.types.is_list(ty):
        return _doubles(arr.flatten())
    return []


def _exact(table: pa.Table) -> bool:
    """No NaN/Infinity (not JSON) and no double that may be a rounded >int64 integer."""
    for column in table.columns:
        for chunk in column.chunks:
            for leaf in _doubles(chunk):
                if leaf.null_count == len(leaf):
                    continue
                if not pc.all(pc.is_finite(leaf)).as_py():
                    return False
                top = pc.max(pc.abs(leaf)).as_py()
                if top is not None and top >= _INT64_LIMIT:
                    return False
    return True


def _depth(ty: pa.DataType) -> int:
    """How deep structs and lists nest in ``ty`` (a scalar 0, ``struct<>`` 1; iterative:
    it may be deeper than Python's recursion limit)."""
    deepest = 0
    todo = [(ty, 1)]
    while todo:
        cur, level = todo.pop()
        if pa.types.is_struct(cur):
            todo += [(f.type, level + 1) for f in cur]
        elif pa.types.is_list(cur) or pa.types.is_large_list(cur):
            todo.append((cur.value_type, level + 1))
        else:
            continue
        deepest = max(deepest, level)
    return deepest


def parse(data: bytes, max_depth: int = MAX_DEPTH) -> pa.Table | None:
    """JSON objects, one per line, as a table (None when pyarrow cannot do it exactly, or a
    line nests objects/arrays deeper than ``max_depth``, the line's object being level 1)."""
    try:
        table = pj.read_json(io.BytesIO(data), read_options=_READ)
        if _depth(pa.struct(list(table.schema))) > max_depth:
            return None  # the record-by-record decode reports it
        schema = pa.schema([f.with_type(_string_times(f.type)) for f in table.schema])
        if not schema.equals(table.schema):
            table = pj.read_json(io.BytesIO(data), read_options=_READ,
                                 parse_options=pj.ParseOptions(explicit_schema=schema))
    except (pa.ArrowException, UnicodeDecodeError, ValueError):
        return None
    return table if _exact(table) else None


def _rows_table(values: pa.Table, meta: Sequence[pa.Array]) -> pa.Table:
    """The value's fields then the ``_`` columns; a value field named like one is replaced
    (as ``dict.update`` does in ``waxflow.connectors.tabular.rows``)."""
    keep = [n for n in values.column_names if n not in META_COLUMNS]
    table = values.select(keep) if len(keep) != values.num_columns else values
    for name, column in zip(META_COLUMNS, meta, strict=True):
        table = table.append_column(name, column)
    return table


def _json_text(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


def _literal(text: str) -> bytes:
    """``text`` as a JSON string, escaped for use in a ``%`` format."""
    return _json_text(text).replace(b"%", b"%%")


def _keys(raw: list[bytes | None]) -> tuple[bytes, list[bytes], pa.Array] | None:
    """(format piece, its values per record, ``_key`` column) of STRING keys; None if one is
    not UTF-8 (a serde error: the record-by-record decode reports it)."""
    if None not in raw and _PLAIN_KEY.fullmatch(b"".join(raw)) is not None:  # type: ignore[arg-type]
        # printable ASCII without quote or backslash (a character class, so the whole
        # concatenation matches exactly when every key does): copied between quotes as is
        return b'"%s"', raw, pa.array(raw, pa.binary()).cast(pa.string())  # type: ignore[return-value]
    texts: list[str | None] = []
    pieces: list[bytes] = []
    for k in raw:
        if k is None:
            texts.append(None)
            pieces.append(b"null")
            continue
        try:
            text = k.decode("utf-8")
        except UnicodeDecodeError:
            return None
        texts.append(text)
        pieces.append(_json_text(text))
    return b"%s", pieces, pa.array(texts)


def encode(records: Sequence[RecordFields]) -> JsonBatch | None:
    """The batch as an Ion-text file and rows table, or None (see the module doc).

    Each value is proven to be exactly one JSON object, so it can be copied into its line
    as is: the values joined by newlines parse without error into one row per record, and
    each value starts with ``{`` and ends with ``}``. A parser that has just closed an
    object never accepts a ``{`` that continues the same document, so no document spans two
    values, and every value yields at least one row: equal counts leave one each."""
    if not records:
        return None
    values = [r[4] for r in records]
    if None in values or b"" in values:
        return None
    if [v for v in values if v[0] != 0x7B or v[-1] != 0x7D]:  # type: ignore[index]
        return None  # not provably one object: see above
    if max(map(len, values)) > PRECHECK_BYTES and any(  # type: ignore[arg-type]
            json_too_deep(v) for v in values if len(v) > PRECHECK_BYTES):  # type: ignore[arg-type]
        return None  # too deep for a serde (and maybe for pyarrow): see the module doc
    table = parse(b"\n".join(values) + b"\n")  # type: ignore[arg-type]  # no None left
    if table is None or table.num_rows != len(records):
        return None  # e.g. two objects in one value
    keys = _keys([r[3] for r in records])
    if keys is None:
        return None
    topics = [r[0] for r in records]
    partitions = [r[1] for r in records]
    offsets = [r[2] for r in records]
    stamps = [r[5] for r in records]
    headers = [r[6] for r in records]
    # one %-format per line; a field that is the same in every record is part of it
    fmt: list[bytes] = [b'{"topic":']
    columns: list[Sequence[object]] = []
    if topics.count(topics[0]) == len(topics):
        fmt.append(_literal(topics[0]))
    else:
        names = {t: _json_text(t) for t in set(topics)}
        fmt.append(b"%s")
        columns.append([names[t] for t in topics])
    fmt.append(b',"partition":%d,"offset":%d,"timestamp":')
    columns += [partitions, offsets]
    if None in stamps:
        fmt.append(b"%s")
        columns.append([b"null" if t is None else b"%d" % t for t in stamps])
    else:
        fmt.append(b"%d")
        columns.append(stamps)
    fmt += [b',"key":', keys[0], b',"headers":']
    columns.append(keys[1])
    if any(headers):
        fmt.append(b"%s")
        columns.append([json.dumps(headers_text(h), ensure_ascii=False).encode() if h
                        else b"{}" for h in headers])
    else:
        fmt.append(b"{}")
    fmt.append(b',"value":%s}\n')
    columns.append(values)
    line = b"".join(fmt)
    data = b"".join([line % fields for fields in zip(*columns, strict=True)])
    meta = [pa.array(topics, pa.string()), pa.array(partitions, pa.int64()),
            pa.array(offsets, pa.int64()), pa.array(stamps), keys[2]]
    return JsonBatch(data, _rows_table(table, meta), len(records))


def read_table(data: bytes, metadata: bool = True) -> pa.Table | None:
    """Rows table of a file written by :func:`encode` (None: decode it record by record)."""
    table = parse(data, MAX_DEPTH + 1)  # each value is a field of its line's object
    if table is None or table.num_rows == 0 or "value" not in table.column_names:
        return None
    value = table.column("value").combine_chunks()
    if not pa.types.is_struct(value.type):
        return None
    values = pa.Table.from_struct_array(value) if value.type.num_fields else table.select([])
    if not metadata:
        return values
    meta = []
    for name in _FIELDS:
        if name not in table.column_names:
            return None
        meta.append(table.column(name))
    if not (pa.types.is_string(meta[4].type) or pa.types.is_null(meta[4].type)):
        return None  # non-string keys: tabular.rows JSON-encodes them
    return _rows_table(values, meta)
