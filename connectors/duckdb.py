"""DuckDB, the embedded default warehouse: ``duckdb.Load`` and ``duckdb.Query``.

``duckdb.Load`` reads a batch file from internal storage (``from``, usually
``{{ trigger.uri }}``) and never consumes Kafka itself, so a retried load re-reads the same
stored batch. Each load runs in one DuckDB transaction: a batch lands whole or not at all.

Concurrency: DuckDB lets one process open a database file for writing. Each task run opens
its own connection and closes it when done (the file is free between runs), and task runs on
the same database file are serialized within a process by a lock per resolved path. Another
process holding the file fails the attempt with DuckDB's lock error; a ``retry`` policy
rides over it.

Database: ``database`` (rendered), else ``$WAXFLOW_DUCKDB``, else
``.waxflow/warehouse.duckdb``; parent directories are created.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar, Literal

import duckdb
import pyarrow as pa
from pydantic import Field

from waxflow.connectors.warehouse import WarehouseLoad, WarehouseQuery
from waxflow.expressions import mask
from waxflow.tasks import RunContext, TaskFailure, task_type

__all__ = ["Load", "Query", "connect", "database_path", "quote_ident"]

DEFAULT_DATABASE = ".waxflow/warehouse.duckdb"
_BATCH = "__waxflow_batch"
_KEYED = "__waxflow_keyed_batch"
_ORDINAL = "__waxflow_ordinal"

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def database_path(database: str | None) -> str:
    """The database to open: ``database``, ``$WAXFLOW_DUCKDB`` or the default, resolved to an
    absolute path (``:memory:`` is kept as is)."""
    name = database or os.environ.get("WAXFLOW_DUCKDB") or DEFAULT_DATABASE
    if name == ":memory:":
        return name
    return str(Path(name.removeprefix("file://")).expanduser().resolve())


def _lock_for(path: str) -> threading.Lock:
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(path, threading.Lock())


@contextmanager
def connect(database: str | None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to ``database`` held under the per-path lock, closed on exit."""
    path = database_path(database)
    with _lock_for(path):
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(path)
        try:
            yield con
        finally:
            con.close()


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _quote_table(table: str) -> tuple[str | None, str]:
    """``[schema.]table`` (parts may already be double-quoted) as (quoted schema, quoted
    qualified name)."""
    parts: list[str] = []
    buf, quoted, i = "", False, 0
    while i < len(table):
        ch = table[i]
        if ch == '"':
            if quoted and table[i + 1:i + 2] == '"':
                buf += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(buf)
            buf = ""
        else:
            buf += ch
        i += 1
    parts.append(buf)
    if quoted or not all(parts) or len(parts) > 3:
        raise TaskFailure(f"`table` {table!r} is not a valid [database.][schema.]table name")
    schema = ".".join(quote_ident(p) for p in parts[:-1]) if len(parts) > 1 else None
    return schema, ".".join(quote_ident(p) for p in parts)


def _count(con: duckdb.DuckDBPyConnection) -> int:
    """The row count a DML statement just returned."""
    row = con.fetchone()
    return int(row[0]) if row else 0


def _table_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str] | None:
    """The table's column names (lower case), or None when it does not exist."""
    try:
        cursor = con.execute(f"SELECT * FROM {table} LIMIT 0")
    except duckdb.CatalogException:
        return None
    return {str(d[0]).lower() for d in cursor.description or []}


def _shape_table(con: duckdb.DuckDBPyConnection, load: Load, *, schema: str | None, table: str,
                 batch: pa.Table) -> list[str]:
    """Create the table or add columns as ``load`` allows; return the batch columns to insert.

    Columns that are NULL in every row (Arrow type ``null``) carry no type: they never create
    a column (it would be typed INTEGER and reject later strings) and are left out of the
    insert when the table lacks them.
    """
    typed = [f.name for f in batch.schema if not pa.types.is_null(f.type)]
    existing = _table_columns(con, table)
    if existing is None:
        if not load.createTable:
            return list(batch.column_names)  # the INSERT fails with DuckDB's message
        if schema is not None:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        cols = ", ".join(quote_ident(c) for c in typed)
        con.execute(f"CREATE TABLE {table} AS SELECT {cols} FROM {_BATCH} LIMIT 0")
        existing = {c.lower() for c in typed}
    elif load.addColumns:
        types = {str(r[0]): str(r[1])
                 for r in con.execute(f"DESCRIBE SELECT * FROM {_BATCH}").fetchall()}
        for name in typed:
            if name.lower() not in existing:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(name)} {types[name]}")
                existing.add(name.lower())
    return [c for c in batch.column_names if c.lower() in existing or c in typed]


