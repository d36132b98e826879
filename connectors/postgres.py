"""PostgreSQL, the fast path to an operational database: ``postgres.Query``,
``postgres.Load`` (batches, ``COPY FROM STDIN``) and ``postgres.Upsert`` (one row per
execution), with psycopg 3.

**Connections.** ``url`` (``postgresql://user@host:port/db?sslmode=...``, a libpq
``key=value`` string, or Kestra's ``jdbc:postgresql://...``) and/or ``host``, ``port``,
``database``, ``username``, ``password`` (write ``{{ secret('NAME') }}``), ``sslMode`` and the
certificate files. Each flow has one small pool per process and connection settings
(:class:`Pool`): connections are reused by every execution of the flow, never opened per
execution, at most ``poolSize`` at a time; an idle connection is checked before reuse (a
server restart costs no failed attempt) and a broken one is dropped. Error messages are one
line with PostgreSQL's own words; the password and the connection string never appear in
them (masked even where the driver would echo them).

**Values are parameters.** Rendered values reach the server as bound parameters or COPY
data, never as SQL text (see :mod:`waxflow.connectors.relational`).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pydantic import Field

from waxflow.connectors.relational import (
    LEDGER_TABLE,
    SqlQuery,
    bind_expressions,
    execution_id,
    flow_key,
)
from waxflow.connectors.warehouse import WarehouseLoad
from waxflow.durations import Duration
from waxflow.expressions import mask
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

if TYPE_CHECKING:  # psycopg is imported where it is used: flows without PostgreSQL never pay
    import psycopg
    from psycopg import sql as psql

__all__ = ["Load", "Pool", "Query", "Upsert", "column_type", "pool_for"]

_IDLE_CHECK_S = 2.0  # an idle connection older than this is pinged before reuse


def column_type(typ: pa.DataType) -> str:
    """The PostgreSQL column type for an Arrow type (nested values become JSONB)."""
    if pa.types.is_int8(typ) or pa.types.is_int16(typ) or pa.types.is_uint8(typ):
        return "SMALLINT"
    if pa.types.is_int32(typ) or pa.types.is_uint16(typ):
        return "INTEGER"
    if pa.types.is_integer(typ):
        return "NUMERIC(20,0)" if pa.types.is_uint64(typ) else "BIGINT"
    if pa.types.is_decimal(typ):
        return f"NUMERIC({typ.precision},{typ.scale})"
    if pa.types.is_timestamp(typ):
        return "TIMESTAMPTZ" if typ.tz else "TIMESTAMP"
    checks = [(pa.types.is_floating, "DOUBLE PRECISION"), (pa.types.is_boolean, "BOOLEAN"),
              (pa.types.is_binary, "BYTEA"), (pa.types.is_large_binary, "BYTEA"),
              (pa.types.is_date, "DATE"), (pa.types.is_time, "TIME"),
              (pa.types.is_nested, "JSONB")]
    for check, name in checks:
        if check(typ):
            return name
    return "TEXT"


def _python_type(value: Any) -> str:
    """The PostgreSQL column type for a rendered value (``postgres.Upsert``)."""
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT"
    if isinstance(value, float):
        return "DOUBLE PRECISION"
    if isinstance(value, dict | list):
        return "JSONB"
    if isinstance(value, dt.datetime):
        return "TIMESTAMPTZ" if value.tzinfo else "TIMESTAMP"
    if isinstance(value, dt.date):
        return "DATE"
    if isinstance(value, bytes):
        return "BYTEA"
    return "TEXT"


# --------------------------------------------------------------------------- pool
class Pool:
    """At most ``size`` connections to one server, reused across executions (LIFO).

    ``connection()`` lends a connection inside a transaction-free state and takes it back
    when it is still healthy and idle (else closes it). Thread-safe; one per flow, process
    and connection settings (:func:`pool_for`)."""

    def __init__(self, conninfo: str, size: int) -> None:
        self.conninfo = conninfo
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []
        self._lock = threading.Lock()
        self.opened = 0  # connections opened so far (tests and metrics)

    def _take_idle(self) -> psycopg.Connection[Any] | None:
        import psycopg

        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn, since = self._idle.pop()
            if conn.closed or conn.broken:
                continue
            if time.monotonic() - since < _IDLE_CHECK_S:
                return conn
            try:
                conn.execute("SELECT 1")
                return conn
            except psycopg.Error:
                with suppress(Exception):
                    conn.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in autocommit mode (``conn.transaction()`` opens a transaction) for
        the ``with`` block."""
        import psycopg
        from psycopg import pq

        with self._slots:
            conn = self._take_idle()
            if conn is None:
                conn = psycopg.connect(self.conninfo, autocommit=True)
                self.opened += 1
            try:
                yield conn
            except BaseException:
                with suppress(Exception):
                    conn.rollback()
                raise
            finally:
                healthy = (not conn.closed and not conn.broken
                           and conn.info.transaction_status == pq.TransactionStatus.IDLE)
                if healthy:
                    with self._lock:
                        self._idle.append((conn, time.monotonic()))
                else:
                    with suppress(Exception):
                        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            with suppress(Exception):
                conn.close()


