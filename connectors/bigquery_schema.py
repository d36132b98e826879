"""BigQuery table schemas for stored batches (given as ``schema`` or inferred from Arrow) and
the load files written from them.

:func:`shape` returns the batch as an Arrow table whose columns match a BigQuery schema, and
:func:`write_file` writes it as Parquet or NDJSON, so the file loads into a table created
with that schema.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from google.cloud.bigquery import SchemaField
from pydantic import BaseModel, ConfigDict, Field

from waxflow.tasks import TaskFailure

__all__ = ["BqField", "arrow_type", "infer_schema", "shape", "write_file"]

_ALIASES = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN", "STRUCT": "RECORD"}
_SCALARS: dict[str, Any] = {
    "STRING": pa.string(), "BYTES": pa.binary(), "INTEGER": pa.int64(), "FLOAT": pa.float64(),
    "NUMERIC": pa.decimal128(38, 9), "BIGNUMERIC": pa.decimal256(76, 38),
    "BOOLEAN": pa.bool_(), "TIMESTAMP": pa.timestamp("us", tz="UTC"), "DATE": pa.date32(),
    "TIME": pa.time64("us"), "DATETIME": pa.timestamp("us"), "JSON": pa.string(),
    "GEOGRAPHY": pa.string(),
}
TIME_TYPES = frozenset({"TIMESTAMP", "DATE", "DATETIME"})


class BqField(BaseModel):
    """One column of a ``schema``: ``name``, ``type`` (BigQuery type name), ``mode``
    (NULLABLE, REQUIRED or REPEATED), ``fields`` for RECORD, ``description``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,299}$",
                      description="column name: letters, digits and `_`, not starting with a "
                                  "digit")
    type: str = Field(pattern=r"(?i)^(STRING|BYTES|INTEGER|INT64|FLOAT|FLOAT64|NUMERIC|"
                              r"BIGNUMERIC|BOOLEAN|BOOL|TIMESTAMP|DATE|TIME|DATETIME|JSON|"
                              r"GEOGRAPHY|RECORD|STRUCT)$",
                      description="BigQuery type name (any case; `INT64`, `FLOAT64`, `BOOL` "
                                  "and `STRUCT` are aliases)")
    mode: Literal["NULLABLE", "REQUIRED", "REPEATED"] = Field(
        default="NULLABLE", description="whether the column may be null, must be set, or "
                                        "holds a list")
    fields: list[BqField] = Field(default_factory=list,
                                  description="sub-columns of a `RECORD` column")
    description: str | None = Field(default=None,
                                    description="column description stored with the table")

    def canonical_type(self) -> str:
        upper = self.type.upper()
        return _ALIASES.get(upper, upper)

    def to_api(self) -> SchemaField:
        extra: dict[str, Any] = {"description": self.description} if self.description else {}
        return SchemaField(self.name, self.canonical_type(), mode=self.mode,
                           fields=[f.to_api() for f in self.fields], **extra)


def arrow_type(field: SchemaField) -> Any:
    """The Arrow type a column of BigQuery type ``field`` is written as."""
    kind = _ALIASES.get(field.field_type.upper(), field.field_type.upper())
    if kind == "RECORD":
        inner: Any = pa.struct([(f.name, arrow_type(f)) for f in field.fields])
    else:
        inner = _SCALARS[kind]
    return pa.list_(inner) if field.mode == "REPEATED" else inner


def _from_arrow(name: str, typ: Any, mode: str = "NULLABLE") -> SchemaField:
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        if mode == "REPEATED":
            raise TaskFailure(f"column {name}: lists of lists cannot be loaded; give a schema")
        return _from_arrow(name, typ.value_type, "REPEATED")
    if pa.types.is_struct(typ):
        fields = [_from_arrow(typ.field(i).name, typ.field(i).type) for i in range(typ.num_fields)]
        return SchemaField(name, "RECORD", mode=mode, fields=fields)
    checks = [(pa.types.is_integer, "INTEGER"), (pa.types.is_floating, "FLOAT"),
              (pa.types.is_boolean, "BOOLEAN"), (pa.types.is_string, "STRING"),
              (pa.types.is_large_string, "STRING"), (pa.types.is_null, "STRING"),
              (pa.types.is_binary, "BYTES"), (pa.types.is_date, "DATE"),
              (pa.types.is_time, "TIME"), (pa.types.is_decimal128, "NUMERIC"),
              (pa.types.is_decimal256, "BIGNUMERIC")]
    if pa.types.is_timestamp(typ):
        return SchemaField(name, "TIMESTAMP" if typ.tz else "DATETIME", mode=mode)
    for check, kind in checks:
        if check(typ):
            return SchemaField(name, kind, mode=mode)
    raise TaskFailure(f"column {name}: Arrow type {typ} has no BigQuery type; give a schema")


