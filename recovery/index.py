"""A local DuckDB index of the execution-log topic: the read side of the execution history.

The index is a cache of the log (docs/execution-log.md): it can always be deleted and rebuilt
by syncing from offset 0. It keeps one summary row per execution (columns, no document) and
where the execution's latest document sits in the log; :meth:`ExecutionIndex.show` reads that
document back from the log. Guarantees:

- ``sync`` reads each partition of the log from the next offset stored in ``positions`` up
  to the end offset read at the start of the sync (the last stable offset: the reader is
  ``read_committed``), never commits to a consumer group, and stores summaries and positions
  in the same DuckDB transaction, so a crash mid-sync loses nothing and duplicates nothing.
- Documents are decoded in bulk: a batch of record values goes to DuckDB as one Arrow
  column (no file, no Python step per value) and DuckDB's JSON decoder reads the fields the
  index keeps. The log is read meanwhile, the next batch gathered while one is written: by
  ``READER_PROCESSES`` reader processes (:mod:`.index_reader`, which also decode the
  documents with the same decoder and hand over their columns) when a sync has at least
  ``PROCESS_READER_RECORDS`` records to read (a first sync: this process then only merges,
  with one DuckDB thread, and never shares its GIL with a busy reader), else by a reader
  thread (no process to start for an incremental sync). A value that is not a JSON object
  is skipped; a field of another type than the engine writes reads as absent (but a number
  or boolean where text is expected reads as its JSON text, and a field given twice as its
  first value); a batch holding a value that is not JSON at all, or not UTF-8, is decoded
  one value at a time instead, with the same result. A document that a later record of its
  key supersedes in the same batch (an execution's RUNNING document before its terminal
  one) is decoded for its ``id``, ``runId`` and ``startDate`` only, and left out when it is
  of the same execution and run as a later document (it changes no row, no count: only
  where its run began, which the later document's row keeps). A reader process hands its
  batches over decoded (Arrow IPC files in memory), which the merge reads in place; a
  batch of new executions with one document each (most of a first sync) is appended
  without the upsert plan, and the process readers run without the cyclic garbage
  collector (:mod:`.index_reader`).
- ``flows`` answers from per-flow state counts that every merge keeps in the same
  transaction as the rows (no scan of the rows); ``list``/``count`` with ``text`` match a
  substring of the trigger record key's JSON text or a prefix of the execution id, the keys
  looked up in a table of the distinct keys (kept in the same transaction as the rows)
  rather than in every row.
- Per execution id, the row holds the document with the highest log offset (a key always
  lands in one partition, so offsets of one key are comparable).
- ``runs`` counts the distinct ``runId`` values seen for an execution, and each run keeps
  where it began (its first document's offset and start date) and its latest state,
  whether the log was synced one document at a time, in batches that split a run or in
  one. Compaction keeps only the latest document per key, so an index built from an
  already compacted log may count fewer runs than happened.
- Dates are stored as UTC microseconds and returned as ISO-8601 UTC strings.
- An index file written by another version (an older SQLite index, another schema) is
  dropped and rebuilt from the log, with one note on stderr.
"""

from __future__ import annotations

import array
import builtins
import contextlib
import gc
import itertools
import json
import logging
import operator
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from waxflow.errors import WaxflowError
from waxflow.expressions import mask

SCHEMA_VERSION = 6
MIN_PREFIX = 6
MAX_TRACE_DEPTH = 10
#: documents decoded and written per transaction during a sync
BATCH_DOCS = 200_000
#: ... or fewer when their values add up to this many bytes
BATCH_BYTES = 128 << 20
_CONSUME = 10_000
#: a sync with at least this many records to read reads them in a child process
#: (:mod:`.index_reader`); fewer are read by a thread (no process to start)
PROCESS_READER_RECORDS = 400_000
#: ... by this many processes, the partitions shared among them
READER_PROCESSES = 2
#: fetch settings of a log read (this process's and the reader processes'): large fetches,
#: the end of each partition reported
READ_FETCH = {
    "enable.partition.eof": True,
    "fetch.wait.max.ms": 100,
    "fetch.max.bytes": 64 << 20,
    "max.partition.fetch.bytes": 8 << 20,
    "queued.max.messages.kbytes": 256 << 10,
}
_KAFKA_LOG = logging.getLogger("waxflow.index.kafka")
_KAFKA_LOG.addHandler(logging.NullHandler())
#: errors that mean the cluster refused this client (its credentials, its TLS handshake, an
#: ACL): a sync or a read-back stops at once on one instead of waiting out its timeout. Not
#: GROUP_AUTHORIZATION_FAILED: the readers' throwaway group is never joined nor committed
#: (the client only looks for its coordinator), so no group ACL is needed to read the log
_REFUSED = frozenset({
    KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
})
#: client settings whose values are masked in every message of the index
_SECRET_KEYS = ("sasl.password", "ssl.key.password", "ssl.keystore.password",
                "sasl.oauthbearer.client.secret")

_SCHEMA = """
CREATE TABLE meta (name VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE positions (
  topic VARCHAR NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL);
CREATE TABLE executions (
  id VARCHAR NOT NULL, namespace VARCHAR, flow_id VARCHAR, state VARCHAR, terminal BOOLEAN,
  run_id VARCHAR, start_us BIGINT, end_us BIGINT, duration_ms DOUBLE, runs INTEGER,
  trigger_type VARCHAR, topic VARCHAR, partition INTEGER, "offset" BIGINT,
  record_key VARCHAR USING COMPRESSION uncompressed,
  record_ts BIGINT, offsets VARCHAR, messages_count BIGINT, delivery_count BIGINT,
  group_id VARCHAR, upstream VARCHAR, error_task VARCHAR, error_message VARCHAR,
  log_topic VARCHAR NOT NULL, log_partition INTEGER NOT NULL, log_offset BIGINT NOT NULL,
  last_us BIGINT, id_prefix UINTEGER, key_id UINTEGER, run_first_gap BIGINT,
  run_first_us BIGINT);
CREATE TABLE record_keys (key_id UINTEGER NOT NULL, "key" VARCHAR NOT NULL);
CREATE TABLE runs (
  execution_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, first_us BIGINT, last_state VARCHAR,
  last_us BIGINT, first_offset BIGINT NOT NULL, last_offset BIGINT NOT NULL);
CREATE TABLE batch_ranges (
  execution_id VARCHAR NOT NULL, topic VARCHAR NOT NULL, partition INTEGER NOT NULL,
  first_offset BIGINT NOT NULL, last_offset BIGINT NOT NULL);
CREATE TABLE flow_counts (
  namespace VARCHAR, flow_id VARCHAR, state VARCHAR, topic VARCHAR, n BIGINT NOT NULL,
  last_us BIGINT);
CREATE TABLE flow_topics (namespace VARCHAR, flow_id VARCHAR, topic VARCHAR NOT NULL);
"""
#: ``run_first_gap`` and ``run_first_us`` keep where the row's run began: its first document's
#: log offset (``log_offset`` minus the gap) and start (NULL: none before the row's document,
#: or the same start), as ``runs`` keeps them for the execution's other runs.
#: ``flow_counts`` holds, per (namespace, flow, state, trigger topic), how many rows of
#: ``executions`` have it and an upper bound of their latest start (exact unless a row was
#: replaced by a document that starts earlier): each merge adds the rows it writes and
#: subtracts the rows it replaces, in the same transaction; ``flow_topics`` the topics of
#: the batch ranges seen per flow. ``record_keys`` holds each distinct ``record_key`` once
#: with its ``key_id`` (the column of ``executions`` beside the key): a key-substring search
#: scans that narrow table, then selects the rows by their integer ``key_id`` (keys repeat
#: across executions: a customer, an order, a device). ``record_key`` is stored
#: uncompressed: a search matching many keys scans it (a newest-first page stops early).
_TABLES = ("meta", "positions", "executions", "record_keys", "runs", "batch_ranges",
           "flow_counts", "flow_topics")
_FLOW_GROUP = "namespace, flow_id, state, topic"
_SECOND = operator.itemgetter(1)

#: what the bulk decoder takes from each document (everything else stays in the log)
_COLUMNS = {
    "id": "VARCHAR", "namespace": "VARCHAR", "flowId": "VARCHAR", "state": "VARCHAR",
    "terminal": "BOOLEAN", "runId": "VARCHAR", "startDate": "VARCHAR", "endDate": "VARCHAR",
    "durationMs": "DOUBLE",
    "trigger": 'STRUCT(type VARCHAR, topic VARCHAR, partition BIGINT, "offset" BIGINT,'
               ' "key" VARCHAR, "timestamp" BIGINT, offsets JSON, messagesCount BIGINT,'
               ' deliveryCount BIGINT, "group" VARCHAR)',
    "error": "STRUCT(taskId VARCHAR, message VARCHAR)", "upstreamExecutionId": "VARCHAR",
}
_STRUCT = json.dumps(_COLUMNS)
#: ... and from a document a later one of its key supersedes in the same batch (:func:`_stage`)
_LIGHT = json.dumps({"id": _COLUMNS["id"], "runId": _COLUMNS["runId"],
                     "startDate": _COLUMNS["startDate"]})
#: the first 8 hex digits of an execution id as an integer (NULL for other ids): lookups by
#: id or prefix filter on this column first, which DuckDB scans far faster than the text
_PREFIX_SQL = ("CASE WHEN regexp_full_match(left({0}, 8), '[0-9a-fA-F]{{8}}')"
               " THEN TRY_CAST('0x' || left({0}, 8) AS UINTEGER) END")
#: a document's place in the log: its offset, then its partition (unique per document)
_POS = "({0}.log_offset::HUGEINT * 4294967296 + {0}.log_partition)"
_SUMMARY_COLS = (
    "id, namespace, flow_id, state, terminal, run_id, start_us, end_us, duration_ms, runs,"
    " trigger_type, topic, partition, \"offset\", record_key, record_ts, offsets,"
    " messages_count, delivery_count, group_id, upstream, error_task, error_message,"
    " log_topic, log_partition, log_offset, last_us")
_ORDER = " ORDER BY start_us DESC NULLS LAST, log_offset DESC"


class IndexSyncError(WaxflowError, RuntimeError):
    """The log could not be read (broker unreachable, timeout, ...); one line for users."""


class IndexAccessError(IndexSyncError):
    """The cluster refused the client settings while reading the log ``topic``: the
    credentials or TLS (authentication) or an ACL (authorization). One line, no secret."""

    def __init__(self, message: str, *, topic: str) -> None:
        super().__init__(message)
        self.topic = topic


class IndexBusyError(WaxflowError, RuntimeError):
    """Another process held the index file for longer than the wait; one line for users."""


class AmbiguousIdError(WaxflowError, LookupError):
    """An id prefix matches more than one execution; ``candidates`` lists (some of) them."""

    def __init__(self, prefix: str, candidates: list[str], more: bool = False) -> None:
        listed = ", ".join(candidates) + (", ..." if more else "")
        super().__init__(f"id prefix {prefix!r} is ambiguous: {listed}")
        self.prefix = prefix
        self.candidates = candidates


def default_index_path() -> Path:
    """``$WAXFLOW_HOME/index.duckdb``, else ``.waxflow/index.duckdb`` in the cwd."""
    home = os.environ.get("WAXFLOW_HOME")
    return (Path(home) if home else Path.cwd() / ".waxflow") / "index.duckdb"


