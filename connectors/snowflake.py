"""Snowflake: ``snowflake.Load`` (stage + PUT + COPY INTO, optionally MERGE) and
``snowflake.Query``, with the real ``snowflake-connector-python`` (4.x).

Connection properties are the connector's: ``account``, ``user``, ``password``,
``database``, ``schema``, ``warehouse``, ``role``; ``host``/``port``/``protocol`` reach
another server such as the local emulator (defaults ``$WAXFLOW_SF_HOST``/``$WAXFLOW_SF_PORT``;
``http`` for a loopback host, else ``https``). Each task run opens one connection and closes
it. Error messages are one line with Snowflake's own words; the password never appears in
them (it is masked even where the connector would echo it).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import snowflake.connector
from pydantic import Field

from waxflow.connectors.warehouse import WarehouseLoad, WarehouseQuery, merge_statement
from waxflow.durations import Duration
from waxflow.expressions import mask
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["Load", "Query", "column_type", "ident"]

_SIMPLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_PART = re.compile(r'"(?:[^"]|"")*"|[^."]+')
_LOOPBACK = ("127.", "localhost", "::1", "[::1]")


def ident(name: str) -> str:
    """A column name as an identifier: plain names unquoted (Snowflake upper-cases them, and
    COPY matches them case-insensitively), anything else double-quoted as is."""
    return name if _SIMPLE.match(name) else '"' + name.replace('"', '""') + '"'


def column_type(typ: Any) -> str:
    """The Snowflake column type for an Arrow type (nested values become VARIANT)."""
    if pa.types.is_integer(typ):
        return "NUMBER(38,0)"
    if pa.types.is_decimal(typ):
        return f"NUMBER({min(typ.precision, 38)},{min(typ.scale, 37)})"
    if pa.types.is_timestamp(typ):
        return "TIMESTAMP_TZ" if typ.tz else "TIMESTAMP_NTZ"
    checks = [(pa.types.is_floating, "FLOAT"), (pa.types.is_boolean, "BOOLEAN"),
              (pa.types.is_string, "VARCHAR"), (pa.types.is_large_string, "VARCHAR"),
              (pa.types.is_binary, "BINARY"), (pa.types.is_date, "DATE"),
              (pa.types.is_time, "TIME"), (pa.types.is_nested, "VARIANT")]
    for check, name in checks:
        if check(typ):
            return name
    return "VARCHAR"


def _schema_prefix(table: str) -> str:
    """``db.schema.`` of a (possibly quoted) qualified table name, or ``""``."""
    parts = _PART.findall(table.strip())
    return "".join(p + "." for p in parts[:-1])


class _SnowflakeTask(TaskBase):
    """Connection properties shared by the Snowflake tasks."""

    account: str = Field(min_length=1, description="Snowflake account identifier, such as "
                                                   "`myorg-myaccount` (rendered)")
    user: str = Field(min_length=1, description="user to log in as (rendered)")
    password: str | None = Field(
        default=None,
        description="password of `user` (rendered), masked in every error message; a secret: "
                    "write `{{ secret('NAME') }}`")
    database: str | None = Field(default=None, description="database of the session "
                                                           "(rendered); default the user's")
    schema_: str | None = Field(default=None, alias="schema",
                                description="schema of the session (rendered); default the "
                                            "user's")
    warehouse: str | None = Field(default=None, description="virtual warehouse that runs the "
                                                            "statements (rendered); default "
                                                            "the user's")
    role: str | None = Field(default=None, description="role of the session (rendered); "
                                                       "default the user's default role")
    host: str | None = Field(
        default=None,
        description="host to connect to instead of the account's, such as a local emulator "
                    "(rendered); default `$WAXFLOW_SF_HOST` (`127.0.0.1` when only a port is "
                    "set)")
    port: int | str | None = Field(default=None, description="port to connect to (rendered); "
                                                             "default `$WAXFLOW_SF_PORT`, "
                                                             "else the protocol's")
    protocol: Literal["http", "https"] | None = Field(
        default=None,
        description="protocol with `host`; default `http` for a loopback host, else `https`")
    loginTimeout: Duration = Field(
        default=dt.timedelta(seconds=30),
        description="how long connecting and logging in may take (ISO-8601 duration, whole "
                    "seconds, at least 1)")

    model_config = {**TaskBase.model_config, "populate_by_name": True}

    def _params(self, ctx: RunContext) -> dict[str, Any]:
        def render(value: Any) -> str | None:
            return str(ctx.render(value)) if value not in (None, "") else None

        params: dict[str, Any] = {
            "account": render(self.account), "user": render(self.user),
            "password": render(self.password), "database": render(self.database),
            "schema": render(self.schema_), "warehouse": render(self.warehouse),
            "role": render(self.role), "application": "waxflow",
            "login_timeout": max(1, int(self.loginTimeout.total_seconds())),
        }
        host = render(self.host) or os.environ.get("WAXFLOW_SF_HOST") or None
        port = render(self.port) or os.environ.get("WAXFLOW_SF_PORT") or None
        if port and not host:
            host = "127.0.0.1"
        if host:
            params["host"] = host
            params["protocol"] = self.protocol or (
                "http" if host.startswith(_LOOPBACK) else "https")
        if port:
            params["port"] = int(port)
        return {k: v for k, v in params.items() if v is not None}

    @contextmanager
    def _cursor(self, ctx: RunContext, who: str) -> Iterator[Any]:
        """A cursor on a new connection (closed on exit); errors become TaskFailures."""
        params = self._params(ctx)
        secrets = [params.get("password")]
        try:
            conn = snowflake.connector.connect(**params)
        except (snowflake.connector.errors.Error, OSError) as exc:
            where = params.get("host") or f"account {params.get('account')}"
            raise TaskFailure(f"{who}: cannot connect to Snowflake ({where}): "
                              f"{mask(str(exc), secrets)}") from None
        try:
            with conn.cursor() as cursor:
                yield cursor
        except (snowflake.connector.errors.Error, OSError) as exc:
            raise TaskFailure(f"{who}: {mask(str(exc), secrets)}") from None
        finally:
            with suppress(Exception):
                conn.close()


@task_type("snowflake.Load")
class Load(_SnowflakeTask, WarehouseLoad):
    """Load a stored batch file (``from``, usually ``{{ trigger.uri }}``) into ``table``.

    The batch (one row per record: the value's fields plus ``_topic``, ``_partition``,
    ``_offset``, ``_timestamp``, ``_key``) is written as Parquet, PUT to a temporary stage
    and loaded with ``COPY INTO ... MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE FORCE = TRUE``
    (batch columns the table lacks are ignored; table columns the batch lacks stay NULL).
    ``createTable`` creates a missing table from the batch's types. ``mode``:

    * ``APPEND`` — COPY into the table; a replayed batch is appended again (``FORCE``: no
      reliance on Snowflake's load history).
    * ``MERGE`` — COPY into a transient staging table, then one MERGE on ``mergeKeys``
      (default the record's Kafka coordinates; NULL matches NULL); within a batch the last
      record per key wins, so loading the same batch twice leaves one copy. The staging
      table is dropped afterwards.

    Records that do not fit one table (a value that is not a JSON object among objects, a
    field whose type differs from most records') are set aside before anything is sent:
    ``onReject: REJECTS_FILE`` (default) stores them next to the batch file and loads the
    others, ``FAIL`` fails the task. A value that fits the batch but not an existing table's
    column is not checked here: COPY fails the task with Snowflake's message.

    The task fails unless COPY reports every row it was given loaded. An empty batch loads
    nothing (``failOnEmpty: true`` fails instead). Outputs ``rows`` (rows loaded),
    ``table``, ``rejected`` (records set aside), ``rejectsUri`` (their file, or null), and
    for MERGE ``inserted`` and ``updated``.
    """

    KEYS_IGNORE_CASE: ClassVar[bool] = True  # plain names are upper-cased

    type: Literal["snowflake.Load"] = Field(description="the task type")
    table: str = Field(
        min_length=1,
        description="target table, `[database.][schema.]table` (rendered); plain names are "
                    "upper-cased by Snowflake, double-quoted ones kept")
    createTable: bool = Field(
        default=True, description="create a missing table from the batch's types")
    mode: Literal["APPEND", "MERGE"] = Field(
        default="APPEND",
        description="`APPEND` copies every row into the table (a replayed batch is appended "
                    "again); `MERGE` copies into a staging table, then merges it on "
                    "`mergeKeys`")
    failOnEmpty: bool = Field(
        default=False,
        description="fail the task when the batch holds no records; false loads nothing and "
                    "succeeds")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = self._who()
        uri = str(ctx.render(self.from_))
        table = str(ctx.render(self.table))
        out: dict[str, Any] = {"rows": 0, "table": table}
        batch, rejects = self._read(ctx, uri, fail_on_empty=self.failOnEmpty)
        out.update(rejects)
        if batch is None:
            return out
        tag = uuid.uuid4().hex[:12].upper()
        with tempfile.TemporaryDirectory(prefix="waxflow-sf-") as tmp, \
                self._cursor(ctx, who) as cur:
            path = Path(tmp) / f"batch_{tag}.parquet"
            pq.write_table(batch, path)
            if self.createTable:
                cols = ", ".join(f"{ident(f.name)} {column_type(f.type)}" for f in batch.schema)
                cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")
            stage = f"WAXFLOW_STAGE_{tag}"
            cur.execute(f"CREATE TEMPORARY STAGE {stage}")
            cur.execute(f"PUT 'file://{path.as_posix()}' @{stage} "
                        "AUTO_COMPRESS = FALSE OVERWRITE = TRUE")
            if self.mode == "APPEND":
                out["rows"] = _copy(who, cur, target=table, stage=stage, expected=batch.num_rows)
            else:
                out.update(self._merge(who, cur, table=table, stage=stage, tag=tag, batch=batch))
        ctx.log("INFO", f"{out['rows']} rows of {uri} into {table} ({self.mode})")
        return out

    def _merge(self, who: str, cur: Any, *, table: str, stage: str, tag: str,
               batch: pa.Table) -> dict[str, Any]:
        """COPY into a transient table shaped like ``table``, MERGE the batch's columns (the
        table's other columns are left as they are), drop the staging table."""
        staging = f"{_schema_prefix(table)}WAXFLOW_STAGE_{tag}"
        cur.execute(f"CREATE OR REPLACE TRANSIENT TABLE {staging} LIKE {table}")
        try:
            rows = _copy(who, cur, target=staging, stage=stage, expected=batch.num_rows)
            cur.execute(f"SELECT * FROM {staging} LIMIT 0")
            in_batch = {name.upper() for name in batch.column_names}
            columns = [d[0] for d in cur.description if d[0].upper() in in_batch]
            by_upper = {c.upper(): c for c in columns}
            missing = [k for k in self.mergeKeys if k.upper() not in by_upper]
            if missing:
                raise TaskFailure(f"{who}: merge key(s) {', '.join(missing)} not in {table}")
            keys = [by_upper[k.upper()] for k in self.mergeKeys]
            result = cur.execute(merge_sql(table, staging, columns, keys)).fetchone() or ()
        finally:
            with suppress(snowflake.connector.errors.Error):
                cur.execute(f"DROP TABLE IF EXISTS {staging}")
        counts = [int(v) for v in result if isinstance(v, int)] + [0, 0]
        return {"rows": rows, "inserted": counts[0], "updated": counts[1]}


def _copy(who: str, cur: Any, *, target: str, stage: str, expected: int) -> int:
    """COPY the staged Parquet file into ``target``; fail unless all ``expected`` rows load."""
    cur.execute(f"COPY INTO {target} FROM @{stage} FILE_FORMAT = (TYPE = PARQUET) "
                "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE FORCE = TRUE "
                "ON_ERROR = ABORT_STATEMENT")
    loaded = 0
    for row in cur.fetchall():
        if len(row) >= 4 and isinstance(row[3], int):
            loaded += row[3]
    if loaded != expected:
        raise TaskFailure(f"{who}: COPY INTO {target} loaded {loaded} of {expected} rows")
    return loaded


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def merge_sql(table: str, staging: str, columns: list[str], keys: list[str]) -> str:
    """MERGE ``staging`` into ``table`` on ``keys`` (exact column names; NULL matches NULL)."""
    return merge_statement(table, staging, columns=columns, keys=keys, quote=_quoted,
                           target_in_set=True)


@task_type("snowflake.Query")
class Query(_SnowflakeTask, WarehouseQuery):
    """Run one SQL statement (``sql``, rendered) on Snowflake.

    ``fetch``: ``NONE`` (default) outputs no rows; ``ONE`` outputs ``row`` (the first row as
    a map, or null) and ``size``; ``ALL`` outputs ``rows`` (list of maps) and ``size``.
    Values are JSON-friendly (ISO-8601 dates and times, numbers for NUMBER, base64 bytes).
    Always outputs ``queryId`` and ``rowCount`` (the connector's count: rows returned or
    affected). A Snowflake error fails the task with Snowflake's message.
    """

    type: Literal["snowflake.Query"] = Field(description="the task type")
    sql: str = Field(min_length=1, description="one SQL statement (rendered)")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = f"snowflake.Query {self.id}"
        sql = str(ctx.render(self.sql))
        with self._cursor(ctx, who) as cur:
            cur.execute(sql)
            out: dict[str, Any] = {"queryId": cur.sfqid, "rowCount": cur.rowcount}
            out.update(self._fetched_from(cur))
        return out