_POOLS: dict[tuple[Any, ...], Pool] = {}
_POOLS_LOCK = threading.Lock()


def pool_for(flow: tuple[str, str], conninfo: str, size: int) -> Pool:
    """The pool of ``flow`` in this process for ``conninfo`` (created on first use)."""
    key = (os.getpid(), flow, conninfo, size)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = Pool(conninfo, size)
        return pool


# --------------------------------------------------------------------------- tasks
class _PostgresTask(TaskBase):
    """Connection properties shared by the PostgreSQL tasks."""

    url: str | None = Field(
        default=None,
        description="connection string (rendered): `postgresql://user@host:port/db?sslmode=...`"
                    ", a libpq `key=value` string or `jdbc:postgresql://...`; the properties "
                    "below override its parts. Never shown in messages")
    host: str | None = Field(default=None, description="server host or unix-socket "
                                                       "directory (rendered)")
    port: int | None = Field(default=None, description="server port (default 5432)")
    database: str | None = Field(default=None, description="database name (rendered)")
    username: str | None = Field(default=None, description="user to log in as (rendered)")
    password: str | None = Field(
        default=None,
        description="password of `username` (rendered), masked in every message; a secret: "
                    "write `{{ secret('NAME') }}`")
    sslMode: Literal["disable", "allow", "prefer", "require", "verify-ca",
                     "verify-full"] | None = Field(
        default=None, description="libpq `sslmode` (default libpq's `prefer`); `verify-full` "
                                  "checks the certificate and host name")
    sslRootCert: str | None = Field(default=None, description="CA certificate file that "
                                                              "signs the server's (rendered)")
    sslCert: str | None = Field(default=None, description="client certificate file "
                                                          "(rendered)")
    sslKey: str | None = Field(default=None, description="client key file (rendered)")
    connectTimeout: Duration = Field(
        default=dt.timedelta(seconds=10),
        description="longest wait to open a connection (ISO-8601 duration, whole seconds)")
    poolSize: int = Field(
        default=4, ge=1, le=100,
        description="most connections this flow holds open to this server in one process "
                    "(shared by all its executions)")

    def _conninfo(self, ctx: RunContext) -> tuple[str, str, list[str]]:
        """(libpq connection string, where it goes for messages, secrets to mask)."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        url = str(ctx.render(self.url)) if self.url else ""
        url = url.removeprefix("jdbc:")
        params: dict[str, Any] = {
            "host": self.host and ctx.render(self.host), "port": self.port,
            "dbname": self.database and ctx.render(self.database),
            "user": self.username and ctx.render(self.username),
            "password": self.password and ctx.render(self.password),
            "sslmode": self.sslMode,
            "sslrootcert": self.sslRootCert and ctx.render(self.sslRootCert),
            "sslcert": self.sslCert and ctx.render(self.sslCert),
            "sslkey": self.sslKey and ctx.render(self.sslKey),
            "connect_timeout": max(1, int(self.connectTimeout.total_seconds())),
        }
        secrets = [url, str(params["password"] or "")]
        try:
            conninfo = make_conninfo(url, **{k: v for k, v in params.items()
                                             if v not in (None, "")})
            parts = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            raise TaskFailure(f"{self._who()}: invalid connection settings: "
                              f"{mask(str(exc), secrets)}") from None
        secrets.append(str(parts.get("password") or ""))
        where = (f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}/"
                 f"{parts.get('dbname') or parts.get('user') or ''}")
        return conninfo, where, secrets

    def _who(self) -> str:
        return f"{self.TYPE} {self.id}"

    @contextmanager
    def _connection(self, ctx: RunContext) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; every psycopg error becomes a one-line TaskFailure."""
        import psycopg

        who = self._who()
        conninfo, where, secrets = self._conninfo(ctx)
        pool = pool_for(flow_key(ctx), conninfo, self.poolSize)
        try:
            with pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            text = mask(str(exc), secrets)
            raise TaskFailure(f"{who}: PostgreSQL {where}: {text}") from None
        except psycopg.Error as exc:
            text = mask(str(exc), secrets)
            raise TaskFailure(f"{who}: {text}") from None


