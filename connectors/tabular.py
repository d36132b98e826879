"""Batch files as tables: ION → Arrow → Parquet / NDJSON, for warehouse loaders.

``rows(records)`` shapes each Kafka record into one row: the fields of its value when the
value is a map (else a ``value`` column), plus ``_topic``, ``_partition``, ``_offset``,
``_timestamp`` and ``_key`` so loads can deduplicate or MERGE on the record's coordinates.
Column types are inferred by pyarrow from the values of all rows (``schema`` overrides); a
field missing from a record is null in its row; the ``_`` columns come after the value's.
Batches stored by ``waxflow.connectors.jsonbatch`` become tables without decoding records in Python
(the table kept by the process that stored the batch, else one pyarrow parse of the file).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from waxflow.connectors import jsonbatch
from waxflow.connectors.jsonbatch import META_COLUMNS
from waxflow.connectors.storage import ION_BVM, local_path, parse_records, read_records, recalled

__all__ = ["META_COLUMNS", "rows", "to_ndjson", "to_parquet", "to_table"]


def rows(records: Iterable[dict[str, Any]], metadata: bool = True) -> Iterator[dict[str, Any]]:
    """One row per record (see module doc)."""
    for rec in records:
        value = rec.get("value")
        row = dict(value) if isinstance(value, dict) else {"value": value}
        if metadata:
            key = rec.get("key")
            row.update({"_topic": rec.get("topic"), "_partition": rec.get("partition"),
                        "_offset": rec.get("offset"), "_timestamp": rec.get("timestamp"),
                        "_key": key if isinstance(key, str | None) else json.dumps(key)})
        yield row


def to_table(uri: str, metadata: bool = True, schema: pa.Schema | None = None) -> pa.Table:
    """The batch file at ``uri`` as an Arrow table (the file is read, or downloaded, once)."""
    path = local_path(uri)
    records, table = recalled(path)
    if table is not None and schema is None:
        return table if metadata else table.drop_columns(list(META_COLUMNS))
    if records is None:
        data = path.read_bytes()
        if schema is None and data and not data.startswith(ION_BVM):
            table = jsonbatch.read_table(data, metadata)
            if table is not None:
                return table
        records = parse_records(data)
    items = list(rows(records, metadata))
    if not items:
        return pa.Table.from_pylist([], schema=schema) if schema is not None else pa.table({})
    if schema is not None:
        return pa.Table.from_pylist(items, schema=schema)
    table = pa.Table.from_struct_array(pa.array(items))
    if not metadata:
        return table
    # the ``_`` columns last, also when a later record brings new value fields
    return table.select([n for n in table.column_names if n not in META_COLUMNS]
                        + list(META_COLUMNS))


def to_parquet(uri: str, dest: Path, metadata: bool = True) -> Path:
    """Write the batch file as Parquet at ``dest``; returns ``dest``."""
    pq.write_table(to_table(uri, metadata), dest)
    return dest


def to_ndjson(uri: str, dest: Path, metadata: bool = True) -> Path:
    """Write the batch file as newline-delimited JSON at ``dest``; returns ``dest``."""
    with dest.open("w", encoding="utf-8") as fp:
        for row in rows(read_records(uri), metadata):
            fp.write(json.dumps(row, ensure_ascii=False, default=str))
            fp.write("\n")
    return dest