def normalize_date(value: object) -> str | None:
    """An ISO date string or datetime as sortable UTC text; None when absent or unparsable.

    Naive values are taken as UTC.
    """
    when = _as_datetime(value)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if when is not None else None


def _as_datetime(value: object) -> datetime | None:
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _micros(value: object) -> int | None:
    """A datetime or ISO string (naive = UTC) as UTC epoch microseconds."""
    when = _as_datetime(value)
    if when is None:
        return None
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _iso(us: int | None) -> str | None:
    """UTC epoch microseconds as ISO-8601 (``+00:00``)."""
    if us is None:
        return None
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat()


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass
class _Batch:
    """Record coordinates and values gathered for one bulk write."""

    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int | None] = field(default_factory=list)  # ms; None or < 0: none
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    size: int = 0

    def add(self, partition: int, offset: int, key: bytes | None, value: bytes,
            timestamp_ms: int | None) -> None:
        self.partitions.append(partition)
        self.offsets.append(offset)
        self.timestamps.append(timestamp_ms)
        self.keys.append(key)
        self.values.append(value)
        self.size += len(value)

    def __len__(self) -> int:
        return len(self.values)

    def table(self) -> pa.Table:
        """The batch as Arrow, in log order: the record coordinates, ``v`` (the values as
        text, built from whole buffers) and ``sup``: whether a later record of the batch has
        the same record key (the log's key is the execution id: the record is most likely
        superseded; never for a record without a key)."""
        try:  # record keys are UTF-8 text in practice: converted without a Python loop
            rkeys = pa.array(self.keys, pa.string())
        except (pa.ArrowInvalid, UnicodeDecodeError):
            rkeys = pa.array([k.decode("utf-8", "replace") if k is not None else None
                              for k in self.keys], pa.string())
        keys = self.keys
        ms = pa.array(self.timestamps, pa.int64())
        last = {k: i for i, k in enumerate(keys)}  # the last record of each key
        sup = pa.array([k is not None and last[k] != i for i, k in enumerate(keys)],
                       pa.bool_()) if len(last) < len(keys) else pa.repeat(False, len(keys))
        return pa.table({
            "log_partition": pa.array(self.partitions, pa.int32()),
            "log_offset": pa.array(self.offsets, pa.int64()),
            "record_ms": pc.if_else(pc.greater_equal(ms, 0), ms, None),
            "rkey": rkeys,
            "v": _binary(self.values),
            "sup": sup,
        })


def _decode_into(db: duckdb.DuckDBPyConnection, table: pa.Table) -> pa.Table:
    """The documents of ``table`` (:meth:`_Batch.table`) decoded (:func:`_stage`) by
    ``db``; a batch the bulk decoder refuses (a value that is not JSON, or not UTF-8) is
    staged again from its JSON objects, cleaned one by one."""
    try:
        return _stage(db, table)
    except (duckdb.Error, UnicodeDecodeError):
        values = table.column("v").cast(pa.large_binary()).to_pylist()  # maybe not UTF-8
        keep = [i for i, v in enumerate(values) if _json_object(v)]
        clean = table.take(pa.array(keep, pa.int64())).drop_columns(
            [c for c in ("v", "sup") if c in table.column_names])
        return _stage(db, clean.append_column(
            "v", _binary([_clean(values[i]) for i in keep])))


#: the columns of a decoded batch (:func:`_stage`) from the temp table ``dj`` (``c``)
_DECODED = (
    "coalesce(j.id, c.rkey) AS eid, j.namespace, j.flowId AS flow_id, j.state,"
    " coalesce(j.terminal, false) AS terminal, coalesce(j.runId, '') AS run_id,"
    " epoch_us(try_cast(j.startDate AS TIMESTAMPTZ)) AS start_us,"
    " epoch_us(try_cast(j.endDate AS TIMESTAMPTZ)) AS end_us,"
    " j.durationMs AS duration_ms, j.trigger.type AS trigger_type,"
    " j.trigger.topic AS topic, j.trigger.partition::INTEGER AS partition,"
    " j.trigger.\"offset\" AS \"offset\", j.trigger.\"key\" AS record_key,"
    " j.trigger.\"timestamp\" AS record_ts,"
    " CAST(CASE WHEN json_type(j.trigger.offsets) = 'OBJECT'"
    "  THEN j.trigger.offsets END AS VARCHAR) AS offsets,"
    " j.trigger.messagesCount AS messages_count,"
    " j.trigger.deliveryCount AS delivery_count, j.trigger.\"group\" AS group_id,"
    " j.upstreamExecutionId AS upstream, j.error.taskId AS error_task,"
    " j.error.message AS error_message, c.log_partition, c.log_offset,"
    f" c.record_ms, {_PREFIX_SQL.format('coalesce(j.id, c.rkey)')} AS id_prefix")
#: ... and where the document's run began in the batch (``first_offset``, ``first_us``: its
#: first document's offset and the first start date in log order), from ``fr`` (``f``): the
#: documents of its run left out as superseded
_FIRST = (
    "SELECT * EXCLUDE (f_offset, f_us),"
    " CASE WHEN f_offset < log_offset THEN f_offset ELSE log_offset END AS first_offset,"
    " CASE WHEN f_offset < log_offset THEN coalesce(f_us, start_us) ELSE start_us END"
    " AS first_us FROM ({})")


def _stage(db: duckdb.DuckDBPyConnection, raw: pa.Table) -> pa.Table:
    """The documents of ``raw`` (:meth:`_Batch.table`) decoded: their typed columns beside
    their records' coordinates (:data:`_DECODED`), with the count of documents left out
    as superseded in the schema metadata (:func:`_dropped_of`). Values that are JSON but
    not an object are left out; a field of another type than the engine writes reads as
    absent (a number where text is expected reads as its JSON text), a duplicated field
    as its first value.

    A record with ``sup`` (a later record of the batch has its key) is first decoded for
    its ``id`` and ``runId`` only, by the same decoder: when it is a JSON object of the same
    execution and run as a document of the batch at a higher log offset, it changes
    neither that execution's row nor its runs but for where its run began, which that
    document carries (``first_offset``, ``first_us``), and is left out (counted as
    dropped) - unless the batch holds documents of another run of that execution (then
    they are all kept, as :meth:`ExecutionIndex._merge_runs` folds every document of each
    run)."""
    n_sup = int(pc.sum(raw.column("sup")).as_py() or 0) if (
        "sup" in raw.column_names) else 0
    db.register("raw", raw)
    try:
        # the JSON decoded once into a struct column (referenced field by field below,
        # it would be decoded again per field)
        decode = ("SELECT log_partition, log_offset, record_ms, rkey, json_transform(v, ?)"
                  " AS j FROM {} WHERE {} AND (starts_with(v, '{{') OR json_type(v) = 'OBJECT')")
        db.execute("CREATE OR REPLACE TEMP TABLE dj AS "
                   + decode.format("raw", "NOT sup" if n_sup else "true"), [_STRUCT])
        dropped, firsts = 0, False
        if n_sup:
            # the light decode of each superseded record
            db.execute(
                "CREATE OR REPLACE TEMP TABLE sj AS SELECT log_partition, log_offset,"
                " starts_with(v, '{') AS obj, rkey, json_transform(v, ?) AS j"
                " FROM raw WHERE sup", [_LIGHT])
            # decoded whole unless a later document of the batch is of the same execution
            # and run (a document at the same offset of another partition: decoded whole
            # too); then, of the others, every document of an execution with documents of
            # several runs among those decoded
            ids = ("coalesce(j.id, rkey) AS eid, coalesce(j.runId, '') AS run_id")
            db.execute(
                "CREATE OR REPLACE TEMP TABLE sd AS SELECT s.log_partition, s.log_offset,"
                " s.eid, s.run_id, s.start_us,"
                " s.obj AND coalesce(m.o > s.log_offset, false) AS same"
                f" FROM (SELECT log_partition, log_offset, obj, {ids},"
                "  epoch_us(try_cast(j.startDate AS TIMESTAMPTZ)) AS start_us FROM sj) s"
                f" LEFT JOIN (SELECT eid, run_id, max(log_offset) AS o FROM (SELECT {ids},"
                "  log_offset FROM dj WHERE coalesce(j.id, rkey) <> '') GROUP BY ALL) m"
                " USING (eid, run_id)")
            more = 0
            for which in ("NOT same", "same AND eid IN (SELECT eid FROM (SELECT"
                          f" {ids} FROM dj WHERE coalesce(j.id, rkey) <> '') GROUP BY eid"
                          " HAVING count(DISTINCT run_id) > 1)"):
                db.execute("CREATE OR REPLACE TEMP TABLE todo AS SELECT log_partition,"
                           f" log_offset FROM sd WHERE {which}")
                row = db.execute("SELECT count(*) FROM todo").fetchone()
                if row and row[0]:
                    more += int(row[0])
                    db.execute("INSERT INTO dj " + decode.format(
                        "raw SEMI JOIN todo USING (log_partition, log_offset)", "sup"),
                        [_STRUCT])
                    db.execute("DELETE FROM sd WHERE (log_partition, log_offset) IN"
                               " (SELECT (log_partition, log_offset) FROM todo)")
            dropped = n_sup - more
            # where each run of the documents left out began (they precede the document
            # of their run kept: its row keeps where the run began)
            firsts = dropped > 0
            if firsts:
                db.execute(
                    "CREATE OR REPLACE TEMP TABLE fr AS SELECT eid, run_id,"
                    " min(log_offset) AS f_offset, arg_min(start_us, log_offset)"
                    " FILTER (WHERE start_us IS NOT NULL) AS f_us FROM sd WHERE same"
                    " GROUP BY ALL")
    finally:
        db.unregister("raw")
    if firsts:
        query = _FIRST.format(
            f"SELECT {_DECODED}, f.f_offset, f.f_us FROM dj c LEFT JOIN fr f"
            " ON f.eid = coalesce(c.j.id, c.rkey) AND f.run_id = coalesce(c.j.runId, '')"
            " WHERE coalesce(c.j.id, c.rkey) <> ''")
    else:
        query = _FIRST.format(f"SELECT {_DECODED}, NULL::BIGINT AS f_offset,"
                              " NULL::BIGINT AS f_us FROM dj c WHERE coalesce(j.id, c.rkey) <> ''")
    table = db.execute(query).arrow().read_all()
    return table.replace_schema_metadata({_DROPPED: str(dropped).encode()})


#: the Arrow schema metadata under which a decoded batch carries the count of documents
#: left out of it as superseded
_DROPPED = b"waxflow.dropped"


def _dropped_of(table: pa.Table) -> int:
    meta = table.schema.metadata or {}
    return int(meta.get(_DROPPED, b"0"))


def _load(path: str | None) -> pa.Table | None:
    """The Arrow batch a reader process wrote to ``path`` (mapped, not copied); the file is
    removed (the mapping stays readable)."""
    if path is None:
        return None
    table = pa.ipc.open_file(pa.memory_map(path)).read_all()
    os.unlink(path)
    return table


def _binary(values: builtins.list[bytes]) -> pa.Array:
    """``values`` as an Arrow text array: their bytes joined once, and their offsets. Not
    checked to be UTF-8 here: DuckDB's JSON decoder reads every byte of every value
    (:meth:`ExecutionIndex._stage`) and refuses a value that is not UTF-8."""
    ends = array.array("q", itertools.accumulate(map(len, values), initial=0))
    return pa.Array.from_buffers(pa.large_string(), len(values),
                                 [None, pa.py_buffer(ends), pa.py_buffer(b"".join(values))])