_PARTS: dict[str, list[str]] = {}


def _table_parts(cur: psycopg.Cursor[Any], who: str, table: str) -> list[str]:
    """``[schema.]table`` (parts may be double-quoted) as its parts, parsed by the server's
    ``parse_ident`` (remembered per name)."""
    import psycopg

    known = _PARTS.get(table)
    if known is not None:
        return known
    try:
        cur.execute("SELECT parse_ident(%s)", (table,))
    except psycopg.errors.InvalidParameterValue as exc:
        raise TaskFailure(f"{who}: `table` {table!r} is not a valid [schema.]table name: "
                          f"{mask(str(exc))}") from None
    row = cur.fetchone()
    parts = list(row[0]) if row else []
    if not 1 <= len(parts) <= 2:
        raise TaskFailure(f"{who}: `table` {table!r} is not a valid [schema.]table name")
    if len(_PARTS) < 10_000:
        _PARTS[table] = parts
    return parts


def _ident(parts: list[str]) -> psql.Composable:
    from psycopg import sql as psql

    return psql.Identifier(*parts)


def _columns(cur: psycopg.Cursor[Any], qualified: psql.Composable) -> dict[str, str] | None:
    """Column name → type of an existing table, or None when there is no such table."""
    from psycopg import sql as psql

    cur.execute(psql.SQL("SELECT to_regclass({})").format(
        psql.Literal(qualified.as_string(cur))))
    row = cur.fetchone()
    if not row or row[0] is None:
        return None
    cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
                "ORDER BY attnum", (qualified.as_string(cur),))
    return {str(name): str(kind) for name, kind in cur.fetchall()}


def _ddl_lock(cur: psycopg.Cursor[Any], qualified: psql.Composable) -> dict[str, str] | None:
    """Take the transaction-scoped advisory lock serializing DDL on ``qualified`` (concurrent
    ``CREATE TABLE IF NOT EXISTS`` of one name can collide in the catalog) and return the
    table's columns as they are now that the lock is held."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                ("waxflow ddl " + qualified.as_string(cur),))
    return _columns(cur, qualified)


def _create_schema(cur: psycopg.Cursor[Any], schema: str) -> None:
    from psycopg import sql as psql

    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("waxflow ddl schema " + schema,))
    cur.execute(psql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psql.Identifier(schema)))


def _unique_on(cur: psycopg.Cursor[Any], qualified: psql.Composable, keys: list[str]) -> bool:
    """Whether a unique index (or primary key) of the table covers exactly ``keys``."""
    cur.execute("SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                "WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL "
                "GROUP BY i.indexrelid", (qualified.as_string(cur),))
    wanted = sorted(keys)
    return any(sorted(row[0]) == wanted for row in cur.fetchall())


def _csv_ready(table: pa.Table) -> pa.Table:
    """``table`` with the columns Arrow's CSV writer cannot write made text PostgreSQL
    parses: nested values as JSON, bytes as ``\\x`` hex."""
    import pyarrow.compute as pc

    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            values = [None if v is None else json.dumps(v, default=str)
                      for v in table.column(i).to_pylist()]
            table = table.set_column(i, field.name, pa.array(values, pa.string()))
        elif pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            values = [None if v is None else "\\x" + v.hex()
                      for v in table.column(i).to_pylist()]
            table = table.set_column(i, field.name, pa.array(values, pa.string()))
        elif pa.types.is_null(field.type):
            table = table.set_column(i, field.name, pa.nulls(table.num_rows, pa.string()))
        elif pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, pc.cast(table.column(i),
                                                            field.type.value_type))
    return table


def _copy_csv(cur: psycopg.Cursor[Any], target: psql.Composable, columns: list[str],
              batch: pa.Table) -> None:
    import pyarrow.csv as pacsv
    from psycopg import sql as psql

    buf = io.BytesIO()
    pacsv.write_csv(_csv_ready(batch.select(columns)), buf,
                    pacsv.WriteOptions(include_header=False))
    stmt = psql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        target, psql.SQL(", ").join(psql.Identifier(c) for c in columns))
    with cur.copy(stmt) as copy:
        view = buf.getbuffer()
        for start in range(0, len(view), 1 << 20):
            copy.write(view[start:start + (1 << 20)])


def _copy_binary(cur: psycopg.Cursor[Any], target: psql.Composable, columns: list[str],
                 types: list[str], batch: pa.Table) -> None:
    from psycopg import sql as psql
    from psycopg.types.json import Jsonb

    stmt = psql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        target, psql.SQL(", ").join(psql.Identifier(c) for c in columns))
    data = [batch.column(c).to_pylist() for c in columns]
    jsonish = [t.lower() in ("json", "jsonb") for t in types]
    with cur.copy(stmt) as copy:
        copy.set_types([re.sub(r"\(.*?\)", "", t) for t in types])
        for row in zip(*data, strict=True):
            copy.write_row([Jsonb(v) if j and v is not None else v
                            for v, j in zip(row, jsonish, strict=True)])


#: column types whose ``=`` means "the same value" (a MERGE leaves such rows as they are)
_COMPARABLE = re.compile(r"(smallint|integer|bigint|real|double precision|boolean|text|bytea|"
                         r"date|uuid|jsonb|numeric\(.*\)|character varying(\(.*\))?|"
                         r"character\(.*\)|(timestamp|time)(\(\d\))? with(out)? time zone)")
_INT_COLUMN = frozenset({"smallint", "integer", "bigint"})
_PROBE_MAX_GROUPS = 1000  # more key groups than this: merge without probing


def _comparable(pg_type: str) -> bool:
    return _COMPARABLE.fullmatch(pg_type) is not None


def _compared(alias: Literal["t", "EXCLUDED"], columns: list[str],
              types: dict[str, str]) -> psql.Composable:
    """``alias.column, ...`` for a row comparison; text compared byte for byte (``COLLATE
    "C"``: a case-insensitive collation would call a changed value unchanged)."""
    from psycopg import sql as psql

    return psql.SQL(", ").join(
        psql.SQL('{}.{} COLLATE "C"' if types[c].startswith(("text", "character")) else "{}.{}"
                 ).format(psql.SQL(alias), psql.Identifier(c)) for c in columns)


def _key_kind(arrow: pa.DataType, pg_type: str) -> str | None:
    """``bigint`` or ``text`` when a batch key column of Arrow type ``arrow`` compares with
    the table's ``pg_type`` column as that SQL type, exactly as COPY would store it."""
    if (pa.types.is_signed_integer(arrow) or arrow in (pa.uint8(), pa.uint16(), pa.uint32())
            ) and pg_type in _INT_COLUMN:
        return "bigint"
    if (pa.types.is_string(arrow) or pa.types.is_large_string(arrow)) and (
            pg_type == "text" or pg_type.startswith("character varying")):
        return "text"
    return None


