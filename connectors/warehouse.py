"""What the warehouse loaders (``duckdb.*``, ``bigquery.*``, ``snowflake.*``) share.

:class:`WarehouseLoad`, the base of the three ``Load`` tasks: the ``from``, ``mode`` and
``mergeKeys`` properties, reading a stored batch as an Arrow table, an empty batch, and the
last record per merge key. Also the MERGE statement and JSON-friendly query results. Loaders
only *read* the batch file, so a retried load re-reads the same stored batch and never
re-consumes Kafka. Error text goes through :func:`waxflow.expressions.mask` (one line,
secrets masked).
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import uuid
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from waxflow.connectors.storage import StorageError
from waxflow.connectors.tabular import to_table
from waxflow.tasks import RunContext, TaskBase, TaskFailure

__all__ = ["DEFAULT_MERGE_KEYS", "WarehouseLoad", "WarehouseQuery", "last_per_key",
           "merge_statement", "plain", "read_batch"]

#: A record's Kafka coordinates: unique per record, so MERGE on them makes a replay harmless.
DEFAULT_MERGE_KEYS = ("_topic", "_partition", "_offset")


def read_batch(who: str, uri: str, *, type_nulls: bool = True) -> pa.Table:
    """The batch file at ``uri`` as an Arrow table (``waxflow.connectors.tabular`` rows, with the
    ``_topic``/``_partition``/``_offset``/``_timestamp``/``_key`` columns). With
    ``type_nulls``, columns whose values are all null are typed string (a loadable type).
    Raises :class:`TaskFailure`."""
    try:
        table = to_table(uri)
    except StorageError as exc:
        raise TaskFailure(f"{who}: {exc}") from None
    except pa.ArrowException as exc:
        raise TaskFailure(f"{who}: {uri} does not fit one table: {exc}") from None
    if type_nulls:
        for i, field in enumerate(table.schema):
            if pa.types.is_null(field.type):
                table = table.set_column(i, field.name, pa.nulls(table.num_rows, pa.string()))
    return table


def _check_keys(who: str, table: pa.Table, keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        raise TaskFailure(f"{who}: merge key(s) {', '.join(missing)} not in the batch "
                          f"(columns: {', '.join(table.column_names)})")


def last_per_key(who: str, table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """``table`` with one row per distinct ``keys`` tuple, the last one (Kafka order) winning;
    row order is otherwise kept. Raises :class:`TaskFailure` if a key column is missing."""
    _check_keys(who, table, keys)
    columns = [table.column(k).to_pylist() for k in keys]
    last: dict[tuple[Any, ...], int] = {}
    for i, key in enumerate(zip(*columns, strict=True)):
        last[key] = i
    if len(last) == table.num_rows:
        return table
    return table.take(pa.array(sorted(last.values()), type=pa.int64()))


class WarehouseLoad(TaskBase):
    """Properties and steps every warehouse ``Load`` task shares: ``from`` (the stored batch),
    ``mode`` (``MERGE`` or the loader's plain mode) and ``mergeKeys``."""

    model_config = {**TaskBase.model_config, "populate_by_name": True}
    #: type batch columns that are null in every row as strings (else they stay untyped)
    TYPE_NULL_COLUMNS: ClassVar[bool] = True
    #: MERGE: keep the last record per key in Python (else the loader's SQL does it)
    KEEP_LAST_PER_KEY: ClassVar[bool] = True
    #: merge keys name columns case-insensitively (they must still differ once upper-cased)
    KEYS_IGNORE_CASE: ClassVar[bool] = False

    from_: str = Field(
        alias="from",
        description="internal-storage URI of the batch file to load (rendered), usually "
                    "`{{ trigger.uri }}`; the file is only read, so a retry re-reads it")
    mode: str  # each loader narrows it: MERGE, or its plain mode (APPEND or LOAD)
    mergeKeys: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MERGE_KEYS), min_length=1,
        description="columns that identify a row for `mode: MERGE` (NULL matches NULL; the "
                    "last record per key in a batch wins); default the record's Kafka "
                    "coordinates `_topic`, `_partition`, `_offset`")

    @field_validator("mergeKeys")
    @classmethod
    def _distinct_keys(cls, value: list[str]) -> list[str]:
        folded = {v.upper() for v in value} if cls.KEYS_IGNORE_CASE else set(value)
        if len(folded) != len(value):
            raise ValueError("merge keys must be distinct")
        return value

    def _who(self) -> str:
        """How messages name this task: ``<type> <id>``."""
        return f"{self.TYPE} {self.id}"

    def _read(self, ctx: RunContext, uri: str, *, fail_on_empty: bool = False
              ) -> pa.Table | None:
        """The batch at ``uri`` ready to load, or None when it holds no records (logged;
        a :class:`TaskFailure` with ``fail_on_empty``). MERGE checks the merge keys are
        columns and, with :attr:`KEEP_LAST_PER_KEY`, keeps the last record per key."""
        who = self._who()
        batch = read_batch(who, uri, type_nulls=self.TYPE_NULL_COLUMNS)
        if batch.num_rows == 0:
            if fail_on_empty:
                raise TaskFailure(f"{who}: {uri} holds no records (failOnEmpty is true)")
            ctx.log("INFO", f"{uri} holds no records: nothing to load")
            return None
        if self.mode == "MERGE":
            if self.KEEP_LAST_PER_KEY:
                return last_per_key(who, batch, self.mergeKeys)
            _check_keys(who, batch, self.mergeKeys)
        return batch


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


class WarehouseQuery(TaskBase):
    """What every warehouse ``Query`` task shares: ``fetch`` and the outputs it gives."""

    fetch: Literal["NONE", "ONE", "ALL"] = Field(
        default="NONE",
        description="rows to output (from the last statement): `NONE`, `ONE` (`row`, `size`) "
                    "or `ALL` (`rows`, `size`)")

    def _fetched(self, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """The ``row``/``rows`` and ``size`` outputs for ``fetch`` (none for ``NONE``) from
        the result rows as maps, values made :func:`plain`; ``ONE`` reads only the first."""
        if self.fetch == "NONE":
            return {}
        maps = [plain(r) for r in itertools.islice(rows, 1 if self.fetch == "ONE" else None)]
        if self.fetch == "ONE":
            return {"row": maps[0] if maps else None, "size": len(maps)}
        return {"rows": maps, "size": len(maps)}

    def _fetched_from(self, cursor: Any) -> dict[str, Any]:
        """:meth:`_fetched` for a DB-API cursor that just ran the SQL."""
        names = [d[0] for d in cursor.description] if cursor.description else []
        if self.fetch == "NONE" or not names:
            raw: list[Any] = []
        else:
            raw = [cursor.fetchone()] if self.fetch == "ONE" else cursor.fetchall()
        return self._fetched(dict(zip(names, r, strict=True)) for r in raw if r is not None)


def merge_statement(target: str, source: str, *, columns: Sequence[str], keys: Sequence[str],
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