@dataclass
class _Gathered:
    """A batch read by the reader thread (:meth:`_Batch.table`) and its positions."""

    nexts: dict[int, int]
    table: pa.Table | None


class ExecutionIndex:
    """The DuckDB index at ``path`` (created with its parent directory).

    DuckDB lets one process at a time open the file: opening waits up to ``lock_timeout``
    seconds for another waxflow process to close it, then raises :class:`IndexBusyError`.
    Open one instance per operation (``with ExecutionIndex(path) as ix: ...``) rather than
    holding it. ``bootstrap`` is the broker :meth:`show` reads documents back from (default:
    the last sync's). Not thread-safe: one instance per thread.

    ``client``: librdkafka settings under every consumer the index makes (a secured
    cluster's ``security.protocol``, ``sasl.*``, ``ssl.*``, ...). The reader's own settings
    win over them (bootstrap servers, group id, no commits, ``read_committed``, timeouts,
    fetch sizes, error and log callbacks), so no setting there can make the index commit to
    a group. Their password values are masked in every error the index raises; the cluster
    refusing them (credentials, TLS, an ACL) is :class:`IndexAccessError` at once, not a
    timeout.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 bootstrap: str | None = None, client: Mapping[str, Any] | None = None,
                 lock_timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else default_index_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.last_sync_complete = True
        self._bootstrap = bootstrap
        self._client = dict(client or {})
        self._reader: Consumer | None = None
        self._decoded: pa.Table | None = None  # the staged batch (``d``, a view of it)
        self._multi = False  # the staged batch holds several documents of an execution
        self._retire_foreign_file()
        self._db = self._connect(lock_timeout)
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _connect(self, lock_timeout: float) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                db = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise OSError(str(exc).splitlines()[0]) from None
                if time.monotonic() >= deadline:
                    raise IndexBusyError(
                        f"execution index {self.path} is in use by another process"
                        f" (waited {lock_timeout:g}s)") from None
                time.sleep(0.1)
        db.execute("SET preserve_insertion_order = true")
        # checkpoint when the file is closed (or the log of changes passes 1 GB), not after
        # every batch past 16 MB: each checkpoint costs more as the table grows, and a
        # sync's commits are durable in the log of changes either way
        db.execute("SET checkpoint_threshold = '1GB'")
        return db

    def _retire_foreign_file(self) -> None:
        """Remove an index this version cannot read (an older SQLite index), saying so once."""
        if self.path.name == "index.duckdb":
            old = self.path.with_name("index.sqlite")
            if old.exists():
                _note(f"the execution index moved to {self.path} (a new format, rebuilt from"
                      f" the log); removing the old {old}")
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{old}{suffix}").unlink(missing_ok=True)
        if not self.path.exists() or self.path.stat().st_size < 16:
            return
        with self.path.open("rb") as fh:
            head = fh.read(16)
        if head == b"SQLite format 3\x00":
            _note(f"the execution index {self.path} was written by an older waxflow;"
                  " rebuilding it from the log")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        elif head[8:12] != b"DUCK":  # not ours: never overwritten
            raise OSError(f"{self.path} is not an execution index (not a DuckDB file)")

    def _migrate(self) -> None:
        found = {r[0] for r in self._db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()}
        version = None
        if "meta" in found:
            row = self._db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            version = row[0] if row else None
        if version == str(SCHEMA_VERSION):
            if self._bootstrap is None:
                row = self._db.execute(
                    "SELECT value FROM meta WHERE name = 'bootstrap'").fetchone()
                self._bootstrap = row[0] if row else None
            return
        if found & set(_TABLES):
            _note(f"the execution index {self.path} has another format; rebuilding it from"
                  " the log")
        self._db.execute("BEGIN")
        for table in _TABLES:
            self._db.execute(f"DROP TABLE IF EXISTS {table}")
        self._db.execute(_SCHEMA)
        self._db.execute("INSERT INTO meta VALUES ('schema', ?)", [str(SCHEMA_VERSION)])
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database (releasing the file for other processes) and the log reader."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._db.close()

    def __enter__(self) -> ExecutionIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------

    def ingest(self, partition: int, offset: int, key: bytes | None, value: bytes | None, *,
               log_topic: str = "", timestamp_ms: int | None = None) -> bool:
        """Upsert one log record and commit; return whether it held a usable document.

        Tombstones (``value`` None), non-JSON values and documents without an id (neither
        ``id`` nor key) are ignored. ``timestamp_ms`` (the record's timestamp) dates a run's
        last state when the document has no ``endDate``.
        """
        if value is None:
            return False
        batch = _Batch()
        batch.add(partition, offset, key, value, timestamp_ms)
        return self._write(log_topic, batch.table()) == 1

    def ingest_batch(self, log_topic: str, batch: Sequence[tuple[int, int, bytes | None,
                                                                 bytes | None, int | None]]
                     ) -> int:
        """Upsert many log records ``(partition, offset, key, value, timestamp_ms)`` in one
        transaction, as :meth:`sync` does; return how many held usable documents."""
        pending = _Batch()
        for part, off, key, value, ts in batch:
            if value is not None:
                pending.add(part, off, key, value, ts)
        return self._write(log_topic, pending.table() if pending.values else None)

    def _write(self, log_topic: str, table: pa.Table | None,
               nexts: dict[int, int] | None = None) -> int:
        """Decode ``table`` (:meth:`_Batch.table`) in bulk (into connection-local temp
        tables), then merge it into the tables and store ``nexts`` as the positions of
        ``log_topic``, in one transaction. Returns the usable documents."""
        try:
            count = self._decode(table) if table is not None and table.num_rows else 0
            self._db.execute("BEGIN")
            try:
                if count:
                    self._merge(log_topic)
                if nexts:
                    parts = builtins.list(nexts)
                    self._db.execute(
                        "DELETE FROM positions WHERE topic = ? AND partition IN"
                        f" ({','.join('?' * len(parts))})", [log_topic, *parts])
                    self._db.execute(
                        "INSERT INTO positions SELECT ?, unnest(?::INTEGER[]),"
                        " unnest(?::BIGINT[])", [log_topic, parts, [nexts[p] for p in parts]])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        finally:
            if self._decoded is not None:
                self._db.unregister("d")
                self._decoded = None
        return count

    def _decode(self, table: pa.Table) -> int:
        """Stage ``table`` as ``d`` (a view of it decoded, until :meth:`_write` ends) and
        the temp table ``nl`` (:meth:`_latest`); a table without ``v`` was decoded already
        (by a reader process: :func:`_decode_into`). Returns the usable documents."""
        if "v" in table.column_names:
            table = _decode_into(self._db, table)
        self._db.register("d", table)
        self._decoded = table
        self._db.execute("CREATE OR REPLACE TEMP TABLE d_dropped AS SELECT ? AS n",
                         [_dropped_of(table)])
        return self._latest()

    def _latest(self) -> int:
        """The temp table ``nl``: per execution of the batch its latest document and whether
        the batch's documents of it span runs (``multi``; then ``dm`` holds them all);
        return the documents."""
        db = self._db
        row = db.execute("SELECT count(*), count(DISTINCT eid), (SELECT n FROM d_dropped)"
                         " FROM d").fetchone()
        docs, ids, dropped = (int(v or 0) for v in row) if row else (0, 0, 0)
        self._multi = docs != ids
        if not self._multi:  # one document per execution (the common case): each the latest
            db.execute("CREATE OR REPLACE TEMP VIEW nl AS SELECT *, false AS multi FROM d")
            db.execute("CREATE OR REPLACE TEMP TABLE dm AS SELECT * FROM d LIMIT 0")
            return docs + dropped
        # the executions whose documents span runs (rare: replays, redeliveries)
        db.execute("CREATE OR REPLACE TEMP TABLE mu AS SELECT DISTINCT d.eid FROM d"
                   " SEMI JOIN d d2 ON d2.eid = d.eid AND d2.run_id <> d.run_id")
        # a document is the latest of its execution when no later one follows (the log
        # offset, then the partition for a tie across partitions: unique per document)
        # (with where its run began among the batch's documents)
        db.execute(
            "CREATE OR REPLACE TEMP TABLE nl_t AS SELECT x.* REPLACE (f.o AS first_offset,"
            " f.u AS first_us) FROM (SELECT d.*, eid IN (SELECT eid FROM mu) AS multi"
            " FROM d ANTI JOIN d d2 ON d2.eid = d.eid"
            f" AND {_POS.format('d2')} > {_POS.format('d')}) x JOIN (SELECT eid, run_id,"
            " min(first_offset) AS o, arg_min(first_us, first_offset)"
            " FILTER (WHERE first_us IS NOT NULL) AS u FROM d GROUP BY ALL) f"
            " ON f.eid = x.eid AND f.run_id = x.run_id")
        db.execute("CREATE OR REPLACE TEMP VIEW nl AS SELECT * FROM nl_t")
        row = db.execute("SELECT count(*) FROM mu").fetchone()
        db.execute("CREATE OR REPLACE TEMP TABLE dm AS SELECT * FROM d WHERE eid"
                   " IN (SELECT eid FROM mu)" if row and row[0] else
                   "CREATE OR REPLACE TEMP TABLE dm AS SELECT * FROM d LIMIT 0")
        return docs + dropped

    def _merge(self, log_topic: str) -> None:
        """Merge the staged documents ``d`` into executions, runs and batch ranges.

        The common cases run as set operations: a new execution, or a later document of the
        stored run. Executions whose run changes (a replay) or with several runs in the batch
        are merged one by one (:meth:`_merge_runs`)."""
        db = self._db
        # the stored rows of the batch's executions: first the row ids whose id_prefix
        # matches (a scan of that one integer column; other columns of every row would cost
        # far more), then those rows' columns (none to read, mostly, in a first sync)
        cand = [r[0] for r in db.execute(
            "SELECT rowid FROM executions WHERE id_prefix IN (SELECT id_prefix FROM nl)"
        ).fetchall()]
        if db.execute("SELECT count(*) FROM nl WHERE id_prefix IS NULL").fetchone() != (0,):
            cand += [r[0] for r in db.execute(
                "SELECT rowid FROM executions WHERE id_prefix IS NULL"
                " AND id IN (SELECT eid FROM nl WHERE id_prefix IS NULL)").fetchall()]
        db.execute(
            "CREATE OR REPLACE TEMP TABLE old AS SELECT rowid AS row_id, id, run_id, runs,"
            f" log_topic, log_partition, log_offset, {_FLOW_GROUP},"
            " log_offset - coalesce(run_first_gap, 0) AS f_offset,"
            " coalesce(run_first_us, start_us) AS f_us FROM executions"
            + (" WHERE rowid IN (SELECT unnest(?::BIGINT[])) AND id IN (SELECT eid FROM nl)"
               if cand else " LIMIT 0"), [cand] if cand else [])
        # the plan holds the executions with a stored row or documents of several runs in
        # the batch (a few, mostly); every other document is a new row. No plan at all
        # (most batches of a first sync): nothing to join
        fresh = not self._multi and (not cand or db.execute(
            "SELECT count(*) FROM old").fetchone() == (0,))
        rows, runs, new, first_o, first_u = (
            ("nl", "1", "", "nl.first_offset", "nl.first_us") if fresh else
            ("nl LEFT JOIN plan USING (eid)", "coalesce(plan.runs, 1)",
             " WHERE coalesce(plan.action, 'new') IN ('new', 'replace')",
             "coalesce(plan.first_offset, nl.first_offset)",
             "CASE WHEN plan.eid IS NULL THEN nl.first_us ELSE plan.first_us END"))
        if not fresh:
            db.execute(
                "CREATE OR REPLACE TEMP TABLE plan AS SELECT nl.eid, old.row_id,"
                " CASE WHEN old.id IS NULL AND NOT nl.multi THEN 'new'"
                "  WHEN old.id IS NULL OR nl.multi OR old.run_id <> nl.run_id THEN 'runs'"
                "  WHEN old.log_topic = ? AND old.log_partition = nl.log_partition"
                "   AND old.log_offset > nl.log_offset THEN 'keep'"
                "  ELSE 'replace' END AS action, coalesce(old.runs, 1) AS runs,"
                # where the run began: the earlier of the stored row's and the batch's
                " CASE WHEN old.f_offset < nl.first_offset AND old.run_id = nl.run_id"
                "  THEN old.f_offset ELSE nl.first_offset END AS first_offset,"
                " CASE WHEN old.run_id IS DISTINCT FROM nl.run_id THEN nl.first_us"
                "  WHEN old.f_offset < nl.first_offset THEN coalesce(old.f_us, nl.first_us)"
                "  ELSE coalesce(nl.first_us, old.f_us) END AS first_us"
                " FROM nl LEFT JOIN old ON old.id = nl.eid WHERE old.id IS NOT NULL OR nl.multi",
                [log_topic])
            # a stored row that stays, its run begun earlier in the batch (records read
            # again out of order)
            db.execute(
                "UPDATE executions SET run_first_gap = nullif(executions.log_offset"
                " - p.first_offset, 0), run_first_us = nullif(p.first_us, executions.start_us)"
                " FROM (SELECT plan.row_id, plan.first_offset, plan.first_us FROM plan"
                "  JOIN old USING (row_id) WHERE plan.action = 'keep'"
                "  AND (plan.first_offset <> old.f_offset"
                "   OR plan.first_us IS DISTINCT FROM old.f_us)) p"
                " WHERE executions.rowid = p.row_id")
            # the rows this merge replaces leave the flow counts (the new ones join them
            # below)
            db.execute(
                f"INSERT INTO flow_counts SELECT {_FLOW_GROUP}, -count(*), NULL FROM old"
                " WHERE row_id IN (SELECT row_id FROM plan WHERE action IN ('replace', 'runs'))"
                " GROUP BY ALL")
            db.execute("DELETE FROM executions WHERE rowid IN"
                       " (SELECT row_id FROM plan WHERE action = 'replace')")
        db.execute(
            f"INSERT INTO flow_counts SELECT {_FLOW_GROUP}, count(*), max(start_us)"
            f" FROM {rows}{new} GROUP BY ALL")
        self._key_ids()
        key_id, keys = "km.key_id", " LEFT JOIN km ON km.k = nl.record_key"
        if not self._multi and self._decoded is not None:  # ``nl`` is ``d``
            # each row's key id looked up in Arrow (a hash of the batch's keys), not by a
            # join in the insert (which costs far more: every column goes through it)
            km = db.execute("SELECT k, key_id FROM km").arrow().read_all()
            found = pc.take(km.column("key_id"), pc.index_in(
                self._decoded.column("record_key"), value_set=km.column("k")))
            self._decoded = self._decoded.append_column("key_id", found)
            db.register("d", self._decoded)
            key_id, keys = "nl.key_id", ""
        db.execute(
            "INSERT INTO executions SELECT nl.eid, nl.namespace, nl.flow_id, nl.state,"
            f" nl.terminal, nl.run_id, nl.start_us, nl.end_us, nl.duration_ms, {runs},"
            " nl.trigger_type, nl.topic, nl.partition, nl.\"offset\", nl.record_key,"
            " nl.record_ts, nl.offsets, nl.messages_count, nl.delivery_count, nl.group_id,"
            " nl.upstream, nl.error_task, nl.error_message, ?, nl.log_partition,"
            " nl.log_offset, coalesce(nl.end_us, nl.record_ms * 1000, nl.start_us),"
            f" nl.id_prefix, {key_id}, nullif(nl.log_offset - {first_o}, 0),"
            f" nullif({first_u}, nl.start_us) FROM {rows}{keys}{new}", [log_topic])
        complex_ids = [] if fresh else [r[0] for r in db.execute(
            "SELECT eid FROM plan WHERE action = 'runs'").fetchall()]
        if complex_ids:
            self._merge_runs(log_topic, complex_ids)
        # one row per group again (a few rows: flows x states x topics)
        db.execute(f"CREATE OR REPLACE TEMP TABLE fc AS SELECT {_FLOW_GROUP}, sum(n) AS n,"
                   " max(last_us) AS last_us FROM flow_counts GROUP BY ALL HAVING sum(n) <> 0")
        db.execute("DELETE FROM flow_counts")
        db.execute("INSERT INTO flow_counts SELECT * FROM fc")
        ranges = db.execute(
            f"SELECT nl.eid, nl.offsets, nl.namespace, nl.flow_id FROM {rows}"
            " WHERE nl.offsets IS NOT NULL"
            + ("" if fresh else " AND coalesce(plan.action, 'new') <> 'keep'")).fetchall()
        if ranges:
            db.register("range_ids", pa.table({"eid": [r[0] for r in ranges]}))
            try:
                db.execute("DELETE FROM batch_ranges WHERE execution_id IN"
                           " (SELECT eid FROM range_ids)")
            finally:
                db.unregister("range_ids")
            found = [(eid, *r) for eid, text, _, _ in ranges for r in _ranges(text)]
            if found:  # one statement (a parameter set per row would cost far more)
                cols = builtins.list(zip(*found, strict=True))
                db.register("found_ranges", pa.table({
                    "execution_id": pa.array(cols[0], pa.string()),
                    "topic": pa.array(cols[1], pa.string()),
                    "partition": pa.array(cols[2], pa.int32()),
                    "first_offset": pa.array(cols[3], pa.int64()),
                    "last_offset": pa.array(cols[4], pa.int64())}))
                try:
                    db.execute("INSERT INTO batch_ranges SELECT * FROM found_ranges")
                finally:
                    db.unregister("found_ranges")
            flow_of = {r[0]: (r[2], r[3]) for r in ranges}
            topics = {(*flow_of[r[0]], r[1]) for r in found}.difference(
                db.execute("SELECT * FROM flow_topics").fetchall())
            if topics:
                db.executemany("INSERT INTO flow_topics VALUES (?, ?, ?)", sorted(
                    topics, key=lambda t: tuple(str(v) for v in t)))

    def _key_ids(self) -> None:
        """The temp table ``km``: the ``key_id`` of each record key of the batch's latest
        documents (``nl`` and ``dm``), the keys not yet in ``record_keys`` added to it with
        new ids (one scan of ``record_keys`` per batch)."""
        db = self._db
        db.execute(
            "CREATE OR REPLACE TEMP TABLE km AS SELECT b.k, r.key_id FROM"
            " (SELECT DISTINCT record_key AS k FROM (SELECT record_key FROM nl"
            "  UNION ALL SELECT record_key FROM dm) WHERE record_key IS NOT NULL) b"
            " LEFT JOIN record_keys r ON r.\"key\" = b.k")
        row = db.execute("SELECT count(*) FILTER (WHERE key_id IS NULL),"
                         " (SELECT coalesce(max(key_id), 0) FROM record_keys) FROM km"
                         ).fetchone()
        if row and row[0]:
            db.execute(
                "CREATE OR REPLACE TEMP TABLE km AS SELECT k, key_id FROM km"
                " WHERE key_id IS NOT NULL UNION ALL"
                " SELECT k, (? + row_number() OVER ())::UINTEGER FROM km WHERE key_id IS NULL",
                [int(row[1])])
            db.execute("INSERT INTO record_keys SELECT key_id, k FROM km WHERE key_id > ?",
                       [int(row[1])])

    def _merge_runs(self, log_topic: str, ids: builtins.list[str]) -> None:
        """Merge executions whose documents span runs: the stored row and earlier runs (in
        ``runs``) plus the batch's documents give the latest document's row, the previous
        runs (first/last state and dates) and the count of distinct runs."""
        db = self._db
        db.execute("CREATE OR REPLACE TEMP TABLE cx AS SELECT unnest(?::VARCHAR[]) AS eid",
                   [ids])
        cols = [c[0] for c in db.execute("SELECT * FROM executions LIMIT 0").description or ()]
        stored = {r[0]: dict(zip(cols, r, strict=True)) for r in db.execute(
            "SELECT * FROM executions WHERE rowid IN"
            " (SELECT row_id FROM old WHERE id IN (SELECT eid FROM cx))").fetchall()}
        prev: dict[str, dict[str, builtins.list[Any]]] = {}
        for r in db.execute(
                "SELECT execution_id, run_id, first_us, last_state, last_us, first_offset,"
                " last_offset FROM runs WHERE execution_id IN (SELECT eid FROM cx)").fetchall():
            prev.setdefault(r[0], {})[r[1]] = builtins.list(r[2:])
        cur = db.execute(
            "SELECT * FROM (SELECT * EXCLUDE (multi) FROM nl WHERE NOT multi"
            " UNION ALL BY NAME SELECT * FROM dm) WHERE eid IN (SELECT eid FROM cx)"
            " ORDER BY log_offset")
        dcols = [c[0] for c in cur.description or ()]
        docs: dict[str, builtins.list[dict[str, Any]]] = {}
        for r in cur.fetchall():
            row = dict(zip(dcols, r, strict=True))
            docs.setdefault(row["eid"], []).append(row)
        keys = dict(db.execute(
            "SELECT k, key_id FROM km WHERE k IN (SELECT record_key FROM nl WHERE eid IN"
            " (SELECT eid FROM cx) UNION ALL SELECT record_key FROM dm WHERE eid IN"
            " (SELECT eid FROM cx))").fetchall())
        rows: builtins.list[tuple[Any, ...]] = []
        run_rows: builtins.list[tuple[Any, ...]] = []
        for eid in ids:
            runs = prev.get(eid, {})
            best = stored.get(eid)
            if best is not None:  # the stored row stands for (the latest state of) its run
                for offset in (best["log_offset"] - (best["run_first_gap"] or 0),
                               best["log_offset"]):  # where it began, then the row
                    _fold_run(runs, best["run_id"], first_us=(
                        best["run_first_us"] if best["run_first_us"] is not None
                        else best["start_us"]), state=best["state"],
                        last_us=best["last_us"], offset=offset)
            for doc in docs.get(eid, []):
                last_us = doc["end_us"] or (doc["record_ms"] * 1000
                                            if doc["record_ms"] is not None
                                            else doc["start_us"])
                if doc["first_offset"] < doc["log_offset"]:  # where its run began
                    _fold_run(runs, doc["run_id"], first_us=doc["first_us"],
                              state=doc["state"], last_us=last_us,
                              offset=doc["first_offset"])
                _fold_run(runs, doc["run_id"], first_us=doc["start_us"], state=doc["state"],
                          last_us=last_us, offset=doc["log_offset"])
                newer = best is None or best["log_topic"] != log_topic or (
                    best["log_partition"] != doc["log_partition"]) or (
                    best["log_offset"] <= doc["log_offset"])
                if newer:
                    best = {**{c: doc.get(c) for c in cols}, "id": eid,
                            "id_prefix": _prefix_of(eid),
                            "log_topic": log_topic,
                            "last_us": runs[doc["run_id"]][2]}
            assert best is not None
            best["runs"] = len(runs)
            run = runs[best["run_id"]]
            best["run_first_gap"] = (best["log_offset"] - run[3]) or None
            best["run_first_us"] = run[0] if run[0] != best["start_us"] else None
            if best.get("key_id") is None and best.get("record_key") is not None:
                best["key_id"] = keys[best["record_key"]]
            rows.append(tuple(best[c] for c in cols))
            run_rows += [(eid, rid, *v) for rid, v in runs.items() if rid != best["run_id"]]
        db.execute("DELETE FROM executions WHERE rowid IN"
                   " (SELECT row_id FROM old WHERE id IN (SELECT eid FROM cx))")
        db.execute("DELETE FROM runs WHERE execution_id IN (SELECT eid FROM cx)")
        db.executemany(f"INSERT INTO executions VALUES ({','.join('?' * len(cols))})", rows)
        added: dict[tuple[Any, ...], builtins.list[Any]] = {}
        for values in rows:
            row = dict(zip(cols, values, strict=True))
            group = added.setdefault((row["namespace"], row["flow_id"], row["state"],
                                      row["topic"]), [0, None])
            group[0] += 1
            if row["start_us"] is not None and (group[1] is None or row["start_us"] > group[1]):
                group[1] = row["start_us"]
        db.executemany("INSERT INTO flow_counts VALUES (?, ?, ?, ?, ?, ?)",
                       [(*k, n, last) for k, (n, last) in added.items()])
        if run_rows:
            db.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", run_rows)

    # -- syncing from Kafka --------------------------------------------------------------

    def positions(self, topic: str) -> dict[int, int]:
        """The next offset to read per partition of ``topic``, as stored by past syncs."""
        rows = self._db.execute(
            "SELECT partition, next_offset FROM positions WHERE topic = ?", [topic]).fetchall()
        return {int(r[0]): int(r[1]) for r in rows}

    def sync(self, bootstrap: str, topic: str, timeout: float = 10.0) -> int:
        """Read new records of the log ``topic`` into the index; return the documents read.

        Reads every partition from its stored position up to the end offset read at the
        start, within ``timeout`` seconds overall, writing in batches of at most
        ``BATCH_DOCS`` documents (each batch one transaction with its positions). A missing
        topic reads nothing (0). If the deadline passes with partitions unfinished, what was
        read is kept and ``last_sync_complete`` is False; if the client also reported errors,
        or the broker cannot be reached at all, raises :class:`IndexSyncError`; if the
        cluster refuses the client settings, :class:`IndexAccessError` as soon as it says so.
        """
        deadline = time.monotonic() + timeout
        errors = _ClientErrors()
        consumer = Consumer({
            **_reader_config(bootstrap, timeout, errors, self._client),
            **READ_FETCH,
        })
        self.last_sync_complete = True
        self._bootstrap = bootstrap
        try:
            starts, ends = self._plan(consumer, topic, deadline, errors)
            if not ends:
                return 0
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('bootstrap', ?)", [bootstrap])
            job = self._process_job(bootstrap, topic, starts=starts, ends=ends)
            if job is not None:
                return self._read_in_process(job, deadline=deadline, errors=errors)
            consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
            return self._read(consumer, topic, ends=ends, deadline=deadline, errors=errors)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() in _REFUSED:
                raise IndexAccessError(self._mask(
                    f"cannot read the execution log {topic} from {bootstrap}: the cluster "
                    f"refused this client: {err.str()}"), topic=topic) from None
            raise IndexSyncError(self._mask(_kafka_message(exc, bootstrap, errors.texts))
                                 ) from None
        finally:
            consumer.close()

    def _mask(self, text: str) -> str:
        """``text`` with the client settings' passwords (and every registered secret) masked."""
        return mask(text, [str(self._client[k]) for k in _SECRET_KEYS if self._client.get(k)])

    def _plan(self, consumer: Consumer, topic: str, deadline: float,
              errors: _ClientErrors) -> tuple[dict[int, int], dict[int, int]]:
        """The partitions with records to read: ({partition: start offset}, {partition: end
        offset})."""
        meta = _metadata(consumer, topic, deadline, errors)
        if meta is None or meta.error is not None:
            if meta is not None and meta.error.code() not in (
                KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                raise KafkaException(meta.error)
            return {}, {}
        stored = self.positions(topic)
        ends: dict[int, int] = {}
        starts: dict[int, int] = {}
        for part in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, part), timeout=_left(deadline), cached=False)
            start = stored.get(part, 0)
            if start > high:  # the topic was recreated: read it again from the start
                start = 0
            start = max(start, low)
            if start < high:
                ends[part] = high
                starts[part] = start
        return starts, ends

    def _process_job(self, bootstrap: str, topic: str, *, starts: dict[int, int],
                     ends: dict[int, int]) -> dict[str, Any] | None:
        """The job for :mod:`.index_reader` when the sync has at least
        ``PROCESS_READER_RECORDS`` records to read (offsets, an upper bound) and the client
        settings can be handed over as JSON; None: read in a thread of this process."""
        if sum(ends[p] - starts[p] for p in ends) < PROCESS_READER_RECORDS:
            return None
        try:
            json.dumps(self._client)
        except (TypeError, ValueError):  # e.g. a callback among the settings
            return None
        return {"bootstrap": bootstrap, "topic": topic, "client": self._client,
                "assign": [[p, o] for p, o in starts.items()], "ends": ends,
                "batch_docs": BATCH_DOCS, "batch_bytes": BATCH_BYTES}

    def _read_in_process(self, job: dict[str, Any], *, deadline: float,
                         errors: _ClientErrors) -> int:
        """:meth:`_read`, the log read and decoded by ``READER_PROCESSES`` child processes
        (:mod:`.index_reader`, the partitions shared among them) handing over Arrow batches
        through files in memory: this process only merges them into DuckDB, each batch with
        the positions of its partitions in one transaction."""
        topic = job["topic"]
        shm = Path("/dev/shm")
        folder = Path(tempfile.mkdtemp(prefix="waxflow-index-",
                                       dir=shm if shm.is_dir() else None))
        parts = sorted(job["ends"])
        groups = [parts[i::READER_PROCESSES] for i in range(min(READER_PROCESSES,
                                                                 len(parts)))]
        count, pending, ended = 0, set[int](), set[int]()
        items: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
        procs: builtins.list[subprocess.Popen[str]] = []
        logs: builtins.list[IO[bytes]] = []  # each process's stderr (for a crash's message)
        listeners: builtins.list[threading.Thread] = []

        def listen(i: int, proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            with contextlib.suppress(ValueError, OSError):
                for line in proc.stdout:
                    items.put((i, json.loads(line)))
            items.put((i, None))

        # one DuckDB thread: the reader processes take the other core(s), and DuckDB's
        # threads cost about twice the CPU for the same batches when they share the cores
        threads = self._db.execute("SELECT current_setting('threads')").fetchone()
        self._db.execute("SET threads = 1")
        try:
            for i, group in enumerate(groups):
                logs.append((folder / f"stderr-{i}").open("wb"))
                proc = subprocess.Popen(  # the settings go on stdin: they may hold secrets
                    [sys.executable, "-m", "waxflow.recovery.index_reader"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[-1], text=True)
                procs.append(proc)
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({
                    **job, "assign": [[p, o] for p, o in job["assign"] if p in group],
                    "ends": {p: job["ends"][p] for p in group}, "dir": str(folder),
                    "timeout": max(0.05, deadline - time.monotonic())}) + "\n")
                proc.stdin.flush()
                listeners.append(threading.Thread(target=listen, args=(i, proc), daemon=True,
                                                  name="waxflow-index-listener"))
                listeners[-1].start()
            while len(ended) < len(procs):
                i, item = items.get()
                if item is None and i in ended:
                    continue
                if item is None:  # its output closed before it said it ended
                    raise IndexSyncError(self._mask(self._crashed(topic, procs[i],
                                                                  folder / f"stderr-{i}")))
                if "file" in item:
                    count += self._write(topic, _load(item["file"]),
                                         {int(p): o for p, o in item["nexts"].items()})
                    stdin = procs[i].stdin
                    with contextlib.suppress(OSError, ValueError):  # it may have ended
                        if stdin is not None:
                            stdin.write("ack\n")
                            stdin.flush()
                    continue
                errors.texts += item.get("texts", [])
                if "error" in item:
                    err = item["error"]
                    raise KafkaException(KafkaError(err["code"], err["text"],
                                                    fatal=err["fatal"]))
                pending.update(item["pending"])
                ended.add(i)
        finally:
            for proc in procs:
                with contextlib.suppress(OSError, ValueError):
                    if proc.stdin is not None:
                        proc.stdin.close()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for listener in listeners:
                listener.join(timeout=10)
            for proc in procs:
                if proc.stdout is not None:
                    proc.stdout.close()
            for log in logs:
                log.close()
            shutil.rmtree(folder, ignore_errors=True)
            self._db.execute(f"SET threads = {int(threads[0]) if threads else 1}")
        self._unfinished(topic, pending, errors)
        return count

    def _unfinished(self, topic: str, pending: set[int], errors: _ClientErrors) -> None:
        """A read that ended with ``pending`` partitions short of their end offsets: the sync
        is incomplete; IndexSyncError when the client also reported errors."""
        if pending:
            self.last_sync_complete = False
            if errors.texts:
                raise IndexSyncError(self._mask(
                    f"reading {topic} did not finish in time (partitions {sorted(pending)}): "
                    f"{errors.texts[-1]}"))

    @staticmethod
    def _crashed(topic: str, proc: subprocess.Popen[str], stderr: Path) -> str:
        """One line on a reader process that stopped without saying it ended."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        lines = stderr.read_text("utf-8", "replace").strip().splitlines()
        return (f"the process reading {topic} stopped (exit code {proc.returncode})"
                + (f": {lines[-1]}" if lines else ""))

    def _read(self, consumer: Consumer, topic: str, *, ends: dict[int, int], deadline: float,
              errors: _ClientErrors) -> int:
        """Write the batches a reader thread gathers (consuming, building each batch's Arrow
        table) while it gathers the next one: DuckDB works outside the GIL."""
        pending = set(ends)
        ready: queue.Queue[_Gathered | BaseException | None] = queue.Queue(maxsize=1)
        stop = threading.Event()

        def put(item: _Gathered | BaseException | None) -> None:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def gather() -> None:
            try:
                batch, nexts = _Batch(), dict[int, int]()
                while pending and time.monotonic() < deadline and not stop.is_set():
                    msgs = consumer.consume(_CONSUME, timeout=min(0.1, _left(deadline)))
                    errors.raise_refused()
                    self._take_all(msgs, batch, ends=ends, pending=pending, nexts=nexts,
                                   errors=errors)
                    if len(batch) >= BATCH_DOCS or batch.size >= BATCH_BYTES or (
                            nexts and (not pending or not msgs)):
                        put(_Gathered(nexts, batch.table() if batch.values else None))
                        batch, nexts = _Batch(), {}
                if nexts:
                    put(_Gathered(nexts, batch.table() if batch.values else None))
                put(None)
            except BaseException as exc:  # handed to the writing thread, raised there
                put(exc)

        reader = threading.Thread(target=gather, name="waxflow-index-reader", daemon=True)
        count = 0
        with _gil_handoff():
            reader.start()
            try:
                while (item := ready.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    count += self._write(topic, item.table, item.nexts)
            finally:
                stop.set()
                reader.join()
        self._unfinished(topic, pending, errors)
        return count

    @classmethod
    def _take_all(cls, msgs: builtins.list[Message], batch: _Batch, *, ends: dict[int, int],
                  pending: set[int], nexts: dict[int, int], errors: _ClientErrors) -> None:
        """:meth:`_take` for a list of messages, by columns when every message is a record
        before its partition's end offset (the common case)."""
        # the messages' methods mapped over the list (C calls, no Python frame per message)
        if any(map(Message.error, msgs)):
            top: dict[Any, Any] = {None: None}
        else:  # records only: each has a partition and an offset, offsets only grow
            parts = cast(list[int], list(map(Message.partition, msgs)))
            offs = cast(list[int], list(map(Message.offset, msgs)))
            top = dict(zip(parts, offs, strict=True))
        if not all(p is not None and o < ends.get(p, -1) for p, o in top.items()):
            for msg in msgs:
                cls._take(msg, batch, ends=ends, pending=pending, nexts=nexts, errors=errors)
            return
        last = {p: o + 1 for p, o in top.items()}
        nexts.update(last)
        pending.difference_update(p for p, o in last.items() if o >= ends[p])
        values = list(map(Message.value, msgs))
        # the timestamps as given (-1: none; :meth:`_Batch.table` reads a negative one as
        # absent), by C calls rather than a Python step per message
        times = list(map(_SECOND, map(Message.timestamp, msgs)))
        keys = list(map(Message.key, msgs))
        if None in values:  # tombstones move the position but hold no document
            keep = [i for i, v in enumerate(values) if v is not None]
            parts, offs = [parts[i] for i in keep], [offs[i] for i in keep]
            values, times = [values[i] for i in keep], [times[i] for i in keep]
            keys = [keys[i] for i in keep]
        docs = cast(list[bytes], values)
        batch.partitions += parts
        batch.offsets += offs
        batch.timestamps += times
        batch.keys += keys
        batch.values += docs
        batch.size += sum(map(len, docs))

    @staticmethod
    def _take(msg: Message, batch: _Batch, *, ends: dict[int, int], pending: set[int],
              nexts: dict[int, int], errors: _ClientErrors) -> None:
        part, off, err = msg.partition(), msg.offset(), msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                if err.fatal() or err.code() in _REFUSED:  # e.g. no READ ACL on the topic
                    raise KafkaException(err)
                errors(err)
            elif part in ends and off is not None:  # nothing more to fetch right now
                pending.discard(part)
                nexts[part] = max(nexts.get(part, 0), min(off, ends[part]))
            return
        if part is None or off is None or part not in ends or off >= ends[part]:
            if part is not None:
                pending.discard(part)
            return
        nexts[part] = off + 1
        if off + 1 >= ends[part]:
            pending.discard(part)
        value = msg.value()
        if value is not None:
            ts_type, ts = msg.timestamp()
            batch.add(part, off, msg.key(), value, ts if ts_type and ts >= 0 else None)

    # -- queries -------------------------------------------------------------------------

    def _where(self, *, flow: str | None = None, state: str | None = None,
               topic: str | None = None, since: datetime | str | None = None,
               until: datetime | str | None = None) -> tuple[str, builtins.list[Any]]:
        """The WHERE clause (with its parameters) of the filters other than ``text``."""
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if flow:
            alts = ["flow_id = ?"]
            params.append(flow)
            for i, ch in enumerate(flow):
                if ch == ".":
                    alts.append("(namespace = ? AND flow_id = ?)")
                    params += [flow[:i], flow[i + 1:]]
            where.append("(" + " OR ".join(alts) + ")")
        if state:
            where.append("state = ?")
            params.append(state.upper())
        if topic:
            where.append("(topic = ? OR (offsets IS NOT NULL AND id IN"
                         " (SELECT execution_id FROM batch_ranges WHERE topic = ?)))")
            params += [topic, topic]
        for bound, op in ((since, ">="), (until, "<")):
            if bound is not None:
                us = _micros(bound)
                if us is None:
                    raise ValueError(f"not an ISO datetime: {bound!r}")
                where.append(f"start_us {op} ?")
                params.append(us)
        return (" WHERE " + " AND ".join(where)) if where else "", params

    def _text_branches(self, where: str, params: builtins.list[Any], text: str, *,
                       counting: bool = False
                       ) -> tuple[builtins.list[tuple[str, builtins.list[Any]]], bool]:
        """The disjoint halves of the ``text`` filter, each a WHERE clause (with ``where``)
        and its parameters: the rows whose record key contains ``text`` (absent when no
        key does), and the other rows whose id starts with it; and whether the key half
        selects by ``key_id`` (its rows then lie scattered over the table). Each half runs
        as its own query: DuckDB runs them far faster than one scan with an OR (the id half
        is narrowed by ``id_prefix``).

        The key half looks the text up in ``record_keys`` (each distinct key once) first.
        When the matching keys hold few rows (estimated from the rows per key) or every
        row is read anyway (``counting``), it selects the rows by their integer ``key_id``:
        a pushed filter on the literals of at most ``_KEY_IDS`` keys, else a join with the
        matching keys; no string of ``executions`` is read. When they hold many rows, by
        ``contains(record_key)``: the same rows, which a newest-first page finds in the
        newest row groups, soon done."""
        and_ = " AND " if where else " WHERE "
        # the first matching keys' ids, how many match, the rows and the keys in all
        found = self._db.execute(
            'SELECT key_id, count(*) OVER (), (SELECT count(*) FROM executions),'
            ' (SELECT count(*) FROM record_keys) FROM record_keys WHERE contains("key", ?)'
            ' LIMIT ?', [text, _KEY_IDS + 1]).fetchall()
        keys = [int(r[0]) for r in found]
        matching = int(found[0][1]) if found else 0
        cond, args = _id_match(text, exact=False)
        out: builtins.list[tuple[str, builtins.list[Any]]] = []
        by_id = counting or matching * int(found[0][2]) / max(1, int(found[0][3])) \
            < _DENSE_ROWS if found else False
        if keys and not by_id:
            out.append((f"{where}{and_}contains(record_key, ?)", [*params, text]))
        elif matching > _KEY_IDS:
            out.append((f"{where}{and_}key_id IN (SELECT key_id FROM record_keys WHERE"
                        ' contains("key", ?))', [*params, text]))
        elif keys:  # integers made here: safe as literals (pushed into the scan)
            out.append((f"{where}{and_}key_id IN ({','.join(map(str, keys))})", params))
        not_key = "NOT coalesce(contains(record_key, ?), false)" if keys else None
        out.append((f"{where}{and_}{cond}" + (f" AND {not_key}" if not_key else ""),
                    [*params, *args] + ([text] if not_key else [])))
        return out, by_id

    def list(self, *, flow: str | None = None, state: str | None = None, topic: str | None = None,
             since: datetime | str | None = None, until: datetime | str | None = None,
             text: str | None = None, limit: int = 50,
             offset: int = 0) -> builtins.list[dict[str, Any]]:
        """Execution summaries, newest start first, filtered by every given criterion.

        ``flow`` matches the flow id or ``namespace.flowId``; ``state`` is case-insensitive;
        ``topic`` matches the trigger topic or any topic of a batch's ranges; ``since`` is
        inclusive and ``until`` exclusive (datetimes or ISO strings; naive = UTC); ``text``
        matches a substring of the trigger record's key (its JSON text) or a prefix of the
        execution id. ``limit``/``offset`` page through the result.
        """
        where, params = self._where(flow=flow, state=state, topic=topic, since=since,
                                    until=until)
        page = [max(0, limit), max(0, offset)]
        if not text:
            return self._summaries(f"SELECT {_SUMMARY_COLS} FROM executions{where}{_ORDER}"
                                   " LIMIT ? OFFSET ?", params + page)
        # the first offset + limit rows of each half, then of both (a page of a half stops
        # reading once its newest rows are found: DuckDB skips the older row groups)
        need = page[0] + page[1]
        self._db.execute("BEGIN")
        try:
            branches, by_id = self._text_branches(where, params, text)
            if not by_id:
                union = " UNION ALL ".join(
                    f"(SELECT {_SUMMARY_COLS} FROM executions{cond}{_ORDER} LIMIT {need})"
                    for cond, _ in branches)
                return self._summaries(f"SELECT * FROM ({union}){_ORDER} LIMIT ? OFFSET ?",
                                       [v for _, args in branches for v in args] + page)
            # rows matched by key_id lie scattered over the table: the page's rows are
            # found from a few narrow columns first, then only they are read whole (both
            # in one transaction: one snapshot, the row ids hold)
            union = " UNION ALL ".join(
                "(SELECT rowid AS row_id, start_us, log_offset FROM executions"
                f"{cond}{_ORDER} LIMIT {need})" for cond, _ in branches)
            rows = [int(r[0]) for r in self._db.execute(
                f"SELECT row_id FROM ({union}){_ORDER} LIMIT ? OFFSET ?",
                [v for _, args in branches for v in args] + page).fetchall()]
            found = self._summaries(
                f"SELECT {_SUMMARY_COLS} FROM executions WHERE rowid IN"
                f" (SELECT unnest(?::BIGINT[])){_ORDER}", [rows]) if rows else []
        finally:
            self._db.execute("ROLLBACK")  # it wrote nothing
        return found

    def count(self, *, flow: str | None = None, state: str | None = None,
              topic: str | None = None, since: datetime | str | None = None,
              until: datetime | str | None = None, text: str | None = None) -> dict[str, int]:
        """Executions by state (``{"SUCCESS": n, ...}``) for the same filters as :meth:`list`;
        states without executions are absent."""
        where, params = self._where(flow=flow, state=state, topic=topic, since=since,
                                    until=until)
        halves = (self._text_branches(where, params, text, counting=True)[0] if text
                  else [(where, params)])
        counts: dict[str, int] = {}
        for cond, args in halves:
            for state, n in self._db.execute(
                    f"SELECT coalesce(state, '?'), count(*) FROM executions{cond} GROUP BY 1",
                    args).fetchall():
                counts[str(state)] = counts.get(str(state), 0) + int(n)
        return counts

    def histogram(self, *, flow: str | None = None, topic: str | None = None,
                  since: datetime | str | None = None, until: datetime | str | None = None,
                  bucket_seconds: int = 60) -> builtins.list[dict[str, Any]]:
        """Executions per time bucket and state, oldest bucket first: ``{"bucket": ISO start
        (UTC), "state": s, "count": n}``. Buckets are aligned to the epoch; executions without
        a start date are left out; empty buckets are absent."""
        step = max(1, int(bucket_seconds)) * 1_000_000
        where, params = self._where(flow=flow, topic=topic, since=since, until=until)
        where += (" AND " if where else " WHERE ") + "start_us IS NOT NULL"
        rows = self._db.execute(
            f"SELECT (start_us // {step}) * {step} AS b, coalesce(state, '?'), count(*)"
            f" FROM executions{where} GROUP BY 1, 2 ORDER BY 1, 2", params).fetchall()
        return [{"bucket": _iso(int(r[0])), "state": str(r[1]), "count": int(r[2])}
                for r in rows]

    def flows(self) -> builtins.list[dict[str, Any]]:
        """One entry per (namespace, flow) seen, ordered by namespace then flow: ``namespace``,
        ``flow``, ``last_id``/``last_state``/``last_time`` (the execution with the latest start),
        ``counts`` ({state: n}), ``topics`` (trigger topics of its executions and topics of
        the batch ranges seen for it, sorted), ``group`` (consumer group id when the documents
        carry ``trigger.group``, else None) and ``per_minute`` (executions per minute over the
        last 10 minutes of that flow's activity).

        Answered from the per-flow counts each sync keeps (not a scan of every row): the
        time to answer does not grow with the executions indexed."""
        flows: dict[tuple[Any, Any], dict[str, Any]] = {}
        newest: dict[tuple[Any, Any], int] = {}
        for ns, fl, state, topic, n, last_us in self._db.execute(
                "SELECT namespace, flow_id, coalesce(state, '?'), topic, n, last_us"
                " FROM flow_counts").fetchall():
            entry = flows.setdefault((ns, fl), {
                "namespace": ns, "flow": fl, "last_id": None, "last_state": None,
                "last_time": None, "counts": {}, "topics": set(), "group": None,
                "per_minute": 0.0})
            entry["counts"][state] = entry["counts"].get(state, 0) + int(n)
            if topic is not None:
                entry["topics"].add(topic)
            if last_us is not None and last_us > newest.get((ns, fl), -(1 << 62)):
                newest[(ns, fl)] = last_us
        if newest:
            latest = self._latest_of(newest)
            for key in [k for k in newest if k not in latest]:  # its newest row was replaced
                row = self._db.execute(
                    "SELECT max(start_us) FROM executions WHERE namespace IS NOT DISTINCT FROM ?"
                    " AND flow_id IS NOT DISTINCT FROM ?", builtins.list(key)).fetchone()
                if row is None or row[0] is None:
                    del newest[key]
                else:
                    newest[key] = int(row[0])
                    latest.update(self._latest_of({key: newest[key]}))
            for key, row in latest.items():
                flows[key].update(last_id=row[4], last_state=row[5], last_time=_iso(row[2]),
                                  group=row[6])
            window = 600_000_000
            keys = builtins.list(newest)
            for ns, fl, n in self._db.execute(
                    "SELECT w.ns, w.fl, count(*) FROM executions e JOIN"
                    " (SELECT unnest(?::VARCHAR[]) AS ns, unnest(?::VARCHAR[]) AS fl,"
                    "  unnest(?::BIGINT[]) AS since) w"
                    " ON coalesce(e.namespace, '') = w.ns AND coalesce(e.flow_id, '') = w.fl"
                    f" WHERE e.start_us > {int(min(newest.values()) - window)}"
                    " AND e.start_us > w.since GROUP BY ALL",
                    [[k[0] or "" for k in keys], [k[1] or "" for k in keys],
                     [newest[k] - window for k in keys]]).fetchall():
                for key in keys:
                    if (key[0] or "", key[1] or "") == (ns, fl):
                        flows[key]["per_minute"] = round(int(n) / 10.0, 3)
        for ns, fl, t in self._db.execute(
                "SELECT namespace, flow_id, topic FROM flow_topics").fetchall():
            if (ns, fl) in flows:
                flows[(ns, fl)]["topics"].add(t)
        out = [flows[k] for k in sorted(flows, key=lambda k: (k[0] or "", k[1] or ""))]
        for entry in out:
            entry["topics"] = sorted(entry["topics"])
            entry["counts"] = dict(sorted(entry["counts"].items()))
        return out

    def _latest_of(self, newest: dict[tuple[Any, Any], int]
                   ) -> dict[tuple[Any, Any], tuple[Any, ...]]:
        """Per (namespace, flow) of ``newest``, the row (namespace, flow, start, log offset,
        id, state, group) of its execution starting at that time (ties: the later log
        record); flows without one are absent. The start times go into the SQL as literals
        (integers), so the scan skips every row group outside them."""
        latest: dict[tuple[Any, Any], tuple[Any, ...]] = {}
        starts = ", ".join(str(int(v)) for v in set(newest.values()))
        for row in self._db.execute(
                "SELECT namespace, flow_id, start_us, log_offset, id, state, group_id"
                f" FROM executions WHERE start_us IN ({starts})").fetchall():
            key = (row[0], row[1])
            if newest.get(key) == row[2] and (key not in latest or row[3] > latest[key][3]):
                latest[key] = row
        return latest

    def resolve(self, id_or_prefix: str) -> str | None:
        """The full id for an exact id or a unique prefix of at least 6 characters.

        Returns None when nothing matches; raises :class:`AmbiguousIdError` when several do.
        """
        if len(id_or_prefix) < MIN_PREFIX:
            cond, args = _id_match(id_or_prefix, exact=True)
            row = self._db.execute(f"SELECT id FROM executions WHERE {cond} LIMIT 1",
                                   args).fetchone()
            return str(row[0]) if row else None
        rows = self._db.execute(
            f"SELECT id FROM executions WHERE {_id_match(id_or_prefix, exact=False)[0]}"
            " ORDER BY id LIMIT 11", _id_match(id_or_prefix, exact=False)[1]).fetchall()
        if any(r[0] == id_or_prefix for r in rows):
            return id_or_prefix
        if len(rows) > 1:
            raise AmbiguousIdError(id_or_prefix, [r[0] for r in rows[:10]], len(rows) > 10)
        return str(rows[0][0]) if rows else None

    def show(self, id_or_prefix: str) -> dict[str, Any] | None:
        """The latest document of one execution, read back from the log, plus ``runs``:
        [{runId, state, startDate, lastDate}] in log order, and ``logs`` ([] when the document
        has none). When the document cannot be read back (no broker known or reachable, the
        record deleted by retention), the stored summary with ``taskRuns: []``, ``logs: []``
        and ``documentError`` (one line) instead. None when unknown; ambiguous prefix →
        :class:`AmbiguousIdError`."""
        exec_id = self.resolve(id_or_prefix)
        if exec_id is None:
            return None
        cond, args = _id_match(exec_id, exact=True)
        [summary] = self._summaries(f"SELECT {_SUMMARY_COLS} FROM executions WHERE {cond}",
                                    args)
        try:
            doc = self._read_back(exec_id, summary)
        except _Unavailable as exc:
            doc = {k: v for k, v in summary.items() if k not in ("runs", "logPartition",
                                                                  "logOffset")}
            doc.update(taskRuns=[], labels={}, documentError=str(exc))
        if not isinstance(doc.get("logs"), builtins.list):
            doc["logs"] = []
        doc["runs"] = [
            {"runId": r[0] or None, "state": r[1], "startDate": _iso(r[2]),
             "lastDate": _iso(r[3])}
            for r in self._db.execute(
                "SELECT run_id, last_state, first_us, last_us FROM runs"
                " WHERE execution_id = ? ORDER BY first_offset", [exec_id]).fetchall()]
        last = self._db.execute(f"SELECT last_us FROM executions WHERE {cond}",
                                args).fetchone()
        doc["runs"].append({"runId": summary["runId"] or None, "state": summary["state"],
                            "startDate": summary["startDate"],
                            "lastDate": _iso(last[0] if last else None)})
        return doc

    def _read_back(self, exec_id: str, summary: dict[str, Any]) -> dict[str, Any]:
        """The document at the summary's log position (or a later one of the same key)."""
        topic = summary["logTopic"]
        where = f"{topic}/{summary['logPartition']}@{summary['logOffset']}"
        if not self._bootstrap or not topic:
            raise _Unavailable(f"the document at {where} cannot be read: no broker known"
                               " (sync first or pass a bootstrap)")
        errors = _ClientErrors()
        if self._reader is None:
            self._reader = Consumer({**_reader_config(self._bootstrap, 10.0, errors,
                                                      self._client),
                                     "fetch.wait.max.ms": 10})
        tp = TopicPartition(topic, summary["logPartition"], summary["logOffset"])
        self._reader.assign([tp])
        deadline = time.monotonic() + 10.0
        try:
            while time.monotonic() < deadline:
                msg = self._reader.poll(min(0.5, _left(deadline)))
                if errors.refused is not None:
                    raise KafkaException(errors.refused)
                if msg is None:
                    continue
                err, value = msg.error(), msg.value()
                if err is not None:
                    if err.code() in _REFUSED:
                        raise KafkaException(err)
                    if err.fatal():
                        break
                    continue
                if msg.key() == exec_id.encode() and value is not None:
                    found = json.loads(value)
                    if isinstance(found, dict):
                        return found
                raise _Unavailable(f"the document at {where} is no longer in the log"
                                   " (compacted or expired)")
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            text = err.str() if isinstance(err, KafkaError) else str(exc)
            raise _Unavailable(self._mask(f"the document at {where} cannot be read: {text}")
                               ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _Unavailable(f"the document at {where} cannot be read: {exc}") from None
        finally:
            self._reader.unassign()
        why = f": {errors.texts[-1]}" if errors.texts else ""
        raise _Unavailable(self._mask(f"the document at {where} could not be read from"
                                      f" {self._bootstrap} in 10s{why}"))

    def trace(self, topic: str, partition: int, offset: int) -> builtins.list[dict[str, Any]]:
        """What happened to one record: summaries of the executions it triggered (``match``
        "record"), of the batches whose range covers it ("batch"), and of executions
        downstream of those through ``upstreamExecutionId`` ("downstream", up to depth 10).

        Each summary carries ``depth`` (0 for the record's own executions); ordered by depth,
        then start date.
        """
        direct = self._summaries(
            f"SELECT {_SUMMARY_COLS}, 'record' AS match FROM executions"
            " WHERE topic = ? AND partition = ? AND \"offset\" = ?",
            [topic, partition, offset])
        direct += self._summaries(
            f"SELECT {_SUMMARY_COLS}, 'batch' AS match FROM executions WHERE id IN"
            " (SELECT execution_id FROM batch_ranges WHERE topic = ? AND partition = ?"
            " AND first_offset <= ? AND last_offset >= ?)",
            [topic, partition, offset, offset])
        seen: set[str] = set()
        level = _unique(direct, seen)
        level.sort(key=lambda r: (r["startDate"] or "", r["id"]))
        out = [{**r, "depth": 0} for r in level]
        return out + self._descend([r["id"] for r in level], depth=1, seen=seen)

    def downstream(self, exec_id: str) -> builtins.list[dict[str, Any]]:
        """Summaries of the executions caused by ``exec_id`` (an id or unique prefix): those
        whose trigger record it produced (``upstreamExecutionId``), and theirs, up to depth 10;
        each with ``match`` "downstream" and ``depth`` (1 = direct), ordered by depth then
        start. Unknown id → []."""
        full = self.resolve(exec_id)
        if full is None:
            return []
        return self._descend([full], depth=1, seen={full})

    def _descend(self, ids: builtins.list[str], *, depth: int,
                 seen: set[str]) -> builtins.list[dict[str, Any]]:
        out: builtins.list[dict[str, Any]] = []
        while ids and depth <= MAX_TRACE_DEPTH:
            marks = ",".join("?" * len(ids))
            level = _unique(self._summaries(
                f"SELECT {_SUMMARY_COLS}, 'downstream' AS match FROM executions"
                f" WHERE upstream IN ({marks})", ids), seen)
            level.sort(key=lambda r: (r["startDate"] or "", r["id"]))
            out += [{**r, "depth": depth} for r in level]
            ids = [r["id"] for r in level]
            depth += 1
        return out

    def _summaries(self, sql: str, params: builtins.list[Any]) -> builtins.list[dict[str, Any]]:
        cur = self._db.execute(sql, params)
        names = [d[0] for d in cur.description or ()]
        return [_summary(dict(zip(names, row, strict=True))) for row in cur.fetchall()]


_SWITCH_INTERVAL = 0.0005
_switch_lock = threading.Lock()
_switch_users: builtins.list[float] = []  # the interval to restore, once per sync under way
_gc_thresholds: builtins.list[tuple[int, int, int]] = []  # the thresholds to restore


#: the first generation's collection threshold while a sync reads the log in a thread
_SYNC_GC_THRESHOLD = 100_000


@contextlib.contextmanager
def _gil_handoff() -> Iterator[None]:
    """While a sync's reader thread runs, hand the GIL over every 0.5 ms (Python's
    default: 5 ms), restoring the interval after the last sync under way. DuckDB's query
    loop takes the GIL between its tasks (to check for signals): with the reader thread
    busy in Python, each task would wait up to a whole interval, which made the writes
    several times slower than alone. Also collects cyclic garbage less often meanwhile
    (``_SYNC_GC_THRESHOLD`` allocations apart rather than 700): a collection pass every few
    hundred consumed messages cost about a tenth of the reader's CPU."""
    with _switch_lock:
        _switch_users.append(sys.getswitchinterval())
        if _switch_users[0] > _SWITCH_INTERVAL:
            sys.setswitchinterval(_SWITCH_INTERVAL)
        if len(_switch_users) == 1:  # the first sync under way
            _gc_thresholds.append(gc.get_threshold())
            gc.set_threshold(max(_SYNC_GC_THRESHOLD, _gc_thresholds[0][0]),
                             *_gc_thresholds[0][1:])
    try:
        yield
    finally:
        with _switch_lock:
            first = _switch_users[0]
            _switch_users.pop()
            if not _switch_users:
                sys.setswitchinterval(first)
                if _gc_thresholds:
                    gc.set_threshold(*_gc_thresholds.pop())


class _Unavailable(Exception):
    """A document could not be read back from the log (message for ``documentError``)."""


#: a key-substring search selects the rows of at most this many matching record keys by a
#: filter on their ``key_id`` literals (pushed into the scan), of more by a join
_KEY_IDS = 256
#: ... when the matching keys hold fewer rows than this (estimated: rows per key); more rows,
#: a page of them is found sooner by scanning the keys newest first
_DENSE_ROWS = 1000

_HEX = frozenset("0123456789abcdefABCDEF")


def _prefix_of(exec_id: str) -> int | None:
    """``id_prefix`` of an id, as :data:`_PREFIX_SQL` computes it."""
    digits = exec_id[:8]
    return int(digits, 16) if len(digits) == 8 and set(digits) <= _HEX else None


def _id_match(text: str, *, exact: bool) -> tuple[str, builtins.list[Any]]:
    """A condition on ``id`` (equal to ``text``, or starting with it) and its parameters,
    narrowed by ``id_prefix`` when ``text`` starts with hex digits."""
    # starts_with (not pushed into the scan) after the id_prefix filter (pushed): DuckDB then
    # compares the text of the few rows left, not of every row as a pushed ``id = ?`` would
    test, args = (("starts_with(id, ?) AND length(id) = ?", [text, len(text)]) if exact
                  else ("starts_with(id, ?)", [text]))
    digits = text[:8]
    if not digits:
        return test, args
    if set(digits) <= _HEX:
        if len(digits) == 8:  # every id starting with it has this id_prefix
            return f"id_prefix = ? AND {test}", [int(digits, 16), *args]
        if exact:  # an id this short has no id_prefix
            return f"id_prefix IS NULL AND {test}", args
        low, high = int(digits.ljust(8, "0"), 16), int(digits.ljust(8, "f"), 16)
        return (f"(id_prefix BETWEEN ? AND ? OR id_prefix IS NULL) AND {test}",
                [low, high, *args])
    # not hex in its first 8 characters: neither is an id starting with it
    return f"id_prefix IS NULL AND {test}", args


def _unique(rows: builtins.list[dict[str, Any]], seen: set[str]) -> builtins.list[dict[str, Any]]:
    """``rows`` whose id is not in ``seen`` (which gains them), first occurrence only."""
    out = []
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            out.append(row)
    return out


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    key: Any = row["record_key"]
    offsets = json.loads(row["offsets"]) if row["offsets"] else None
    error: Any = None
    if row["error_task"] is not None or row["error_message"] is not None:
        error = {"taskId": row["error_task"], "message": row["error_message"]}
    out = {
        "id": row["id"], "namespace": row["namespace"], "flowId": row["flow_id"],
        "state": row["state"], "terminal": bool(row["terminal"]),
        "startDate": _iso(row["start_us"]), "endDate": _iso(row["end_us"]),
        "durationMs": row["duration_ms"], "runs": int(row["runs"] or 1),
        "trigger": {"type": row["trigger_type"], "topic": row["topic"],
                    "partition": row["partition"], "offset": row["offset"], "key": key,
                    "timestamp": row["record_ts"], "offsets": offsets,
                    "messagesCount": row["messages_count"],
                    "deliveryCount": row["delivery_count"]},
        "upstreamExecutionId": row["upstream"], "error": error, "runId": row["run_id"],
        "logTopic": row["log_topic"], "logPartition": row["log_partition"],
        "logOffset": row["log_offset"],
    }
    if "match" in row:
        out["match"] = row["match"]

    return out


def _fold_run(runs: dict[str, builtins.list[Any]], run_id: str, *, first_us: int | None,
              state: str | None, last_us: int | None, offset: int) -> None:
    """Fold one document into ``runs[run_id]`` = [first_us, last_state, last_us,
    first_offset, last_offset]: the earliest document dates the run's start, the latest its
    state and last date."""
    run = runs.get(run_id)
    if run is None:
        runs[run_id] = [first_us, state, last_us, offset, offset]
        return
    if offset < run[3]:
        run[0], run[3] = first_us if first_us is not None else run[0], offset
    if offset >= run[4]:
        run[1], run[2], run[4] = state, last_us, offset
        if run[0] is None:
            run[0] = first_us


def _ranges(offsets: str) -> Iterator[tuple[str, int, int, int]]:
    """(topic, partition, first, last) from a batch trigger's ``{"topic/p": [first, last]}``."""
    try:
        parsed = json.loads(offsets)
    except json.JSONDecodeError:
        return
    if not isinstance(parsed, dict):
        return
    for name, bounds in parsed.items():
        topic, _, part = str(name).rpartition("/")
        if not topic or not part.isdigit() or not isinstance(bounds, list | tuple):
            continue
        if len(bounds) == 2 and all(_int(b) is not None for b in bounds):
            yield topic, int(part), int(bounds[0]), int(bounds[1])


def _json_object(value: bytes) -> bool:
    """Whether a record value is a JSON object the bulk decoder can take."""
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict)


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": str, "namespace": str, "flowId": str, "state": str, "terminal": bool, "runId": str,
    "startDate": str, "endDate": str, "durationMs": (int, float), "upstreamExecutionId": str,
}
_TRIGGER_TYPES: dict[str, type | tuple[type, ...]] = {
    "type": str, "topic": str, "partition": int, "offset": int, "timestamp": int,
    "messagesCount": int, "deliveryCount": int, "group": str,
}