def _no_row_has_these_keys(cur: psycopg.Cursor[Any], qualified: psql.Composable,
                           keys: list[str], types: dict[str, str], batch: pa.Table) -> bool:
    """True only when the table holds no row whose merge key is one of the batch's.

    The batch is cut into groups by every key but one integer key (the record coordinates:
    by ``_topic``, ``_partition``; each group an ``_offset`` range), and one statement asks,
    one index probe per group, whether any row lies in a group's range. False when the keys
    do not allow it (a NULL key, no integer key, types that would compare differently from
    how COPY stores them, more than :data:`_PROBE_MAX_GROUPS` groups) or a row was found."""
    import pyarrow.compute as pc
    from psycopg import sql as psql

    kinds: dict[str, str] = {}
    for k in keys:
        kind = _key_kind(batch.schema.field(k).type, types[k])
        if kind is None or batch.column(k).null_count:
            return False
        kinds[k] = kind
    ranged = [k for k in keys if kinds[k] == "bigint"]
    if not ranged:
        return False
    span, groups = ranged[-1], [k for k in keys if k != ranged[-1]]
    if groups:
        found = batch.select(keys).group_by(groups, use_threads=False).aggregate(
            [(span, "min"), (span, "max")])
        if found.num_rows > _PROBE_MAX_GROUPS:
            return False
        arrays = [found.column(k).to_pylist() for k in groups]
        arrays += [found.column(f"{span}_min").to_pylist(),
                   found.column(f"{span}_max").to_pylist()]
    else:
        low_high = pc.min_max(batch.column(span))
        arrays = [[low_high["min"].as_py()], [low_high["max"].as_py()]]
    names = [f"g{i}" for i in range(len(groups))]
    match = [psql.SQL("t.{} = b.{}").format(psql.Identifier(k), psql.Identifier(n))
             for k, n in zip(groups, names, strict=True)]
    match.append(psql.SQL("t.{} BETWEEN b.lo AND b.hi").format(psql.Identifier(span)))
    cur.execute(psql.SQL(
        "SELECT EXISTS (SELECT 1 FROM unnest({}) AS b({}) CROSS JOIN LATERAL "
        "(SELECT 1 FROM {} AS t WHERE {} LIMIT 1) AS hit)").format(
        psql.SQL(", ").join(psql.SQL("%s::{}[]").format(psql.SQL(kinds[k]))
                            for k in [*groups, span, span]),
        psql.SQL(", ").join(psql.Identifier(n) for n in [*names, "lo", "hi"]),
        qualified, psql.SQL(" AND ").join(match)), arrays)
    row = cur.fetchone()
    return row is not None and not row[0]


