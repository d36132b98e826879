"""What the cloud-warehouse loaders (``bigquery.*``, ``snowflake.*``) share.

Reading a stored batch as an Arrow table, keeping the last record per merge key, one-line
error text with secrets masked, and JSON-friendly query results. Loaders only *read* the
batch file, so a retried load re-reads the same stored batch and never re-consumes Kafka.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa

from waxflow.connectors.storage import StorageError
from waxflow.connectors.tabular import to_table
from waxflow.tasks import TaskFailure

__all__ = ["DEFAULT_MERGE_KEYS", "last_per_key", "one_line", "plain", "read_batch"]

#: A record's Kafka coordinates: unique per record, so MERGE on them makes a replay harmless.
DEFAULT_MERGE_KEYS = ("_topic", "_partition", "_offset")

_LIMIT = 600


def read_batch(who: str, uri: str) -> pa.Table:
    """The batch file at ``uri`` as an Arrow table (``waxflow.connectors.tabular`` rows, with the
    ``_topic``/``_partition``/``_offset``/``_timestamp``/``_key`` columns). Columns whose
    values are all null are typed string (a loadable type). Raises :class:`TaskFailure`."""
    try:
        table = to_table(uri)
    except StorageError as exc:
        raise TaskFailure(f"{who}: {exc}") from None
    except pa.ArrowException as exc:
        raise TaskFailure(f"{who}: {uri} does not fit one table: {exc}") from None
    for i, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(i, field.name, pa.nulls(table.num_rows, pa.string()))
    return table


def last_per_key(who: str, table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """``table`` with one row per distinct ``keys`` tuple, the last one (Kafka order) winning;
    row order is otherwise kept. Raises :class:`TaskFailure` if a key column is missing."""
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        raise TaskFailure(f"{who}: merge key(s) {', '.join(missing)} not in the batch "
                          f"(columns: {', '.join(table.column_names)})")
    columns = [table.column(k).to_pylist() for k in keys]
    last: dict[tuple[Any, ...], int] = {}
    for i, key in enumerate(zip(*columns, strict=True)):
        last[key] = i
    if len(last) == table.num_rows:
        return table
    return table.take(pa.array(sorted(last.values()), type=pa.int64()))


def one_line(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` on one line, at most 600 characters, each secret (3+ chars) masked."""
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, "***").replace(repr(secret)[1:-1], "***")
    text = " ".join(text.split())
    return text if len(text) <= _LIMIT else text[:_LIMIT - 3] + "..."


def plain(value: Any) -> Any:
    """A query result value as a JSON-friendly value: ISO-8601 strings for dates and times,
    floats for decimals (ints when integral), base64 for bytes, strings for UUIDs."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        integral = value.is_finite() and value == value.to_integral_value()
        return int(value) if integral else float(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def merge_statement(target: str, source: str, columns: Sequence[str], keys: Sequence[str],
                    quote: Callable[[str], str], target_in_set: bool = False) -> str:
    """MERGE ``source`` into ``target`` on ``keys`` (NULL matches NULL): matched rows get
    every other column updated, the rest are inserted. ``target``/``source`` come quoted;
    ``target_in_set`` writes ``T.col = ...`` in UPDATE SET (Snowflake) instead of ``col``."""
    q = quote
    on = " AND ".join(f"(T.{q(k)} = S.{q(k)} OR (T.{q(k)} IS NULL AND S.{q(k)} IS NULL))"
                      for k in keys)
    prefix = "T." if target_in_set else ""
    others = [c for c in columns if c not in keys]
    update = ("WHEN MATCHED THEN UPDATE SET "
              + ", ".join(f"{prefix}{q(c)} = S.{q(c)}" for c in others)) if others else ""
    cols = ", ".join(q(c) for c in columns)
    values = ", ".join(f"S.{q(c)}" for c in columns)
    return (f"MERGE INTO {target} T USING {source} S ON {on} {update} "
            f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})")
