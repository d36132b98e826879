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

Threads: a load runs DuckDB on :data:`LOAD_THREADS` (one) thread. DuckDB's parallel insert
into a database file took about twice the CPU of a one-thread insert (the bench's records,
200k: 0.75 s vs 0.37 s; 1M: 2.9 s vs 1.8 s) and was no faster on two cores; in a micro-batch
flow that CPU is the Kafka consumer's (``bench/profile_microbatch.py --components``).
``duckdb.Query`` keeps DuckDB's default, a thread per core: its SQL is the user's.
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

from waxflow.connectors.tabular import OnReject, on_reject_doc
from waxflow.connectors.warehouse import WarehouseLoad, WarehouseQuery
from waxflow.expressions import mask
from waxflow.tasks import RunContext, TaskFailure, task_type

__all__ = ["LOAD_THREADS", "Load", "Query", "connect", "database_path", "quote_ident"]

DEFAULT_DATABASE = ".waxflow/warehouse.duckdb"
_BATCH = "__waxflow_batch"
_KEYED = "__waxflow_keyed_batch"
_ORDINAL = "__waxflow_ordinal"

#: DuckDB threads of a ``duckdb.Load`` (see the module doc)
LOAD_THREADS = 1

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
def connect(database: str | None, *, threads: int | None = None
            ) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to ``database`` held under the per-path lock, closed on exit; DuckDB
    runs its queries on ``threads`` threads (None: DuckDB's default, one per core)."""
    path = database_path(database)
    with _lock_for(path):
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(path, config={} if threads is None else {"threads": threads})
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


def _types(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str] | None:
    """The column types of a table or registered batch by column name, or None when there
    is no such table."""
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    except duckdb.CatalogException:
        return None
    return {str(r[0]): str(r[1]) for r in described}


def _shape_table(con: duckdb.DuckDBPyConnection, load: Load, *, schema: str | None, table: str,
                 batch: pa.Table) -> tuple[list[str], dict[str, str]]:
    """Create the table or add columns as ``load`` allows; return the batch columns to insert
    and, for each of them the table already had, (lower-case name →) its type.

    Columns that are NULL in every row (Arrow type ``null``) carry no type: they never create
    a column (it would be typed INTEGER and reject later strings) and are left out of the
    insert when the table lacks them.
    """
    typed = [f.name for f in batch.schema if not pa.types.is_null(f.type)]
    found = _types(con, table)
    before = {} if found is None else {name.lower(): kind for name, kind in found.items()}
    existing = set(before)
    if found is None:
        if not load.createTable:
            return list(batch.column_names), {}  # the INSERT fails with DuckDB's message
        if schema is not None:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        cols = ", ".join(quote_ident(c) for c in typed)
        con.execute(f"CREATE TABLE {table} AS SELECT {cols} FROM {_BATCH} LIMIT 0")
        existing = {c.lower() for c in typed}
    elif load.addColumns:
        types = _types(con, _BATCH) or {}
        for name in typed:
            if name.lower() not in existing:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(name)} {types[name]}")
                existing.add(name.lower())
    return [c for c in batch.column_names if c.lower() in existing or c in typed], before


def _nested(kind: str) -> bool:
    return kind.endswith("]") or kind.startswith(("STRUCT", "MAP", "UNION"))


def _misfits(con: duckdb.DuckDBPyConnection, columns: list[str], before: dict[str, str],
             batch: pa.Table) -> dict[int, str]:
    """Rows of ``batch`` with a value that the existing table's column (of type ``before``)
    cannot take, → why: a non-null value whose ``TRY_CAST`` to the column's type is NULL
    (``"abc"`` for an INTEGER column, an out-of-range number, a bad timestamp). Only columns
    whose batch type differs from a scalar table type are queried, in SQL (no per-row
    Python); a nested column type is left to the INSERT (DuckDB's message fails the load)."""
    if not before:
        return {}
    types = _types(con, _BATCH) or {}
    checks = [(c, types[c], before[c.lower()]) for c in columns
              if c in types and c.lower() in before and types[c] != before[c.lower()]
              and not _nested(before[c.lower()])]
    if not checks:
        return {}
    con.register(_KEYED, batch.append_column(
        _ORDINAL, pa.array(range(batch.num_rows), type=pa.int64())))
    bad: dict[int, str] = {}
    for column, source, target in checks:
        q = quote_ident(column)
        try:
            rows = con.execute(f"SELECT {_ORDINAL} FROM {_KEYED} WHERE {q} IS NOT NULL AND "
                               f"TRY_CAST({q} AS {target}) IS NULL").fetchall()
        except duckdb.Error:
            continue  # no cast at all between the types: the INSERT reports it
        for (row,) in rows:
            bad.setdefault(int(row), f"field {column!r}: a {source} value that the table's "
                                     f"{target} column cannot take")
    return bad


