"""BigQuery: ``bigquery.Load`` (a stored batch into a table) and ``bigquery.Query``.

Both use the real ``google-cloud-bigquery`` client. ``endpoint`` (default
``$WAXFLOW_BQ_ENDPOINT``) points them at another server, such as the local emulator, with
anonymous credentials; otherwise Application Default Credentials are used. The client's own
retrying of one API call is bounded by ``apiTimeout`` so that an unreachable BigQuery fails
the attempt in bounded time and the task's ``retry`` policy (which re-reads the stored
batch, never Kafka) takes over. Error messages are one line: the action, the table, and
BigQuery's (or the transport's) own words.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from google.api_core.client_options import ClientOptions
from google.api_core.exceptions import GoogleAPIError, NotFound
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import GoogleAuthError
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_RETRY
from pydantic import Field, field_validator, model_validator
from requests.exceptions import RequestException

from waxflow.connectors.bigquery_schema import TIME_TYPES, BqField, infer_schema, shape, write_file
from waxflow.connectors.tabular import OnReject, Split, on_reject_doc
from waxflow.connectors.warehouse import WarehouseLoad, WarehouseQuery, merge_statement
from waxflow.durations import Duration
from waxflow.expressions import mask
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["Load", "Query", "make_client", "parse_table", "shape_rows"]

_UPLOAD_RETRIES = 2


def make_client(project: str | None, endpoint: str | None, location: str | None = None
                ) -> bigquery.Client:
    """A client for ``project``: anonymous against ``endpoint`` (or ``$WAXFLOW_BQ_ENDPOINT``)
    when one is set, else with Application Default Credentials."""
    endpoint = endpoint or os.environ.get("WAXFLOW_BQ_ENDPOINT") or None
    if endpoint:
        anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
        return bigquery.Client(project=project or os.environ.get("WAXFLOW_BQ_PROJECT"),
                               credentials=anonymous, location=location,
                               client_options=ClientOptions(api_endpoint=endpoint))
    return bigquery.Client(project=project, location=location)


def parse_table(name: str, default_project: str | None) -> tuple[str | None, str, str]:
    """``project.dataset.table`` or ``dataset.table`` (backticks allowed) as its parts."""
    parts = name.strip().strip("`").rsplit(".", 2)
    if len(parts) == 2:
        parts.insert(0, default_project or "")
    if len(parts) != 3 or not all(parts[1:]):
        raise TaskFailure(f"table {name!r} is not project.dataset.table or dataset.table")
    return parts[0] or None, parts[1], parts[2]


def shape_rows(table: pa.Table, schema: list[Any], *, drop_unknown: bool
               ) -> tuple[pa.Table, dict[int, str]]:
    """(``shape`` of ``table`` without the rows one of whose values a column of ``schema``
    cannot take, those rows → why). Rows are cast one by one only in a column whose cast
    failed as a whole; a failure that is not about values (unknown columns) is raised."""
    try:
        return shape(table, schema, drop_unknown=drop_unknown), {}
    except TaskFailure as exc:
        failure = exc
    bad: dict[int, str] = {}
    for field in schema:
        if field.name not in table.column_names:
            continue
        column = table.select([field.name])
        try:
            shape(column, [field], drop_unknown=True)
            continue
        except TaskFailure:
            pass
        for i in range(table.num_rows):
            if i in bad:
                continue
            try:
                shape(column.slice(i, 1), [field], drop_unknown=True)
            except TaskFailure:
                bad[i] = f"field {field.name!r}: its value cannot be read as {field.field_type}"
    if not bad:
        raise failure
    keep = pa.array([i for i in range(table.num_rows) if i not in bad], type=pa.int64())
    return shape(table.take(keep), schema, drop_unknown=drop_unknown), bad


@contextmanager
def _api(who: str, action: str) -> Iterator[None]:
    """Turn client and transport errors into one-line :class:`TaskFailure`s."""
    try:
        yield
    except TaskFailure:
        raise
    except (GoogleAPIError, GoogleAuthError, RequestException, OSError) as exc:
        raise TaskFailure(f"{who}: {action} failed: {mask(str(exc))}") from None


class _BigQueryTask(TaskBase):
    """Connection properties shared by the BigQuery tasks."""

    projectId: str | None = Field(
        default=None,
        description="billing project (rendered), also the project of table names that do not "
                    "name one; default the credentials' project")
    location: str | None = Field(
        default=None,
        description="location of the jobs and datasets, such as `EU` or `us-central1` "
                    "(rendered); default BigQuery's choice")
    endpoint: str | None = Field(
        default=None,
        description="API root to use instead of Google's, such as an emulator's "
                    "`http://127.0.0.1:19050` (rendered; anonymous credentials); default "
                    "`$WAXFLOW_BQ_ENDPOINT`, else Google with Application Default Credentials")
    apiTimeout: Duration = Field(
        default=dt.timedelta(seconds=60),
        description="how long the client retries one API call before the attempt fails "
                    "(ISO-8601 duration)")

    model_config = {**TaskBase.model_config, "populate_by_name": True}

    def _client(self, ctx: RunContext, who: str, project: str | None = None
                ) -> bigquery.Client:
        """A client for ``projectId``, else ``project`` (e.g. the table's), else the default."""
        def render(value: str | None) -> str | None:
            return str(ctx.render(value)) if value else None

        with _api(who, "creating the BigQuery client"):
            return make_client(render(self.projectId) or project, render(self.endpoint),
                               render(self.location))

    def _retry(self) -> Any:
        return DEFAULT_RETRY.with_timeout(self.apiTimeout.total_seconds())


@task_type("bigquery.Load")
class Load(_BigQueryTask, WarehouseLoad):
    """Load a stored batch file (``from``, usually ``{{ trigger.uri }}``) into a table.

    Each record is one row (the value's fields plus ``_topic``, ``_partition``, ``_offset``,
    ``_timestamp``, ``_key``), written as Parquet or NDJSON and sent with one load job.
    The table is created when missing (``createDisposition: CREATE_IF_NEEDED``) from
    ``schema``, else from the batch's types (``autodetect``), with the given time
    partitioning and clustering; an existing table is never altered. ``mode``:

    * ``LOAD`` — one load job with ``writeDisposition``; a replayed batch is loaded again.
    * ``MERGE`` — load into a staging table, then one MERGE statement on ``mergeKeys``
      (default the record's Kafka coordinates; NULL matches NULL) updates matching rows and
      inserts the others; within a batch the last record per key wins. Loading the same batch
      twice leaves one copy. The staging table is dropped afterwards.

    Records that do not fit are set aside before anything is sent (``onReject``): a value
    that is not a JSON object among objects, a field whose type differs from most records',
    and with ``schema`` a value its column cannot be cast to (``"abc"`` for INTEGER, a bad
    TIMESTAMP). ``REJECTS_FILE`` (default) stores them next to the batch file and loads the
    others; ``FAIL`` fails the task. Without ``schema``, a value that fits the batch but not
    an existing table's column fails the load job with BigQuery's message.

    An empty batch fails the task (``failOnEmpty``, as Kestra does) or loads nothing.
    Outputs ``rows`` (rows sent), ``destinationTable`` (project.dataset.table), ``jobId`` (the
    load job, or the MERGE query job), ``rejected`` (records set aside), ``rejectsUri`` (their
    file, or null) and, for MERGE, ``affectedRows``.
    """

    type: Literal["bigquery.Load"] = Field(description="the task type")
    destinationTable: str = Field(
        min_length=3,
        description="target table as `project.dataset.table` or `dataset.table` (rendered; "
                    "backticks allowed)")
    format: Literal["NEWLINE_DELIMITED_JSON", "PARQUET"] = Field(
        default="PARQUET", description="file format the batch is sent to BigQuery in "
                                       "(`JSON`, Kestra's name for it, means "
                                       "`NEWLINE_DELIMITED_JSON`)")
    writeDisposition: Literal["WRITE_APPEND", "WRITE_TRUNCATE", "WRITE_EMPTY"] = Field(
        default="WRITE_APPEND",
        description="`mode: LOAD`: append rows, replace the table's rows, or fail unless the "
                    "table is empty; `mode: MERGE` needs `WRITE_APPEND`")
    createDisposition: Literal["CREATE_IF_NEEDED", "CREATE_NEVER"] = Field(
        default="CREATE_IF_NEEDED",
        description="create a missing table (from `schema`, else the batch's types), or "
                    "fail when it is missing")
    schema_: list[BqField] | None = Field(
        default=None, alias="schema", min_length=1,
        description="columns of the table, the batch cast to them; default inferred from the "
                    "batch when `autodetect` is true")
    autodetect: bool = Field(
        default=True,
        description="without `schema`, infer the columns from the batch's Arrow types")
    ignoreUnknownValues: bool = Field(
        default=False,
        description="with `schema`, drop batch columns it lacks instead of failing the task")
    timePartitioningField: str | None = Field(
        default=None,
        description="TIMESTAMP, DATE or DATETIME column a created table is partitioned on; "
                    "default no partitioning")
    timePartitioningType: Literal["DAY", "HOUR", "MONTH", "YEAR"] = Field(
        default="DAY", description="partition granularity for `timePartitioningField`")
    clusteringFields: list[str] = Field(
        default_factory=list, max_length=4,
        description="up to 4 columns a created table is clustered by")
    failOnEmpty: bool = Field(
        default=True,
        description="fail the task when the batch holds no records (as Kestra does); "
                    "false loads nothing and succeeds")
    mode: Literal["LOAD", "MERGE"] = Field(
        default="LOAD",
        description="`LOAD` runs one load job with `writeDisposition` (a replayed batch is "
                    "loaded again); `MERGE` loads a staging table, then merges it on "
                    "`mergeKeys`")
    onReject: OnReject = Field(
        default="REJECTS_FILE",
        description=on_reject_doc(more=", or, with `schema`, a value its column cannot "
                                          "be cast to (`\"abc\"` for INTEGER)"))

    @field_validator("format", mode="before")
    @classmethod
    def _kestra_format(cls, value: Any) -> Any:
        return "NEWLINE_DELIMITED_JSON" if value == "JSON" else value

    @model_validator(mode="after")
    def _consistent(self) -> Load:
        if self.mode == "MERGE" and self.writeDisposition != "WRITE_APPEND":
            raise ValueError("mode MERGE updates rows by key: writeDisposition must stay "
                             "WRITE_APPEND")
        return self

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = self._who()
        uri = str(ctx.render(self.from_))
        name = str(ctx.render(self.destinationTable))
        try:
            named_project = parse_table(name, None)[0]
        except TaskFailure as exc:
            raise TaskFailure(f"{who}: destinationTable: {exc}") from None
        with self._client(ctx, who, named_project) as client:
            project, dataset, table_id = parse_table(name, client.project)
            if not project:
                raise TaskFailure(f"{who}: no project: set projectId or name the table "
                                  "project.dataset.table")
            dest = f"{project}.{dataset}.{table_id}"
            out: dict[str, Any] = {"rows": 0, "destinationTable": dest, "jobId": None,
                                   "rejected": 0, "rejectsUri": None}
            split = self._split(ctx, uri, fail_on_empty=self.failOnEmpty)
            if split is None:
                return out
            batch, schema, split = self._shaped(who, split)
            out.update(self._settle(ctx, uri, split))
            batch = self._keyed(batch)
            if batch.num_rows == 0:
                return out
            with tempfile.TemporaryDirectory(prefix="waxflow-bq-") as tmp:
                path = write_file(batch, Path(tmp), self.format)
                self._ensure_table(who, client, dest=dest, schema=schema)
                if self.mode == "LOAD":
                    job = self._load(who, client, path=path, dest=dest,
                                     disposition=self.writeDisposition)
                    out.update(rows=batch.num_rows, jobId=job.job_id)
                else:
                    out.update(self._merge(who, client, path=path, dest=dest, schema=schema,
                                           batch=batch))
        ctx.log("INFO", f"{out['rows']} rows of {uri} into {dest} ({self.mode})")
        return out

    def _shaped(self, who: str, split: Split) -> tuple[pa.Table, list[Any], Split]:
        """(the batch as the table to send, its schema, ``split`` with the rows ``schema``
        cannot take moved to its rejects)."""
        batch = split.table
        try:
            if self.schema_:
                schema = [f.to_api() for f in self.schema_]
                batch, misfits = shape_rows(batch, schema, drop_unknown=self.ignoreUnknownValues)
                split = split.drop(misfits)
            elif self.autodetect:
                schema = infer_schema(batch)
            else:
                schema = []
        except TaskFailure as exc:
            raise TaskFailure(f"{who}: {exc}") from None
        field = self.timePartitioningField
        if field:
            kinds = {f.name: f.field_type for f in schema}
            if field not in kinds and schema:
                raise TaskFailure(f"{who}: timePartitioningField {field} is not a column")
            if schema and kinds[field] not in TIME_TYPES:
                raise TaskFailure(f"{who}: timePartitioningField {field} is {kinds[field]}; "
                                  "it must be TIMESTAMP, DATE or DATETIME (give a schema)")
        return batch, schema, split

    def _ensure_table(self, who: str, client: bigquery.Client, *, dest: str,
                      schema: list[Any]) -> None:
        """Create ``dest`` when missing (emulator-safe: load jobs never create tables)."""
        with _api(who, f"looking up {dest}"):
            try:
                client.get_table(dest, retry=self._retry())
                return
            except NotFound:
                pass
        if self.createDisposition == "CREATE_NEVER":
            raise TaskFailure(f"{who}: table {dest} does not exist (createDisposition is "
                              "CREATE_NEVER)")
        if not schema:
            raise TaskFailure(f"{who}: table {dest} does not exist; give a schema or set "
                              "autodetect: true")
        table = bigquery.Table(dest, schema=schema)
        if self.timePartitioningField:
            table.time_partitioning = bigquery.TimePartitioning(
                type_=self.timePartitioningType, field=self.timePartitioningField)
        if self.clusteringFields:
            table.clustering_fields = list(self.clusteringFields)
        with _api(who, f"creating {dest}"):
            client.create_table(table, exists_ok=True, retry=self._retry())

    def _load(self, who: str, client: bigquery.Client, *, path: Path, dest: str,
              disposition: str) -> Any:
        """One load job from ``path`` (a file object, no ``size``: a resumable upload)."""
        config = bigquery.LoadJobConfig(source_format=self.format,
                                        write_disposition=disposition,
                                        create_disposition="CREATE_NEVER")
        if self.format == "PARQUET":
            options = bigquery.ParquetOptions()  # type: ignore[no-untyped-call]
            options.enable_list_inference = True
            config.parquet_options = options
        with _api(who, f"loading into {dest}"), path.open("rb") as fp:
            job = client.load_table_from_file(
                fp, dest, job_config=config, job_id_prefix="waxflow_load_",
                num_retries=_UPLOAD_RETRIES, timeout=self.apiTimeout.total_seconds())
            job.result(retry=self._retry())
        return job

    def _merge(self, who: str, client: bigquery.Client, *, path: Path, dest: str,
               schema: list[Any], batch: pa.Table) -> dict[str, Any]:
        """Load into a fresh staging table, MERGE it into ``dest``, drop it."""
        stage = f"{dest}__waxflow_stage_{uuid.uuid4().hex[:12]}"
        staging = bigquery.Table(stage, schema=schema or infer_schema(batch))
        staging.expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        try:
            with _api(who, f"creating staging table {stage}"):
                client.create_table(staging, retry=self._retry())
            self._load(who, client, path=path, dest=stage, disposition="WRITE_TRUNCATE")
            with _api(who, f"merging into {dest}"):
                job = client.query(merge_sql(dest, stage, batch.column_names, self.mergeKeys),
                                   retry=self._retry())
                job.result(retry=self._retry())
        finally:
            with suppress(GoogleAPIError, RequestException, OSError):  # else it expires
                client.delete_table(stage, not_found_ok=True, retry=self._retry())
        return {"rows": batch.num_rows, "jobId": job.job_id,
                "affectedRows": job.num_dml_affected_rows}


def _q(name: str) -> str:
    return "`" + name.replace("`", "") + "`"


def merge_sql(dest: str, stage: str, columns: list[str], keys: list[str]) -> str:
    """MERGE ``stage`` into ``dest`` on ``keys`` (NULL matches NULL): update, else insert."""
    return merge_statement(_q(dest), _q(stage), columns=columns, keys=keys, quote=_q)


@task_type("bigquery.Query")
class Query(_BigQueryTask, WarehouseQuery):
    """Run one GoogleSQL statement (``sql``, rendered) as a query job and wait for it.

    ``fetch``: ``NONE`` (default) outputs no rows; ``ONE`` outputs ``row`` (the first row as
    a map, or null) and ``size``; ``ALL`` outputs ``rows`` (list of maps) and ``size``.
    Values are JSON-friendly (ISO-8601 dates and times, numbers for NUMERIC, base64 bytes).
    Always outputs ``jobId``, and ``affectedRows`` for DML. A failed job fails the task with
    BigQuery's message.
    """

    type: Literal["bigquery.Query"] = Field(description="the task type")
    sql: str = Field(min_length=1, description="one GoogleSQL statement (rendered)")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = f"bigquery.Query {self.id}"
        sql = str(ctx.render(self.sql))
        with self._client(ctx, who) as client, _api(who, "query"):
            job = client.query(sql, retry=self._retry())
            result = job.result(retry=self._retry())
            out: dict[str, Any] = {"jobId": job.job_id}
            if job.num_dml_affected_rows is not None:
                out["affectedRows"] = job.num_dml_affected_rows
            out.update(self._fetched(dict(row.items()) for row in result))
        return out