@task_type("postgres.Load", aliases=("io.kestra.plugin.jdbc.postgresql.CopyIn",))
class Load(_PostgresTask, WarehouseLoad):
    """Load a stored batch file (``from``, usually ``{{ trigger.uri }}``) into a PostgreSQL
    table with ``COPY FROM STDIN``, in one transaction.

    Each record becomes one row (the value's fields plus ``_topic``, ``_partition``,
    ``_offset``, ``_timestamp``, ``_key``); columns are matched by name, so a batch may omit
    columns of the table (NULL or their default). ``createTable`` creates a missing table
    (and schema) from the batch's Arrow types (nested values as JSONB); ``addColumns`` adds
    the batch's new columns. ``mode``:

    * ``MERGE`` — upsert on ``mergeKeys`` (default: the record's Kafka coordinates; within a
      batch the last record per key wins). A table created here gets a ``UNIQUE NULLS NOT
      DISTINCT`` constraint on the keys (integer keys first). When the table has a unique
      index on exactly the keys, one statement first probes that index once per key range
      of the batch (for the coordinates: per topic partition, its offset range); when no
      row has any of the batch's keys (the usual case: offsets only grow), COPY goes
      straight into the table. Otherwise (a replay, keys seen before, or a concurrent load
      that commits one of the keys meanwhile: the straight COPY then fails on the unique
      index and is undone alone, in a savepoint) COPY fills a temporary staging table
      shaped like the target, then ``INSERT … ON CONFLICT (mergeKeys) DO UPDATE`` writes the
      rows, leaving a row whose values are all unchanged as it is. An existing table
      without a unique index on exactly the keys is merged by ``DELETE … USING`` +
      ``INSERT`` instead (NULL matches NULL). Loading the same batch twice leaves one copy
      of each row.
    * ``APPEND`` — COPY straight into the table, and record the execution id in the
      ledger table (``ledgerTable``, in the same transaction): a replayed batch (same
      execution id) finds its entry and loads nothing (output ``skipped: true``), so a
      replay never duplicates rows.

    ``format``: ``CSV`` (default; the batch is encoded by Arrow's CSV writer, fast) or
    ``BINARY`` (PostgreSQL's binary COPY, row by row in Python: exact types, slower).
    Records that do not fit one table are set aside as ``onReject`` says; a value that fits
    the batch but not an existing column fails COPY with PostgreSQL's message. The load
    (DDL included) is one transaction: the batch lands whole or not at all, and a retry
    re-reads the stored file (Kafka is not consumed again). An empty batch loads nothing.
    Outputs ``rows`` (rows written), ``table``, ``rejected``, ``rejectsUri``, for MERGE
    ``inserted`` and ``updated`` (rows whose key was in the table already, changed or
    not), for APPEND ``skipped``.
    """

    type: Literal["postgres.Load"] = Field(description="the task type")
    table: str = Field(
        min_length=1,
        description="target table as `[schema.]table` (rendered; parts may be "
                    "double-quoted, unquoted parts are lower-cased like PostgreSQL does)")
    createTable: bool = Field(
        default=True, description="create a missing table (and schema) from the batch's "
                                  "Arrow types")
    addColumns: bool = Field(default=True,
                             description="add the batch's new columns to an existing table")
    mode: Literal["APPEND", "MERGE"] = Field(
        default="MERGE",
        description="`MERGE` upserts on `mergeKeys` (a replay overwrites the same rows); "
                    "`APPEND` inserts every row, once per execution (ledger)")
    format: Literal["CSV", "BINARY"] = Field(
        default="CSV", description="COPY format: `CSV` (Arrow-encoded, fast) or `BINARY` "
                                   "(row by row, exact types)")
    ledgerTable: str = Field(
        default=LEDGER_TABLE,
        description="APPEND: the table (`[schema.]table`, created when missing) where each "
                    "load records its execution id, in the load's transaction")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = self._who()
        uri = str(ctx.render(self.from_))
        table_name = str(ctx.render(self.table))
        out: dict[str, Any] = {"rows": 0, "table": table_name}
        if self.mode == "MERGE":
            out.update(inserted=0, updated=0)
        else:
            out["skipped"] = False
        batch, rejects = self._read(ctx, uri)
        out.update(rejects)
        if batch is None:
            return out
        run_id = execution_id(ctx, who) if self.mode == "APPEND" else ""
        with self._connection(ctx) as conn, conn.transaction(), conn.cursor() as cur:
            parts = _table_parts(cur, who, table_name)
            qualified = _ident(parts)
            if self.mode == "APPEND" and not self._enter_ledger(cur, who, run_id, table_name):
                out["skipped"] = True
                ctx.log("INFO", f"execution {run_id} already loaded {table_name}: "
                                "nothing to do (replay)")
                return out
            existing = self._shape(cur, parts, qualified, batch)
            columns = [c for c in batch.column_names if c in existing]
            types = [existing[c] for c in columns]
            if self.mode == "APPEND":
                self._copy(cur, qualified, columns, types, batch)
                out["rows"] = batch.num_rows
                how = "APPEND"
            else:
                counts, how = self._merge(cur, qualified, columns, types, batch)
                out.update(counts)
        ctx.log("INFO", f"{out['rows']} rows of {uri} into {table_name} ({how})")
        return out

    def _copy(self, cur: psycopg.Cursor[Any], target: psql.Composable, columns: list[str],
              types: list[str], batch: pa.Table) -> None:
        if self.format == "CSV":
            _copy_csv(cur, target, columns, batch)
        else:
            _copy_binary(cur, target, columns, types, batch)

    def _enter_ledger(self, cur: psycopg.Cursor[Any], who: str, run_id: str,
                      table: str) -> bool:
        """Record this load in the ledger; False when the execution loaded this table
        already (the entry is taken before any row is written, so a concurrent second
        attempt waits for the first to commit or roll back)."""
        from psycopg import sql as psql

        parts = _table_parts(cur, who, self.ledgerTable)
        ledger = _ident(parts)
        if _columns(cur, ledger) is None and _ddl_lock(cur, ledger) is None:
            if len(parts) == 2:
                _create_schema(cur, parts[0])
            cur.execute(psql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (execution_id TEXT NOT NULL, target TEXT NOT "
                "NULL, task_id TEXT NOT NULL, loaded_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
                "PRIMARY KEY (execution_id, target, task_id))").format(ledger))
        cur.execute(psql.SQL("INSERT INTO {} (execution_id, target, task_id) VALUES "
                             "(%s, %s, %s) ON CONFLICT DO NOTHING").format(ledger),
                    (run_id, table, self.id))
        return cur.rowcount == 1

    def _shape(self, cur: psycopg.Cursor[Any], parts: list[str], qualified: psql.Composable,
               batch: pa.Table) -> dict[str, str]:
        """Create the table or add columns as allowed; return the table's columns → type."""
        from psycopg import sql as psql

        existing = _columns(cur, qualified)
        needs_ddl = existing is None or (self.addColumns and any(
            f.name not in existing for f in batch.schema))
        if needs_ddl:
            existing = _ddl_lock(cur, qualified)
        if existing is None:
            if not self.createTable:
                raise TaskFailure(f"{self._who()}: table {qualified.as_string(cur)} does not "
                                  "exist (createTable is false)")
            if len(parts) == 2:
                _create_schema(cur, parts[0])
            cols = [psql.SQL("{} {}").format(psql.Identifier(f.name),
                                             psql.SQL(column_type(f.type)))
                    for f in batch.schema]
            if self.mode == "MERGE":  # integer keys first: cheaper index comparisons
                keys = sorted(self.mergeKeys, key=lambda k: not pa.types.is_integer(
                    batch.schema.field(k).type))
                cols.append(psql.SQL("UNIQUE NULLS NOT DISTINCT ({})").format(
                    psql.SQL(", ").join(psql.Identifier(k) for k in keys)))
            cur.execute(psql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                qualified, psql.SQL(", ").join(cols)))
            return _columns(cur, qualified) or {}
        if self.addColumns:
            for f in batch.schema:
                if f.name not in existing:
                    cur.execute(psql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        qualified, psql.Identifier(f.name), psql.SQL(column_type(f.type))))
                    existing[f.name] = column_type(f.type).lower()
            if len(existing) and any(f.name not in existing for f in batch.schema):
                existing = _columns(cur, qualified) or existing
        return existing

    def _merge(self, cur: psycopg.Cursor[Any], qualified: psql.Composable,
               columns: list[str], types: list[str], batch: pa.Table
               ) -> tuple[dict[str, Any], str]:
        """(the ``rows``/``inserted``/``updated`` outputs, how the batch was merged)."""
        import psycopg
        from psycopg import sql as psql

        missing = [k for k in self.mergeKeys if k not in columns]
        if missing:
            raise TaskFailure(f"{self._who()}: merge key(s) {', '.join(missing)} are not "
                              f"columns of {qualified.as_string(cur)}")
        unique = _unique_on(cur, qualified, self.mergeKeys)
        if unique and _no_row_has_these_keys(cur, qualified, self.mergeKeys,
                                             dict(zip(columns, types, strict=True)), batch):
            try:  # in a savepoint: a conflict undoes the COPY alone, then the batch is merged
                with cur.connection.transaction():
                    self._copy(cur, qualified, columns, types, batch)
                return ({"rows": batch.num_rows, "inserted": batch.num_rows, "updated": 0},
                        "MERGE: no row had these keys, copied straight in")
            except psycopg.errors.UniqueViolation:
                pass  # a concurrent load committed some of these keys since the probe
        stage = psql.Identifier(f"waxflow_stage_{os.getpid()}_{threading.get_ident()}")
        cols = psql.SQL(", ").join(psql.Identifier(c) for c in columns)
        cur.execute(psql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} "
                             "WITH NO DATA").format(stage, cols, qualified))
        self._copy(cur, stage, columns, types, batch)
        others = [c for c in columns if c not in self.mergeKeys]
        keys = psql.SQL(", ").join(psql.Identifier(k) for k in self.mergeKeys)
        if unique:
            action: psql.Composable = psql.SQL("DO NOTHING")
            if others:
                action = psql.SQL("DO UPDATE SET {}").format(psql.SQL(", ").join(
                    psql.SQL("{0} = EXCLUDED.{0}").format(psql.Identifier(c)) for c in others))
                kinds = dict(zip(columns, types, strict=True))
                if all(_comparable(kinds[c]) for c in others):  # unchanged rows stay as is
                    action = psql.SQL("{} WHERE ROW({}) IS DISTINCT FROM ROW({})").format(
                        action, _compared("t", others, kinds),
                        _compared("EXCLUDED", others, kinds))
            cur.execute(psql.SQL("WITH done AS (INSERT INTO {} AS t ({}) SELECT {} FROM {} "
                                 "ON CONFLICT ({}) {} RETURNING (xmax = 0) AS fresh) "
                                 "SELECT count(*) FROM done WHERE fresh"
                                 ).format(qualified, cols, cols, stage, keys, action))
            counted = cur.fetchone() or (0,)
            return ({"rows": batch.num_rows, "inserted": int(counted[0]),
                     "updated": batch.num_rows - int(counted[0])}, "MERGE: ON CONFLICT")
        match = psql.SQL(" AND ").join(
            psql.SQL("t.{0} IS NOT DISTINCT FROM s.{0}").format(psql.Identifier(k))
            for k in self.mergeKeys)
        cur.execute(psql.SQL("DELETE FROM {} AS t USING {} AS s WHERE {}").format(
            qualified, stage, match))
        updated = cur.rowcount
        cur.execute(psql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
            qualified, cols, cols, stage))
        return ({"rows": batch.num_rows, "inserted": batch.num_rows - updated,
                 "updated": updated}, "MERGE: DELETE + INSERT, no unique index on the keys")