@task_type("duckdb.Load")
class Load(WarehouseLoad):
    """Load a stored batch file into a DuckDB table.

    Each record becomes one row (``waxflow.connectors.tabular.rows``: the value's fields plus
    ``_topic``, ``_partition``, ``_offset``, ``_timestamp``, ``_key``); columns are matched by
    name, so a batch may omit columns of the table (NULL). ``createTable`` creates a missing
    table (and schema) from the batch's Arrow schema; ``addColumns`` adds the batch's new
    fields to an existing table. ``mode``:

    * ``APPEND`` — insert every row; a replayed batch is inserted again.
    * ``MERGE`` — replace rows whose ``mergeKeys`` (default the record's Kafka coordinates)
      match a row of the batch (NULL matches NULL), then insert; within a batch the last
      record per key wins. Loading the same batch twice leaves one copy.

    Records that do not fit are set aside (``onReject``): a value that is not a JSON object
    among objects, a field whose type differs from most records', and a value an existing
    table's column cannot take (``TRY_CAST`` to a scalar column type is NULL: ``"abc"`` for
    INTEGER). ``REJECTS_FILE`` (default) stores them next to the batch file (before the
    commit) and loads the others; ``FAIL`` fails the task and loads nothing. Other errors
    (a constraint, a value a nested column cannot take) fail the load with DuckDB's message.

    The load (DDL included) is one transaction: the batch lands whole or not at all.
    Guarantees: the stored file is only read (a retry re-reads it, never re-consumes); an
    empty batch loads nothing and succeeds. A DuckDB error fails the task with DuckDB's
    message. Outputs ``rows`` (rows written), ``rejected`` (records set aside),
    ``rejectsUri`` (their file, or null) and, for MERGE, ``replaced`` (existing rows
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
    onReject: OnReject = Field(
        default="REJECTS_FILE",
        description=on_reject_doc(more=", or a value an existing table's column cannot "
                                          "take (`TRY_CAST` to its scalar type is NULL)"))

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = self._who()
        uri = str(ctx.render(self.from_))
        table_name = str(ctx.render(self.table))
        database = str(ctx.render(self.database)) if self.database else None
        schema, table = _quote_table(table_name)
        out: dict[str, Any] = {"rows": 0, "table": table_name,
                               "database": database_path(database), "rejected": 0,
                               "rejectsUri": None}
        if self.mode == "MERGE":
            out["replaced"] = 0
        split = self._split(ctx, uri)
        if split is None:
            return out
        if split.table.num_rows == 0 or (split.rejects and self.onReject == "FAIL"):
            out.update(self._settle(ctx, uri, split))  # FAIL raises: nothing is loaded
            return out  # every record set aside: nothing to load
        batch = split.table
        try:
            with connect(database, threads=LOAD_THREADS) as con:
                con.register(_BATCH, batch)
                con.begin()
                try:
                    columns, before = _shape_table(con, self, schema=schema, table=table,
                                                   batch=batch)
                    misfits = _misfits(con, columns, before, batch)
                    if misfits:
                        split = split.drop(misfits)
                        batch = split.table
                        con.register(_BATCH, batch)
                    out.update(self._settle(ctx, uri, split))  # FAIL: rolled back
                    if self.mode == "MERGE" and batch.num_rows:
                        out["replaced"], out["rows"] = self._merge(con, table, batch, columns)
                    elif batch.num_rows:
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