@task_type("duckdb.Load")
class Load(WarehouseLoad):
    """Load a stored batch file into a DuckDB table.

    Each record becomes one row (``waxflow.connectors.tabular.rows``: the value's fields plus
    ``_topic``, ``_partition``, ``_offset``, ``_timestamp``, ``_key``); columns are matched by
    name, so a batch may omit columns of the table (NULL). ``createTable`` creates a missing
    table (and schema) from the batch's Arrow schema; ``addColumns`` adds the batch's new
    fields to an existing table (a value that does not fit a column's type fails the load).
    ``mode``:

    * ``APPEND`` — insert every row; a replayed batch is inserted again.
    * ``MERGE`` — replace rows whose ``mergeKeys`` (default the record's Kafka coordinates)
      match a row of the batch (NULL matches NULL), then insert; within a batch the last
      record per key wins. Loading the same batch twice leaves one copy.

    The load (DDL included) is one transaction: the batch lands whole or not at all.
    Guarantees: the stored file is only read (a retry re-reads it, never re-consumes); an
    empty batch loads nothing and succeeds. A DuckDB error fails the task with DuckDB's
    message. Outputs ``rows`` (rows written) and, for MERGE, ``replaced`` (existing rows
    replaced), plus ``table`` and ``database``.
    """

    # all-null columns stay untyped (they never create a column); MERGE dedupes in SQL
    TYPE_NULL_COLUMNS: ClassVar[bool] = False
    KEEP_LAST_PER_KEY: ClassVar[bool] = False

    type: Literal["duckdb.Load"] = Field(description="the task type")
    database: str | None = Field(
        default=None,
        description="DuckDB database file (rendered); default `$WAXFLOW_DUCKDB`, else "
                    "`.waxflow/warehouse.duckdb`; `:memory:` for an in-memory database")
    table: str = Field(
        min_length=1,
        description="target table as `[database.][schema.]table` (rendered; parts may be "
                    "double-quoted)")
    createTable: bool = Field(
        default=True,
        description="create a missing table (and schema) from the batch's Arrow types")
    addColumns: bool = Field(
        default=True,
        description="add the batch's new (typed) columns to an existing table")
    mode: Literal["APPEND", "MERGE"] = Field(
        default="APPEND",
        description="`APPEND` inserts every row (a replayed batch is inserted again); "
                    "`MERGE` replaces the rows matching `mergeKeys`, then inserts")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = self._who()
        uri = str(ctx.render(self.from_))
        table_name = str(ctx.render(self.table))
        database = str(ctx.render(self.database)) if self.database else None
        schema, table = _quote_table(table_name)
        out: dict[str, Any] = {"rows": 0, "table": table_name,
                               "database": database_path(database)}
        if self.mode == "MERGE":
            out["replaced"] = 0
        batch = self._read(ctx, uri)
        if batch is None:
            return out
        try:
            with connect(database) as con:
                con.register(_BATCH, batch)
                con.begin()
                try:
                    columns = _shape_table(con, self, schema=schema, table=table, batch=batch)
                    if self.mode == "MERGE":
                        out["replaced"], out["rows"] = self._merge(con, table, batch, columns)
                    else:
                        cols = ", ".join(quote_ident(c) for c in columns)
                        out["rows"] = _count(con.execute(
                            f"INSERT INTO {table} BY NAME SELECT {cols} FROM {_BATCH}"))
                    con.commit()
                except BaseException:
                    with suppress(duckdb.Error):
                        con.rollback()
                    raise
        except duckdb.Error as exc:
            raise TaskFailure(f"{who}: {mask(str(exc))}") from None
        return out

    def _merge(self, con: duckdb.DuckDBPyConnection, table: str, batch: pa.Table,
               columns: list[str]) -> tuple[int, int]:
        """Delete the table's rows matching the batch's keys, then insert the batch's last
        record per key; return (rows deleted, rows inserted)."""
        ordinal = pa.array(range(batch.num_rows), type=pa.int64())
        con.register(_KEYED, batch.append_column(_ORDINAL, ordinal))
        keys = [quote_ident(k) for k in self.mergeKeys]
        match = " AND ".join(f"t.{k} IS NOT DISTINCT FROM b.{k}" for k in keys)
        deleted = _count(con.execute(f"DELETE FROM {table} AS t USING {_KEYED} AS b "
                                     f"WHERE {match}"))
        cols = ", ".join(quote_ident(c) for c in columns)
        inserted = _count(con.execute(
            f"INSERT INTO {table} BY NAME SELECT {cols} FROM {_KEYED} "
            f"QUALIFY row_number() OVER (PARTITION BY {', '.join(keys)} "
            f"ORDER BY {_ORDINAL} DESC) = 1"))
        return deleted, inserted


@task_type("duckdb.Query")
class Query(WarehouseQuery):
    """Run SQL (rendered; several statements allowed) on a DuckDB database.

    ``fetch``: ``NONE`` (default) fetches nothing and outputs nothing; ``ONE`` outputs ``row``
    (the first row of the last statement as a map, or null) and ``size`` (0 or 1); ``ALL``
    outputs ``rows`` (list of maps) and ``size``. Values are JSON-friendly, as for the other
    warehouses: dates and times as ISO-8601 strings, decimals as numbers (integers when
    integral), bytes as base64, UUIDs as strings. The SQL runs in DuckDB's autocommit mode,
    each statement its own transaction unless the SQL opens one. A DuckDB error fails the
    task with DuckDB's message (on one line).
    """

    type: Literal["duckdb.Query"] = Field(description="the task type")
    sql: str = Field(min_length=1, description="SQL to run (rendered); several statements "
                                               "separated by `;` are allowed")
    database: str | None = Field(
        default=None,
        description="DuckDB database file (rendered); default `$WAXFLOW_DUCKDB`, else "
                    "`.waxflow/warehouse.duckdb`")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        sql = str(ctx.render(self.sql))
        database = str(ctx.render(self.database)) if self.database else None
        try:
            with connect(database) as con:
                return self._fetched_from(con.execute(sql))
        except duckdb.Error as exc:
            raise TaskFailure(f"duckdb.Query {self.id}: {mask(str(exc))}") from None