def infer_schema(table: pa.Table) -> list[SchemaField]:
    """A BigQuery schema for ``table`` from its Arrow types (what ``autodetect`` means here)."""
    return [_from_arrow(f.name, f.type) for f in table.schema]


def _timestamps(values: list[Any], tz: str | None) -> list[dt.datetime | None]:
    """ISO-8601 strings (any offset, or none = UTC) or epoch milliseconds as datetimes."""
    out: list[dt.datetime | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        if isinstance(v, int | float):
            ts = dt.datetime.fromtimestamp(v / 1000, dt.UTC)
        elif isinstance(v, dt.datetime):
            ts = v if v.tzinfo else v.replace(tzinfo=dt.UTC)
        else:
            ts = dt.datetime.fromisoformat(str(v))
            ts = ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)
        out.append(ts.astimezone(dt.UTC) if tz else ts.astimezone(dt.UTC).replace(tzinfo=None))
    return out


def _cast(column: Any, field: SchemaField) -> Any:
    target = arrow_type(field)
    kind = _ALIASES.get(field.field_type.upper(), field.field_type.upper())
    if column.type == target:
        return column
    if pa.types.is_timestamp(target) and not pa.types.is_timestamp(column.type):
        return pa.array(_timestamps(column.to_pylist(), target.tz), type=target)
    if kind == "JSON" or (kind == "STRING" and pa.types.is_nested(column.type)):
        values = column.to_pylist()
        return pa.array([None if v is None else json.dumps(v, default=str) for v in values],
                        type=pa.string())
    return column.cast(target)


def shape(table: pa.Table, schema: list[SchemaField], *, drop_unknown: bool) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types: missing columns
    are nulls, unknown ones dropped when ``drop_unknown`` else a :class:`TaskFailure`.
    Integers cast to TIMESTAMP/DATETIME are read as epoch milliseconds (Kafka's unit),
    strings as ISO-8601 (no offset = UTC)."""
    names = {f.name for f in schema}
    unknown = [c for c in table.column_names if c not in names]
    if unknown and not drop_unknown:
        raise TaskFailure(f"batch column(s) {', '.join(unknown)} are not in the schema "
                          "(add them, or set ignoreUnknownValues: true to drop them)")
    arrays, fields = [], []
    for field in schema:
        target = arrow_type(field)
        if field.name in table.column_names:
            try:
                arrays.append(_cast(table.column(field.name), field))
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
                raise TaskFailure(f"column {field.name} cannot be read as "
                                  f"{field.field_type}: {exc}") from None
        else:
            arrays.append(pa.nulls(table.num_rows, target))
        fields.append(pa.field(field.name, target, nullable=field.mode != "REQUIRED"))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def write_file(table: pa.Table, directory: Path, fmt: str) -> Path:
    """Write ``table`` as ``batch.parquet`` or ``batch.ndjson`` (BigQuery's JSON forms:
    ISO-8601 times, base64 bytes, decimals as strings) in ``directory``; return its path."""
    if fmt == "PARQUET":
        path = directory / "batch.parquet"
        pq.write_table(table, path)
        return path
    path = directory / "batch.ndjson"
    with path.open("w", encoding="utf-8") as fp:
        for batch in table.to_batches(max_chunksize=10_000):
            for row in batch.to_pylist():
                fp.write(json.dumps(row, ensure_ascii=False, default=_json_default))
                fp.write("\n")
    return path
