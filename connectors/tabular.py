"""Batch files as tables: ION → Arrow → Parquet / NDJSON, for warehouse loaders.

``rows(records)`` shapes each Kafka record into one row: the fields of its value when the
value is a map (else a ``value`` column), plus ``_topic``, ``_partition``, ``_offset``,
``_timestamp`` and ``_key`` so loads can deduplicate or MERGE on the record's coordinates.
Column types are inferred by pyarrow from the values (``schema`` overrides).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.storage import read_records

META_COLUMNS = ("_topic", "_partition", "_offset", "_timestamp", "_key")


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
    """The batch file at ``uri`` as an Arrow table."""
    data = list(rows(read_records(uri), metadata))
    if not data:
        return pa.Table.from_pylist([], schema=schema) if schema is not None else pa.table({})
    return pa.Table.from_pylist(data, schema=schema)


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
