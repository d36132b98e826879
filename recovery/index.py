"""A local SQLite index of the execution-log topic: the read side of the execution history.

The index is a cache of the log (docs/execution-log.md): it can always be deleted and rebuilt
by syncing from offset 0. Guarantees:

- ``sync`` reads each partition of the log from the next offset stored in ``positions`` up
  to the end offset read at the start of the sync (the last stable offset: the reader is
  ``read_committed``), never commits to a consumer group, and stores documents and positions
  in the same SQLite transaction, so a crash mid-sync loses nothing and duplicates nothing.
- Per execution id, the columns and ``doc`` hold the document with the highest log offset
  (a key always lands in one partition, so offsets of one key are comparable).
- ``runs`` counts the distinct ``runId`` values seen for an execution. Compaction keeps only
  the latest document per key, so an index built from an already compacted log may count
  fewer runs than happened.
- Dates in the columns are normalised to UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (so text order is
  time order); documents are returned exactly as written.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from waxflow.errors import WaxflowError

SCHEMA_VERSION = 1
MIN_PREFIX = 6
MAX_TRACE_DEPTH = 10
_BATCH = 500
_KAFKA_LOG = logging.getLogger("waxflow.index.kafka")
_KAFKA_LOG.addHandler(logging.NullHandler())

_SCHEMA = """
CREATE TABLE positions (
  topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
  PRIMARY KEY (topic, partition));
CREATE TABLE executions (
  id TEXT PRIMARY KEY, namespace TEXT, flow_id TEXT, state TEXT, terminal INTEGER,
  topic TEXT, partition INTEGER, offset INTEGER,
  start_date TEXT, end_date TEXT, duration_ms REAL, runs INTEGER NOT NULL DEFAULT 0,
  upstream_execution_id TEXT,
  log_topic TEXT NOT NULL, log_partition INTEGER NOT NULL, log_offset INTEGER NOT NULL,
  doc TEXT NOT NULL);
CREATE INDEX executions_trigger ON executions (topic, partition, offset);
CREATE INDEX executions_flow ON executions (flow_id);
CREATE INDEX executions_state ON executions (state);
CREATE INDEX executions_start ON executions (start_date);
CREATE INDEX executions_upstream ON executions (upstream_execution_id);
CREATE TABLE runs (
  execution_id TEXT NOT NULL, run_id TEXT NOT NULL,
  first_state_date TEXT, last_state TEXT, last_date TEXT,
  first_offset INTEGER NOT NULL, last_offset INTEGER NOT NULL,
  PRIMARY KEY (execution_id, run_id));
CREATE TABLE batch_ranges (
  execution_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
  first_offset INTEGER NOT NULL, last_offset INTEGER NOT NULL,
  PRIMARY KEY (execution_id, topic, partition));
CREATE INDEX batch_ranges_lookup ON batch_ranges (topic, partition, first_offset);
"""
_TABLES = ("positions", "executions", "runs", "batch_ranges")


class IndexSyncError(WaxflowError, RuntimeError):
    """The log could not be read (broker unreachable, timeout, ...); one line for users."""


class AmbiguousIdError(WaxflowError, LookupError):
    """An id prefix matches more than one execution; ``candidates`` lists (some of) them."""

    def __init__(self, prefix: str, candidates: list[str], more: bool = False) -> None:
        listed = ", ".join(candidates) + (", ..." if more else "")
        super().__init__(f"id prefix {prefix!r} is ambiguous: {listed}")
        self.prefix = prefix
        self.candidates = candidates


def default_index_path() -> Path:
    """``$WAXFLOW_HOME/index.sqlite``, else ``.waxflow/index.sqlite`` in the cwd."""
    home = os.environ.get("WAXFLOW_HOME")
    return (Path(home) if home else Path.cwd() / ".waxflow") / "index.sqlite"


def normalize_date(value: object) -> str | None:
    """An ISO date string or datetime as sortable UTC text; None when absent or unparsable.

    Naive values are taken as UTC.
    """
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _ranges(offsets: object) -> Iterator[tuple[str, int, int, int]]:
    """(topic, partition, first, last) from a batch trigger's ``{"topic/p": [first, last]}``."""
    if not isinstance(offsets, dict):
        return
    for name, bounds in offsets.items():
        topic, _, part = str(name).rpartition("/")
        if not topic or not part.isdigit() or not isinstance(bounds, list | tuple):
            continue
        if len(bounds) == 2 and all(_int(b) is not None for b in bounds):
            yield topic, int(part), int(bounds[0]), int(bounds[1])