@task_type("postgres.Query", aliases=("io.kestra.plugin.jdbc.postgresql.Query",))
class Query(_PostgresTask, SqlQuery):
    """Run one SQL statement on PostgreSQL, in its own transaction (committed when it
    succeeds, rolled back when it fails).

    Every ``{{ expression }}`` in ``sql`` is sent as a bound parameter (write it where a
    value goes, without quotes: ``WHERE id = {{ trigger.value.id }}``); the SQL text itself
    is never built from record values. A ``sql`` without expressions may hold several
    statements. ``fetch``: ``NONE`` (default), ``ONE`` (``row``, ``size``), ``ALL``
    (``rows``, ``size``) or ``STORE`` (``uri`` of an ION file in internal storage, ``size``).
    Values are JSON-friendly (ISO-8601 dates and times, numbers for NUMERIC, base64 bytes).
    Always outputs ``rowCount`` (rows returned or affected). A PostgreSQL error fails the
    task with PostgreSQL's message.
    """

    type: Literal["postgres.Query"] = Field(description="the task type")
    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        from psycopg.types.json import Jsonb

        who = self._who()
        text, params = bind_expressions(ctx, self.sql, lambda i: "%s", escape_percent=True)
        with self._connection(ctx) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(text, [Jsonb(p) if isinstance(p, dict | list) else p
                               for p in params] if params else None)
            out: dict[str, Any] = {"rowCount": cur.rowcount}
            if self.fetch != "NONE" and cur.description:
                names = [d.name for d in cur.description]
                rows = cur.fetchmany(1) if self.fetch == "ONE" else cur.fetchall()
                out.update(self._outputs(ctx, who, names, rows))
            elif self.fetch != "NONE":
                out.update(self._outputs(ctx, who, [], []))
        return out


