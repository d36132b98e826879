"""Any database SQLAlchemy 2 reaches: ``sql.Query`` and ``sql.Load``.

``url`` is a SQLAlchemy URL (``mysql+pymysql://user@host:3306/db``,
``postgresql+psycopg://...``, ``sqlite:///file.db``, ...; the driver package must be
installed: PyMySQL and psycopg are). ``password`` (write ``{{ secret('NAME') }}``) replaces
the URL's. Each flow has one engine per process and URL, whose connection pool (at most
``poolSize`` connections, each checked before reuse) serves all its executions. Error
messages are one line with the driver's words; the password and the URL never appear in
them. For PostgreSQL the ``postgres.*`` tasks are the fast path (COPY, ON CONFLICT).

Rendered values reach the server as bound parameters, never as SQL text
(:mod:`waxflow.connectors.relational`).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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
from waxflow.expressions import mask
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

if TYPE_CHECKING:  # SQLAlchemy is imported where it is used: flows without sql.* never pay
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection, Engine

__all__ = ["Load", "Query", "column_type", "engine_for"]

_ENGINES: dict[tuple[Any, ...], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(flow: tuple[str, str], url: sa.URL, pool_size: int) -> Engine:
    """The engine of ``flow`` in this process for ``url`` (created on first use; its pool
    pings a connection before reusing it)."""
    import sqlalchemy as sa

    key = (os.getpid(), flow, url.render_as_string(hide_password=False), pool_size)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            options: dict[str, Any] = {"pool_pre_ping": True}
            if url.get_backend_name() != "sqlite":
                options.update(pool_size=pool_size, max_overflow=0)
            engine = _ENGINES[key] = sa.create_engine(url, **options)
        return engine


def column_type(typ: pa.DataType, *, key: bool = False) -> sa.types.TypeEngine[Any]:
    """The SQLAlchemy column type for an Arrow type (nested values become JSON); ``key``
    columns get a bounded string type (MySQL cannot index TEXT)."""
    import sqlalchemy as sa

    if pa.types.is_boolean(typ):
        return sa.Boolean()
    if pa.types.is_integer(typ):
        return sa.BigInteger()
    if pa.types.is_floating(typ):
        return sa.Double()
    if pa.types.is_decimal(typ):
        return sa.Numeric(typ.precision, typ.scale)
    if pa.types.is_timestamp(typ):
        return sa.DateTime(timezone=typ.tz is not None)
    if pa.types.is_date(typ):
        return sa.Date()
    if pa.types.is_time(typ):
        return sa.Time()
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        return sa.LargeBinary()
    if pa.types.is_nested(typ):
        return sa.JSON()
    return sa.String(255) if key else sa.Text()


def _values(batch: pa.Table, table: sa.Table) -> list[dict[str, Any]]:
    """The batch's rows as parameter maps; nested values as JSON text where the table's
    column is not a JSON type to the driver (MariaDB reflects JSON as LONGTEXT)."""
    import sqlalchemy as sa

    rows: list[dict[str, Any]] = batch.to_pylist()
    texts = [f.name for f in batch.schema if pa.types.is_nested(f.type)
             and not isinstance(table.c[f.name].type, sa.JSON)]
    for row in rows:
        for name in texts:
            if row[name] is not None:
                row[name] = json.dumps(row[name], default=str)
    return rows


class _SqlTask(TaskBase):
    """Connection properties shared by the ``sql.*`` tasks."""

    url: str = Field(
        min_length=1,
        description="SQLAlchemy URL (rendered), such as `mysql+pymysql://user@host:3306/db`; "
                    "never shown in messages")
    password: str | None = Field(
        default=None,
        description="password (rendered), replacing the URL's; masked in every message; a "
                    "secret: write `{{ secret('NAME') }}`")
    poolSize: int = Field(
        default=4, ge=1, le=100,
        description="most connections this flow holds open to this database in one process "
                    "(shared by all its executions)")

    def _who(self) -> str:
        return f"{self.TYPE} {self.id}"

    def _engine(self, ctx: RunContext) -> tuple[Engine, list[str]]:
        import sqlalchemy as sa

        raw = str(ctx.render(self.url))
        secrets = [raw]
        try:
            url = sa.make_url(raw)
        except (sa.exc.ArgumentError, ValueError) as exc:
            raise TaskFailure(f"{self._who()}: `url` is not a SQLAlchemy URL: "
                              f"{mask(str(exc), secrets)}") from None
        if self.password:
            url = url.set(password=str(ctx.render(self.password)))
        if url.password:
            secrets.append(str(url.password))
        try:
            return engine_for(flow_key(ctx), url, self.poolSize), secrets
        except (sa.exc.SQLAlchemyError, ImportError) as exc:
            raise TaskFailure(f"{self._who()}: cannot use {url.drivername}: "
                              f"{mask(str(exc), secrets)}") from None

    @contextmanager
    def _begin(self, ctx: RunContext) -> Iterator[Connection]:
        """A connection in a transaction (committed at the end of the block, rolled back on
        an error); database errors become one-line TaskFailures."""
        import sqlalchemy as sa

        engine, secrets = self._engine(ctx)
        where = engine.url.render_as_string(hide_password=True)
        try:
            with engine.begin() as conn:
                yield conn
        except sa.exc.DBAPIError as exc:
            text = mask(str(exc.orig), secrets)
            if exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError):
                raise TaskFailure(f"{self._who()}: {where}: {text}") from None
            raise TaskFailure(f"{self._who()}: {text}") from None
        except sa.exc.SQLAlchemyError as exc:
            raise TaskFailure(f"{self._who()}: {mask(str(exc), secrets)}") from None


def _placeholder(paramstyle: str) -> Any:
    return {"qmark": lambda i: "?", "format": lambda i: "%s",
            "pyformat": lambda i: f"%(p{i})s", "named": lambda i: f":p{i}",
            "numeric": lambda i: f":{i + 1}", "numeric_dollar": lambda i: f"${i + 1}",
            }[paramstyle]


@task_type("sql.Query")
class Query(_SqlTask, SqlQuery):
    """Run one SQL statement through SQLAlchemy, in its own transaction (committed when it
    succeeds, rolled back when it fails).

    Every ``{{ expression }}`` in ``sql`` is sent as a bound parameter in the driver's own
    placeholder style (write it where a value goes, without quotes); the SQL text is sent
    to the driver as is otherwise (write the database's own SQL; a literal ``%`` needs no
    escaping). ``fetch``: ``NONE`` (default), ``ONE`` (``row``, ``size``), ``ALL``
    (``rows``, ``size``) or ``STORE`` (``uri`` of an ION file in internal storage,
    ``size``); values are JSON-friendly. Always outputs ``rowCount`` (the driver's count,
    -1 when it has none). A database error fails the task with the driver's message.
    """

    type: Literal["sql.Query"] = Field(description="the task type")
    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = self._who()
        engine, _ = self._engine(ctx)
        style = engine.dialect.paramstyle
        text, params = bind_expressions(ctx, self.sql, _placeholder(style),
                                        escape_percent=style in ("format", "pyformat"))
        args: Any = None
        if params:
            args = ({f"p{i}": v for i, v in enumerate(params)}
                    if style in ("pyformat", "named") else tuple(params))
        with self._begin(ctx) as conn:
            result = conn.exec_driver_sql(text, args) if args is not None else \
                conn.exec_driver_sql(text)
            out: dict[str, Any] = {"rowCount": result.rowcount}
            if self.fetch != "NONE":
                names = list(result.keys()) if result.returns_rows else []
                rows = ([] if not names else
                        result.fetchmany(1) if self.fetch == "ONE" else result.fetchall())
                out.update(self._outputs(ctx, who, names, [tuple(r) for r in rows]))
        return out


@task_type("sql.Load")
class Load(_SqlTask, WarehouseLoad):
    """Load a stored batch file (``from``, usually ``{{ trigger.uri }}``) into a table of any
    SQLAlchemy database, in one transaction.

    Each record becomes one row (the value's fields plus ``_topic``, ``_partition``,
    ``_offset``, ``_timestamp``, ``_key``); columns are matched by name. ``createTable``
    creates a missing table from the batch's Arrow types (nested values as JSON; merge-key
    strings as ``VARCHAR(255)``); ``addColumns`` adds the batch's new columns. ``mode``:

    * ``MERGE`` — insert the batch into a temporary staging table, delete the table's rows
      whose ``mergeKeys`` match a staged row (NULL matches NULL), insert the staged rows
      (portable SQL; the last record per key in a batch wins). A replay leaves one copy.
    * ``APPEND`` — insert every row and record the execution id in the ledger table
      (``ledgerTable``) in the same transaction; a replayed batch (same execution id) loads
      nothing (output ``skipped: true``).

    Rows are sent with the driver's ``executemany`` (SQLAlchemy batches the INSERTs).
    Records that do not fit one table are set aside as ``onReject`` says. The load (DDL
    included, where the database makes DDL transactional) is one transaction; a retry
    re-reads the stored file. Outputs ``rows``, ``table``, ``rejected``, ``rejectsUri``,
    for MERGE ``replaced`` (existing rows replaced), for APPEND ``skipped``.
    """

    type: Literal["sql.Load"] = Field(description="the task type")
    table: str = Field(min_length=1,
                       description="target table as `[schema.]table` (rendered; names are "
                                   "quoted as the database needs)")
    createTable: bool = Field(default=True, description="create a missing table from the "
                                                        "batch's Arrow types")
    addColumns: bool = Field(default=True,
                             description="add the batch's new columns to an existing table")
    mode: Literal["APPEND", "MERGE"] = Field(
        default="MERGE",
        description="`MERGE` replaces the rows matching `mergeKeys`, then inserts; `APPEND` "
                    "inserts every row, once per execution (ledger)")
    ledgerTable: str = Field(
        default=LEDGER_TABLE,
        description="APPEND: the table (created when missing) where each load records its "
                    "execution id, in the load's transaction")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = self._who()
        uri = str(ctx.render(self.from_))
        table_name = str(ctx.render(self.table))
        schema, _, name = table_name.rpartition(".")
        out: dict[str, Any] = {"rows": 0, "table": table_name}
        out.update({"replaced": 0} if self.mode == "MERGE" else {"skipped": False})
        batch, rejects = self._read(ctx, uri)
        out.update(rejects)
        if batch is None:
            return out
        run_id = execution_id(ctx, who) if self.mode == "APPEND" else ""
        with self._begin(ctx) as conn:
            if self.mode == "APPEND" and not self._enter_ledger(conn, run_id, table_name):
                out["skipped"] = True
                ctx.log("INFO", f"execution {run_id} already loaded {table_name}: "
                                "nothing to do (replay)")
                return out
            table = self._shape(conn, name, schema or None, batch)
            columns = [c for c in batch.column_names if c in table.c]
            rows = _values(batch.select(columns), table)
            if self.mode == "MERGE":
                out["replaced"] = self._merge(conn, table, columns, rows)
            else:
                conn.execute(table.insert(), rows)
            out["rows"] = len(rows)
        ctx.log("INFO", f"{out['rows']} rows of {uri} into {table_name} ({self.mode})")
        return out

    def _enter_ledger(self, conn: Connection, run_id: str, target: str) -> bool:
        import sqlalchemy as sa

        schema, _, name = self.ledgerTable.rpartition(".")
        ledger = sa.Table(
            name, sa.MetaData(),
            sa.Column("execution_id", sa.String(191), primary_key=True),
            sa.Column("target", sa.String(191), primary_key=True),
            sa.Column("task_id", sa.String(100), primary_key=True),
            schema=schema or None)
        ledger.create(conn, checkfirst=True)
        found = conn.execute(sa.select(sa.func.count()).select_from(ledger).where(
            ledger.c.execution_id == run_id, ledger.c.target == target,
            ledger.c.task_id == self.id)).scalar()
        if found:
            return False
        conn.execute(ledger.insert().values(execution_id=run_id, target=target,
                                            task_id=self.id))
        return True

    def _shape(self, conn: Connection, name: str, schema: str | None,
               batch: pa.Table) -> sa.Table:
        """The target table (created or extended as allowed), reflected."""
        import sqlalchemy as sa

        inspector = sa.inspect(conn)
        keys = set(self.mergeKeys) if self.mode == "MERGE" else set()
        if not inspector.has_table(name, schema=schema):
            if not self.createTable:
                raise TaskFailure(f"{self._who()}: table {name} does not exist "
                                  "(createTable is false)")
            table = sa.Table(name, sa.MetaData(), *(
                sa.Column(f.name, column_type(f.type, key=f.name in keys))
                for f in batch.schema), schema=schema)
            if keys:
                table.append_constraint(sa.Index(f"ix_{name}_waxflow_keys"[:60],
                                                 *(table.c[k] for k in self.mergeKeys)))
            table.create(conn)
            return table
        table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=conn)
        if self.addColumns:
            preparer = conn.dialect.identifier_preparer
            added = False
            for f in batch.schema:
                if f.name not in table.c:
                    kind = column_type(f.type, key=f.name in keys).compile(dialect=conn.dialect)
                    conn.exec_driver_sql(f"ALTER TABLE {preparer.format_table(table)} ADD "
                                         f"{preparer.quote(f.name)} {kind}")
                    added = True
            if added:
                table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=conn)
        return table

    def _merge(self, conn: Connection, table: sa.Table, columns: list[str],
               rows: list[dict[str, Any]]) -> int:
        """Stage ``rows``, delete the matching rows of ``table``, insert; return the count
        deleted."""
        import sqlalchemy as sa

        missing = [k for k in self.mergeKeys if k not in columns]
        if missing:
            raise TaskFailure(f"{self._who()}: merge key(s) {', '.join(missing)} are not "
                              f"columns of {table.name}")
        stage = sa.Table(f"waxflow_stage_{uuid.uuid4().hex[:12]}", sa.MetaData(),
                         *(sa.Column(c, table.c[c].type) for c in columns),
                         prefixes=["TEMPORARY"])
        stage.create(conn)
        conn.execute(stage.insert(), rows)
        match = sa.and_(*(sa.or_(table.c[k] == stage.c[k],
                                 sa.and_(table.c[k].is_(None), stage.c[k].is_(None)))
                          for k in self.mergeKeys))
        deleted = conn.execute(table.delete().where(sa.exists().where(match))).rowcount
        conn.execute(table.insert().from_select(columns, sa.select(
            *(stage.c[c] for c in columns))))
        stage.drop(conn)  # after a failure the connection's session ends it (rollback/close)
        return max(int(deleted or 0), 0)
