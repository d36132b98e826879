"""What the warehouse loaders (``duckdb.*``, ``bigquery.*``, ``snowflake.*``) share.

:class:`WarehouseLoad`, the base of the three ``Load`` tasks: the ``from``, ``mode``,
``mergeKeys`` and ``onReject`` properties, reading a stored batch as an Arrow table with the
records that do not fit it set aside (``waxflow.connectors.tabular.split_table``), an empty
batch, and the last record per merge key. Also the MERGE statement and JSON-friendly query
results. Loaders only *read* the batch file, so a retried load re-reads the same stored batch
and never re-consumes Kafka. Error text goes through :func:`waxflow.expressions.mask` (one line,
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
from waxflow.connectors.tabular import OnReject, Split, on_reject_doc, settle_rejects, split_table
from waxflow.tasks import RunContext, TaskBase, TaskFailure

__all__ = ["DEFAULT_MERGE_KEYS", "WarehouseLoad", "WarehouseQuery", "last_per_key",
           "merge_statement", "plain", "read_split"]

#: A record's Kafka coordinates: unique per record, so MERGE on them makes a replay harmless.
DEFAULT_MERGE_KEYS = ("_topic", "_partition", "_offset")


def read_split(who: str, uri: str, *, type_nulls: bool = True) -> Split:
    """The batch file at ``uri`` as an Arrow table (``waxflow.connectors.tabular`` rows, with the
    ``_topic``/``_partition``/``_offset``/``_timestamp``/``_key`` columns) and the records
    that do not fit it. With ``type_nulls``, columns whose values are all null are typed
    string (a loadable type). Raises :class:`TaskFailure`."""
    try:
        split = split_table(uri)
    except StorageError as exc:
        raise TaskFailure(f"{who}: {exc}") from None
    except (pa.ArrowException, OverflowError) as exc:
        raise TaskFailure(f"{who}: {uri} does not fit one table: {exc}") from None
    if type_nulls:
        table = split.table
        for i, field in enumerate(table.schema):
            if pa.types.is_null(field.type):
                table = table.set_column(i, field.name, pa.nulls(table.num_rows, pa.string()))
        split.table = table
    return split


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
    ``mode`` (``MERGE`` or the loader's plain mode), ``mergeKeys`` and ``onReject``.

    A loader reads the batch with :meth:`_split`, may set aside more records its table
    cannot take, then settles the rejects (:meth:`_settle`, before anything is loaded) and
    keeps the last record per key (:meth:`_keyed`)."""

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

    onReject: OnReject = Field(default="REJECTS_FILE",
                               description=on_reject_doc())

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

    def _split(self, ctx: RunContext, uri: str, *, fail_on_empty: bool = False
               ) -> Split | None:
        """The batch at ``uri`` (the table of the records that fit it, and the others), or
        None when it holds no records (logged; a :class:`TaskFailure` with
        ``fail_on_empty``). MERGE checks the merge keys are columns."""
        who = self._who()
        split = read_split(who, uri, type_nulls=self.TYPE_NULL_COLUMNS)
        if split.total == 0:
            if fail_on_empty:
                raise TaskFailure(f"{who}: {uri} holds no records (failOnEmpty is true)")
            ctx.log("INFO", f"{uri} holds no records: nothing to load")
            return None
        if self.mode == "MERGE" and split.table.num_rows:
            _check_keys(who, split.table, self.mergeKeys)
        return split

    def _settle(self, ctx: RunContext, uri: str, split: Split) -> dict[str, Any]:
        """The ``rejected``/``rejectsUri`` outputs: the rejects stored next to the batch file,
        or (``onReject: FAIL``) a :class:`TaskFailure`. Call it before loading anything."""
        return settle_rejects(ctx, split, who=self._who(), uri=uri, task_id=self.id,
                              on_reject=self.onReject)

    def _keyed(self, table: pa.Table) -> pa.Table:
        """MERGE with :attr:`KEEP_LAST_PER_KEY`: the last record per key; else ``table``."""
        if self.mode == "MERGE" and self.KEEP_LAST_PER_KEY and table.num_rows:
            return last_per_key(self._who(), table, self.mergeKeys)
        return table

    def _read(self, ctx: RunContext, uri: str, *, fail_on_empty: bool = False
              ) -> tuple[pa.Table | None, dict[str, Any]]:
        """(the batch at ``uri`` ready to load, or None when nothing is to be loaded; the
        ``rejected``/``rejectsUri`` outputs), for loaders without checks of their own:
        :meth:`_split`, :meth:`_settle`, :meth:`_keyed`."""
        split = self._split(ctx, uri, fail_on_empty=fail_on_empty)
        if split is None:
            return None, {"rejected": 0, "rejectsUri": None}
        out = self._settle(ctx, uri, split)
        table = self._keyed(split.table)
        return (table if table.num_rows else None), out


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