def _clean(value: bytes) -> bytes:
    """A JSON object reduced to the decoded fields, each of its expected type or dropped
    (the slow path for a batch the bulk decoder refused)."""
    doc = json.loads(value)
    out: dict[str, Any] = {k: doc[k] for k, t in _FIELD_TYPES.items()
                           if isinstance(doc.get(k), t) and not (
                               t is not bool and isinstance(doc.get(k), bool))}
    trig = doc.get("trigger")
    if isinstance(trig, dict):
        clean = {k: trig[k] for k, t in _TRIGGER_TYPES.items()
                 if isinstance(trig.get(k), t) and not isinstance(trig.get(k), bool)}
        clean["key"] = trig.get("key")
        if isinstance(trig.get("offsets"), dict):
            clean["offsets"] = trig["offsets"]
        out["trigger"] = clean
    if "error" in doc:
        out["error"] = doc["error"]
    return json.dumps(out, separators=(",", ":")).encode()


class _ClientErrors:
    """A client's ``error_cb``: what it reported (one line each, for messages) and the first
    error saying the cluster refused the client."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.refused: KafkaError | None = None

    def __call__(self, err: KafkaError) -> None:
        if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
            return  # the reader's throwaway group: looked up by the client, never used
        self.texts.append(err.str())
        if self.refused is None and err.code() in _REFUSED:
            self.refused = err

    def raise_refused(self) -> None:
        if self.refused is not None:
            raise KafkaException(self.refused)


def _metadata(consumer: Consumer, topic: str, deadline: float, errors: _ClientErrors
              ) -> Any:
    """The topic's metadata (None when the cluster does not know it), asked in slices of a
    second until ``deadline``: a refused client shows in ``error_cb`` within a slice or two,
    while the request itself would only time out."""
    while True:
        try:
            return consumer.list_topics(topic, timeout=min(1.0, _left(deadline))
                                        ).topics.get(topic)
        except KafkaException as exc:
            consumer.poll(0)  # serves error_cb (nothing is assigned yet: no message)
            errors.raise_refused()
            err = exc.args[0] if exc.args else None
            if time.monotonic() >= deadline or (isinstance(err, KafkaError)
                                                and err.code() in _REFUSED):
                raise


def _reader_config(bootstrap: str, timeout: float, errors: _ClientErrors,
                   client: Mapping[str, Any]) -> dict[str, Any]:
    """A consumer that reads the log without a group of its own ever being committed:
    ``client``'s settings under the reader's own."""
    return {
        **client,
        "bootstrap.servers": bootstrap,
        "group.id": f"waxflow-index-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "allow.auto.create.topics": False,
        "socket.timeout.ms": max(10, int(min(timeout, 30.0) * 1000)),
        "socket.connection.setup.timeout.ms": max(1000, int(min(timeout, 30.0) * 1000)),
        "error_cb": errors,
        "logger": _KAFKA_LOG,
    }


def _note(message: str) -> None:
    print(f"waxflow: note: {message}", file=sys.stderr)


def _left(deadline: float) -> float:
    """Seconds until ``deadline``, at least a small positive value for client calls."""
    return max(0.05, deadline - time.monotonic())


def _kafka_message(exc: KafkaException, bootstrap: str, errors: list[str]) -> str:
    err = exc.args[0] if exc.args else None
    text = err.str() if isinstance(err, KafkaError) else str(exc)
    why = f" ({errors[-1]})" if errors else ""
    if errors and errors[-1] in text:
        why = ""
    return f"cannot read the execution log from {bootstrap}: {text}{why}"


__all__ = ["AmbiguousIdError", "ExecutionIndex", "IndexAccessError", "IndexBusyError",
           "IndexSyncError", "default_index_path", "normalize_date"]