class ExecutionIndex:
    """The SQLite index at ``path`` (created with its parent directory, WAL mode).

    An index written by another schema version is dropped and rebuilt on open (it is a
    cache). Not thread-safe: one instance per thread.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_index_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.last_sync_complete = True
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        drops = "".join(f"DROP TABLE IF EXISTS {table};" for table in _TABLES)
        self._db.executescript(
            f"BEGIN; {drops} {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

    def close(self) -> None:
        """Close the database connection."""
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
        with self._db:
            return self._ingest(log_topic, partition, offset, key=key, value=value,
                                timestamp_ms=timestamp_ms)

    def _ingest(self, log_topic: str, partition: int, offset: int, *, key: bytes | None,
                value: bytes | None, timestamp_ms: int | None) -> bool:
        if value is None:
            return False
        try:
            doc = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return False
        if not isinstance(doc, dict):
            return False
        exec_id = _str(doc.get("id")) or (key.decode("utf-8", "replace") if key else None)
        if not exec_id:
            return False
        self._upsert_run(exec_id, doc, offset, timestamp_ms)
        row = self._db.execute(
            "SELECT log_topic, log_partition, log_offset FROM executions WHERE id = ?",
            (exec_id,)).fetchone()
        older = row is not None and (row[0], row[1]) == (log_topic, partition) and row[2] > offset
        if not older:
            self._upsert_execution(exec_id, doc, log_topic=log_topic, partition=partition,
                                   offset=offset)
        self._db.execute(
            "UPDATE executions SET runs = (SELECT count(*) FROM runs WHERE execution_id = ?)"
            " WHERE id = ?", (exec_id, exec_id))
        return True

    def _upsert_execution(self, exec_id: str, doc: dict[str, Any], *, log_topic: str,
                          partition: int, offset: int) -> None:
        trig = doc.get("trigger") if isinstance(doc.get("trigger"), dict) else {}
        assert isinstance(trig, dict)
        duration = doc.get("durationMs")
        self._db.execute(
            "INSERT INTO executions (id, namespace, flow_id, state, terminal, topic, partition,"
            " offset, start_date, end_date, duration_ms, upstream_execution_id, log_topic,"
            " log_partition, log_offset, doc) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (id) DO UPDATE SET namespace=excluded.namespace,"
            " flow_id=excluded.flow_id, state=excluded.state, terminal=excluded.terminal,"
            " topic=excluded.topic, partition=excluded.partition, offset=excluded.offset,"
            " start_date=excluded.start_date, end_date=excluded.end_date,"
            " duration_ms=excluded.duration_ms,"
            " upstream_execution_id=excluded.upstream_execution_id,"
            " log_topic=excluded.log_topic, log_partition=excluded.log_partition,"
            " log_offset=excluded.log_offset, doc=excluded.doc",
            (exec_id, _str(doc.get("namespace")), _str(doc.get("flowId")),
             _str(doc.get("state")), bool(doc.get("terminal")), _str(trig.get("topic")),
             _int(trig.get("partition")), _int(trig.get("offset")),
             normalize_date(doc.get("startDate")), normalize_date(doc.get("endDate")),
             float(duration) if isinstance(duration, int | float) else None,
             _str(doc.get("upstreamExecutionId")), log_topic, partition, offset,
             json.dumps(doc)))
        self._db.execute("DELETE FROM batch_ranges WHERE execution_id = ?", (exec_id,))
        self._db.executemany(
            "INSERT OR REPLACE INTO batch_ranges VALUES (?,?,?,?,?)",
            [(exec_id, *r) for r in _ranges(trig.get("offsets"))])

    def _upsert_run(self, exec_id: str, doc: dict[str, Any], offset: int,
                    timestamp_ms: int | None) -> None:
        run_id = _str(doc.get("runId")) or ""
        start = normalize_date(doc.get("startDate"))
        last = normalize_date(doc.get("endDate")) or (
            normalize_date(datetime.fromtimestamp(timestamp_ms / 1000, UTC))
            if timestamp_ms is not None and timestamp_ms >= 0 else None) or start
        state = _str(doc.get("state"))
        row = self._db.execute(
            "SELECT first_offset, last_offset FROM runs WHERE execution_id = ? AND run_id = ?",
            (exec_id, run_id)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?)",
                             (exec_id, run_id, start, state, last, offset, offset))
            return
        if offset < row["first_offset"]:
            self._db.execute(
                "UPDATE runs SET first_state_date = coalesce(?, first_state_date),"
                " first_offset = ? WHERE execution_id = ? AND run_id = ?",
                (start, offset, exec_id, run_id))
        if offset >= row["last_offset"]:
            self._db.execute(
                "UPDATE runs SET last_state = ?, last_date = ?, last_offset = ?,"
                " first_state_date = coalesce(first_state_date, ?)"
                " WHERE execution_id = ? AND run_id = ?",
                (state, last, offset, start, exec_id, run_id))

    # -- syncing from Kafka --------------------------------------------------------------

    def positions(self, topic: str) -> dict[int, int]:
        """The next offset to read per partition of ``topic``, as stored by past syncs."""
        rows = self._db.execute(
            "SELECT partition, next_offset FROM positions WHERE topic = ?", (topic,))
        return {int(r[0]): int(r[1]) for r in rows}

    def sync(self, bootstrap: str, topic: str, timeout: float = 10.0) -> int:
        """Read new records of the log ``topic`` into the index; return the documents read.

        Reads every partition from its stored position up to the end offset read at the
        start, within ``timeout`` seconds overall. A missing topic reads nothing (0). If the
        deadline passes with partitions unfinished, what was read is kept and
        ``last_sync_complete`` is False; if the client also reported errors, or the broker
        cannot be reached at all, raises :class:`IndexSyncError`.
        """
        deadline = time.monotonic() + timeout
        errors: list[str] = []
        consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"waxflow-index-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
            "allow.auto.create.topics": False,
            "socket.timeout.ms": max(10, int(min(timeout, 30.0) * 1000)),
            "socket.connection.setup.timeout.ms": max(1000, int(min(timeout, 30.0) * 1000)),
            "error_cb": lambda err: errors.append(str(err)),
            "logger": _KAFKA_LOG,
        })
        self.last_sync_complete = True
        try:
            ends = self._plan(consumer, topic, deadline)
            if not ends:
                return 0
            return self._read(consumer, topic, ends=ends, deadline=deadline, errors=errors)
        except KafkaException as exc:
            raise IndexSyncError(_kafka_message(exc, bootstrap, errors)) from None
        finally:
            consumer.close()

    def _plan(self, consumer: Consumer, topic: str, deadline: float) -> dict[int, int]:
        """Assign each partition with records to read; return {partition: end offset}."""
        meta = consumer.list_topics(topic, timeout=_left(deadline)).topics.get(topic)
        if meta is None or meta.error is not None:
            if meta is not None and meta.error.code() not in (
                KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                raise KafkaException(meta.error)
            return {}
        stored = self.positions(topic)
        ends: dict[int, int] = {}
        assign: list[TopicPartition] = []
        for part in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, part), timeout=_left(deadline), cached=False)
            start = stored.get(part, 0)
            if start > high:  # the topic was recreated: read it again from the start
                start = 0
            start = max(start, low)
            if start < high:
                ends[part] = high
                assign.append(TopicPartition(topic, part, start))
        if assign:
            consumer.assign(assign)
        return ends

    def _read(self, consumer: Consumer, topic: str, *, ends: dict[int, int], deadline: float,
              errors: list[str]) -> int:
        pending = set(ends)
        count = 0
        while pending and time.monotonic() < deadline:
            msgs = consumer.consume(_BATCH, timeout=min(0.1, _left(deadline)))
            nexts: dict[int, int] = {}
            with self._db:
                for msg in msgs:
                    count += self._handle(topic, msg, ends=ends, pending=pending, nexts=nexts,
                                          errors=errors)
                self._db.executemany(
                    "INSERT INTO positions VALUES (?,?,?) ON CONFLICT (topic, partition)"
                    " DO UPDATE SET next_offset = excluded.next_offset",
                    [(topic, p, o) for p, o in nexts.items()])
        if pending:
            self.last_sync_complete = False
            if errors:
                raise IndexSyncError(
                    f"reading {topic} did not finish in time (partitions {sorted(pending)}): "
                    f"{errors[-1]}")
        return count

    def _handle(self, topic: str, msg: Message, *, ends: dict[int, int], pending: set[int],
                nexts: dict[int, int], errors: list[str]) -> int:
        part, off, err = msg.partition(), msg.offset(), msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                if err.fatal():
                    raise KafkaException(err)
                errors.append(str(err))
            elif part in ends and off is not None:  # nothing more to fetch right now
                pending.discard(part)
                nexts[part] = max(nexts.get(part, 0), min(off, ends[part]))
            return 0
        if part is None or off is None or part not in ends or off >= ends[part]:
            if part is not None:
                pending.discard(part)
            return 0
        nexts[part] = max(nexts.get(part, 0), off + 1)
        if off + 1 >= ends[part]:
            pending.discard(part)
        ts_type, ts = msg.timestamp()
        ok = self._ingest(topic, part, off, key=msg.key(), value=msg.value(),
                          timestamp_ms=ts if ts_type else None)
        return int(ok)

    # -- queries -------------------------------------------------------------------------

    def list(self, *, flow: str | None = None, state: str | None = None, topic: str | None = None,
             since: datetime | None = None, until: datetime | None = None,
             limit: int = 50) -> list[dict[str, Any]]:
        """Execution summaries, newest start first, filtered by every given criterion.

        ``flow`` matches the flow id or ``namespace.flowId``; ``state`` is case-insensitive;
        ``topic`` matches the trigger topic or any topic of a batch's ranges; ``since`` is
        inclusive and ``until`` exclusive (naive datetimes are UTC).
        """
        where: list[str] = []
        params: list[Any] = []
        if flow:
            where.append("(flow_id = ? OR namespace || '.' || flow_id = ?)")
            params += [flow, flow]
        if state:
            where.append("state = ?")
            params.append(state.upper())
        if topic:
            where.append("(topic = ? OR id IN (SELECT execution_id FROM batch_ranges"
                         " WHERE topic = ?))")
            params += [topic, topic]
        if since is not None:
            where.append("start_date >= ?")
            params.append(normalize_date(since))
        if until is not None:
            where.append("start_date < ?")
            params.append(normalize_date(until))
        sql = "SELECT * FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_date IS NULL, start_date DESC, log_offset DESC LIMIT ?"
        params.append(max(0, limit))
        return [_summary(r) for r in self._db.execute(sql, params)]

    def resolve(self, id_or_prefix: str) -> str | None:
        """The full id for an exact id or a unique prefix of at least 6 characters.

        Returns None when nothing matches; raises :class:`AmbiguousIdError` when several do.
        """
        if self._db.execute("SELECT 1 FROM executions WHERE id = ?", (id_or_prefix,)).fetchone():
            return id_or_prefix
        if len(id_or_prefix) < MIN_PREFIX:
            return None
        rows = self._db.execute(
            "SELECT id FROM executions WHERE id >= ? AND id < ? ORDER BY id LIMIT 11",
            (id_or_prefix, id_or_prefix + "\U0010ffff")).fetchall()
        if len(rows) > 1:
            raise AmbiguousIdError(id_or_prefix, [r[0] for r in rows[:10]], len(rows) > 10)
        return str(rows[0][0]) if rows else None

    def show(self, id_or_prefix: str) -> dict[str, Any] | None:
        """The latest document of one execution plus ``runs``: [{runId, state, startDate,
        lastDate}] in log order. None when unknown; ambiguous prefix → AmbiguousIdError."""
        exec_id = self.resolve(id_or_prefix)
        if exec_id is None:
            return None
        row = self._db.execute("SELECT doc FROM executions WHERE id = ?", (exec_id,)).fetchone()
        doc: dict[str, Any] = json.loads(row[0])
        doc["runs"] = [
            {"runId": r["run_id"] or None, "state": r["last_state"],
             "startDate": r["first_state_date"], "lastDate": r["last_date"]}
            for r in self._db.execute(
                "SELECT * FROM runs WHERE execution_id = ? ORDER BY first_offset", (exec_id,))]
        return doc

    def trace(self, topic: str, partition: int, offset: int) -> builtins.list[dict[str, Any]]:
        """What happened to one record: summaries of the executions it triggered (``match``
        "record"), of the batches whose range covers it ("batch"), and of executions
        downstream of those through ``upstreamExecutionId`` ("downstream", up to depth 10).

        Each summary carries ``depth`` (0 for the record's own executions); ordered by depth,
        then start date.
        """
        rows = self._db.execute(
            "SELECT *, 'record' AS match FROM executions"
            " WHERE topic = ? AND partition = ? AND offset = ?"
            " UNION SELECT e.*, 'batch' AS match FROM executions e JOIN batch_ranges b"
            " ON b.execution_id = e.id WHERE b.topic = ? AND b.partition = ?"
            " AND b.first_offset <= ? AND b.last_offset >= ?",
            (topic, partition, offset, topic, partition, offset, offset)).fetchall()
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        level = _unique(rows, seen)
        for depth in range(MAX_TRACE_DEPTH + 1):
            if not level:
                break
            level.sort(key=lambda r: (r["start_date"] or "", r["id"]))
            out += [{**_summary(r), "match": r["match"], "depth": depth} for r in level]
            ids = [r["id"] for r in level]
            marks = ",".join("?" * len(ids))
            level = _unique(self._db.execute(
                "SELECT *, 'downstream' AS match FROM executions"
                f" WHERE upstream_execution_id IN ({marks})", ids).fetchall(), seen)
        return out


def _unique(rows: Iterable[sqlite3.Row], seen: set[str]) -> list[sqlite3.Row]:
    out = []
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            out.append(row)
    return out


def _summary(row: sqlite3.Row) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(row["doc"])
    return {
        "id": row["id"], "namespace": doc.get("namespace"), "flowId": doc.get("flowId"),
        "state": doc.get("state"), "terminal": bool(doc.get("terminal")),
        "startDate": doc.get("startDate"), "endDate": doc.get("endDate"),
        "durationMs": doc.get("durationMs"), "runs": row["runs"],
        "trigger": doc.get("trigger"), "upstreamExecutionId": doc.get("upstreamExecutionId"),
        "error": doc.get("error"),
    }


def _left(deadline: float) -> float:
    """Seconds until ``deadline``, at least a small positive value for client calls."""
    return max(0.05, deadline - time.monotonic())


def _kafka_message(exc: KafkaException, bootstrap: str, errors: list[str]) -> str:
    err = exc.args[0] if exc.args else None
    text = err.str() if isinstance(err, KafkaError) else str(exc)
    why = f" ({errors[-1]})" if errors and errors[-1] not in text else ""
    return f"cannot read the execution log from {bootstrap}: {text}{why}"