@task_type("postgres.Upsert")
class Upsert(_PostgresTask):
    """Write one row per execution: ``INSERT … ON CONFLICT (idColumn) DO UPDATE``, keyed by
    the execution id (deterministic: a replayed record has the same id), so a replay after
    a crash overwrites its row instead of adding one.

    ``values`` maps column names to rendered values (each a bound parameter: a record value
    such as ``'); DROP TABLE x; --`` is stored as text); maps and lists are stored as JSONB.
    A missing table is created (``createTable``) with ``idColumn`` as its primary key and a
    column per value, typed from the first values; a missing column is added
    (``addColumns``). The fast path is one statement on a pooled connection. Outputs
    ``table``, ``id`` (the execution id) and ``inserted`` (false when the row existed:
    a replay).
    """

    type: Literal["postgres.Upsert"] = Field(description="the task type")
    table: str = Field(min_length=1, description="target table as `[schema.]table` "
                                                 "(rendered; parts may be double-quoted)")
    values: dict[str, Any] = Field(
        min_length=1,
        description="column → value (each rendered, sent as a bound parameter; maps and "
                    "lists as JSONB)")
    idColumn: str = Field(default="execution_id", min_length=1,
                          description="column holding the execution id: the row's key")
    createTable: bool = Field(default=True, description="create a missing table")
    addColumns: bool = Field(default=True, description="add missing columns")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        import psycopg
        from psycopg import sql as psql
        from psycopg.types.json import Jsonb

        who = self._who()
        run_id = execution_id(ctx, who)
        table_name = str(ctx.render(self.table))
        if self.idColumn in self.values:
            raise TaskFailure(f"{who}: `values` must not set the id column {self.idColumn!r}")
        values = {str(k): ctx.render(v) for k, v in self.values.items()}
        names = [self.idColumn, *values]
        params = [run_id, *(Jsonb(v) if isinstance(v, dict | list) else v
                            for v in values.values())]
        with self._connection(ctx) as conn, conn.cursor() as cur:
            parts = _table_parts(cur, who, table_name)
            qualified = _ident(parts)
            cols = psql.SQL(", ").join(psql.Identifier(n) for n in names)
            stmt = psql.SQL(
                "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {} "
                "RETURNING (xmax = 0)").format(
                qualified, cols, psql.SQL(", ").join(psql.Placeholder() * len(names)),
                psql.Identifier(self.idColumn),
                psql.SQL(", ").join(psql.SQL("{0} = EXCLUDED.{0}").format(psql.Identifier(n))
                                    for n in values))
            try:  # autocommit: one statement, one round trip
                cur.execute(stmt, params)
                row = cur.fetchone()
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn,
                    psycopg.errors.InvalidSchemaName):  # create or extend, then once more
                with conn.transaction():
                    self._shape(cur, parts, qualified, values)
                cur.execute(stmt, params)
                row = cur.fetchone()
        return {"table": table_name, "id": run_id, "inserted": bool(row and row[0])}

    def _shape(self, cur: psycopg.Cursor[Any], parts: list[str], qualified: psql.Composable,
               values: dict[str, Any]) -> None:
        from psycopg import sql as psql

        existing = _ddl_lock(cur, qualified)
        if existing is None:
            if not self.createTable:
                raise TaskFailure(f"{self._who()}: table {qualified.as_string(cur)} does not "
                                  "exist (createTable is false)")
            if len(parts) == 2:
                _create_schema(cur, parts[0])
            cols = [psql.SQL("{} TEXT PRIMARY KEY").format(psql.Identifier(self.idColumn))]
            cols += [psql.SQL("{} {}").format(psql.Identifier(k), psql.SQL(_python_type(v)))
                     for k, v in values.items()]
            cur.execute(psql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                qualified, psql.SQL(", ").join(cols)))
        elif self.addColumns:
            for k, v in values.items():
                if k not in existing:
                    cur.execute(psql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        qualified, psql.Identifier(k), psql.SQL(_python_type(v))))
