"""The execution model: states, deterministic ids, what triggered it, task runs, the document.

An execution id is derived only from the flow and the trigger's coordinates
(:func:`execution_id`), so a replayed record, batch or tick gets the same id (G2); each run of
it gets a fresh ``runId`` so the history can show the replay. ``document()`` is what goes to
the execution-log topic (docs/execution-log.md); secrets are redacted from it.

An execution keeps its own log lines (:meth:`Execution.log`: level, time, task, task run,
attempt, message), at most ``LOG_LINES`` of them (the first ones and the latest; the document
says how many it dropped); an execution that logs nothing carries no list at all.

``to_json()`` encodes it as strict JSON that always fits in one Kafka record
(:func:`encode_document`): NaN and infinities become the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"``; a document over ``VALUE_MAX_BYTES`` has each larger value replaced by a
``{"$truncated": true, ...}`` marker, and one still over ``DOC_MAX_BYTES`` is trimmed further
(its log lines first, then its task runs) until it fits. The common case (no secret
registered, no NaN, under the value limit) writes the JSON text straight from the execution,
without building the ``document()`` dicts: the same bytes (keys, order, nulls) as
``encode_document(document())``, which every other case still takes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from waxflow.expressions import redact_obj


class State(StrEnum):
    """The state of an execution, a task run or an attempt (a ``str``: JSON as its name)."""

    CREATED = "CREATED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCESS = "SUCCESS"
    WARNING = "WARNING"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"  # a record that did not deserialize (onSerdeError SKIPPED or DLQ)


TERMINAL = frozenset({State.SUCCESS, State.WARNING, State.FAILED, State.SKIPPED})


def execution_id(namespace: str, flow_id: str, *coordinates: object) -> str:
    """The deterministic id of an execution (32 hex chars).

    ``coordinates`` say what triggered it: ``(topic, partition, offset)`` for a record,
    ``("batch", "t/p:first-last,...")`` for a batch, ``("schedule", tick_iso)`` for a tick.
    The same flow and coordinates always give the same id (a replay keeps its id, G2).
    """
    raw = "\x1f".join(str(part) for part in (namespace, flow_id, *coordinates)).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def record_ids(namespace: str, flow_id: str) -> Callable[[str, int, int], str]:
    """``execution_id(namespace, flow_id, topic, partition, offset)`` as a function of the
    record's coordinates: the same ids (G2), with the flow's part of the text built once
    (a third of the cost per record)."""
    prefix = f"{namespace}\x1f{flow_id}\x1f"
    sha256 = hashlib.sha256

    def of(topic: str, partition: int, offset: int) -> str:
        return sha256(f"{prefix}{topic}\x1f{partition}\x1f{offset}".encode()).hexdigest()[:32]

    return of


@dataclass(slots=True)
class TriggerInfo:
    """What started an execution, as its document shows it (``trigger`` in the history).

    A record sets topic/partition/offset/key/timestamp (and, from a share group,
    ``delivery_count`` and the planned ``ack``); a batch sets ``offsets``
    (``{"topic/partition": [first, last]}``), ``messages_count``, ``uri`` and its skipped
    records; a tick sets ``date`` and ``next``.
    """

    type: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: Any = None
    timestamp: int | None = None
    offsets: dict[str, list[int]] | None = None
    messages_count: int | None = None
    delivery_count: int | None = None
    ack: str | None = None
    uri: str | None = None
    skipped_count: int | None = None
    skipped: list[dict[str, Any]] | None = None
    date: str | None = None
    next: str | None = None

    def document(self) -> dict[str, Any]:
        """The ``trigger`` object of the execution document (docs/execution-log.md)."""
        doc: dict[str, Any] = {
            "type": self.type, "topic": self.topic, "partition": self.partition,
            "offset": self.offset, "key": self.key, "timestamp": self.timestamp,
            "offsets": self.offsets, "messagesCount": self.messages_count,
            "deliveryCount": self.delivery_count,
        }
        for name, value in (("ack", self.ack), ("uri", self.uri),
                            ("skippedCount", self.skipped_count), ("skipped", self.skipped),
                            ("date", self.date), ("next", self.next)):
            if value is not None:
                doc[name] = value
        return doc

    def json_text(self) -> str:
        """:meth:`document` as JSON text (``_ENCODE`` of it: same keys, order and nulls),
        written directly; raises ValueError for a NaN or infinity (see
        :meth:`Execution.to_json`)."""
        text = (f'{{"type":{_json(self.type)},"topic":{_json(self.topic)},'
                f'"partition":{_json(self.partition)},"offset":{_json(self.offset)},'
                f'"key":{_json(self.key)},"timestamp":{_json(self.timestamp)},'
                f'"offsets":{_json(self.offsets)},"messagesCount":{_json(self.messages_count)},'
                f'"deliveryCount":{_json(self.delivery_count)}')
        if (self.ack is None and self.uri is None and self.skipped_count is None
                and self.skipped is None and self.date is None and self.next is None):
            return text + "}"
        for name, value in (("ack", self.ack), ("uri", self.uri),
                            ("skippedCount", self.skipped_count), ("skipped", self.skipped),
                            ("date", self.date), ("next", self.next)):
            if value is not None:
                text += f',"{name}":{_json(value)}'
        return text + "}"

    def describe(self) -> str:
        """What triggered the execution, for messages: a record, a batch or a tick."""
        if self.offset is not None:
            return f"record {self.topic}/{self.partition}@{self.offset}"
        if self.date is not None:
            return f"tick {self.date}"
        return f"batch of {self.messages_count} records (offsets {self.offsets})"


def now() -> datetime:
    return datetime.now(UTC)


#: (the fields of a second, that second's ISO text without offset): one slot, replaced whole
_ISO_SECOND: list[tuple[tuple[int, ...], str]] = [((), "")]


def iso(ts: datetime | None) -> str | None:
    """``ts.isoformat()`` (None for None). A UTC time (as :func:`now` gives) reuses the text
    of its second, formatted once: half the cost of ``isoformat`` (it is called ~9 times per
    execution). Thread-safe: the cache is one slot replaced whole."""
    if ts is None:
        return None
    if ts.tzinfo is not UTC:
        return ts.isoformat()
    second = (ts.second, ts.minute, ts.hour, ts.day, ts.month, ts.year)
    hit = _ISO_SECOND[0]
    if hit[0] != second:
        hit = _ISO_SECOND[0] = (second, ts.replace(microsecond=0, tzinfo=None).isoformat())
    micro = ts.microsecond
    return f"{hit[1]}.{micro:06d}+00:00" if micro else f"{hit[1]}+00:00"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: (an epoch second, its ISO text without offset): one slot, replaced whole
_ISO_EPOCH_SECOND: list[tuple[int, str]] = [(-1, "")]


def now_us() -> int:
    """Now, as integer microseconds since the epoch: the clock :func:`now` reads (the
    system's, floored to the microsecond), without a datetime object (the compiled path
    keeps its times so and builds datetimes only if it needs the execution object)."""
    return time.time_ns() // 1000


def from_us(us: int) -> datetime:
    """The UTC datetime of :func:`now_us`'s microseconds (exact)."""
    return _EPOCH + timedelta(microseconds=us)


def iso_us(us: int) -> str:
    """``iso(from_us(us))`` without the datetime: the second's text formatted once."""
    second, micro = divmod(us, 1_000_000)
    hit = _ISO_EPOCH_SECOND[0]
    if hit[0] != second:
        text = (_EPOCH + timedelta(seconds=second)).replace(tzinfo=None).isoformat()
        hit = _ISO_EPOCH_SECOND[0] = (second, text)
    return f"{hit[1]}.{micro:06d}+00:00" if micro else f"{hit[1]}+00:00"


#: run ids come from a generator seeded from ``os.urandom`` (re-seeded in a forked child):
#: unique, not secret, and no system call per execution (``uuid4`` makes one, and the GIL
#: it releases there may go to another thread for a whole switch interval)
_RUN_IDS = random.Random()
os.register_at_fork(after_in_child=_RUN_IDS.seed)


def run_id() -> str:
    """A fresh run id: 32 random hex characters, as ``uuid4().hex`` spells one."""
    return f"{_RUN_IDS.getrandbits(128):032x}"


_PLAIN = frozenset({str, int, float, bool, type(None)})


def jsonable(value: Any) -> Any:
    """Make a deserialized Kafka value JSON-serialisable (bytes → base64 text)."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, bytes | bytearray):
        return {"$base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


@dataclass
class Attempt:
    """One try of a task run."""

    state: State
    start: datetime
    end: datetime | None = None
    error: str | None = None


@dataclass
class TaskRun:
    """One task of an execution, with its attempts and outputs."""

    task_id: str
    type: str
    parent: str | None
    state: State = State.RUNNING
    attempts: list[Attempt] = field(default_factory=list)
    outputs: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "taskId": self.task_id, "type": self.type, "parentTaskId": self.parent,
            "state": self.state,
            "attempts": [{"state": a.state, "startDate": iso(a.start), "endDate": iso(a.end),
                          "error": a.error} for a in self.attempts],
            "outputs": jsonable(self.outputs) if self.outputs else None,
        }

    def json_text(self) -> str:
        """:meth:`as_dict` as JSON text, written directly (see :meth:`TriggerInfo.json_text`)."""
        attempts = ",".join([
            f'{{"state":{_state(a.state)},"startDate":{_date(a.start)},"endDate":{_date(a.end)},'
            f'"error":{"null" if a.error is None else _json(a.error)}}}'
            for a in self.attempts])
        outputs = _value(jsonable(self.outputs)) if self.outputs else "null"
        parent = "null" if self.parent is None else _json(self.parent)
        return (f'{{"taskId":{_json(self.task_id)},"type":{_json(self.type)},'
                f'"parentTaskId":{parent},"state":{_state(self.state)},'
                f'"attempts":[{attempts}],"outputs":{outputs}}}')


@dataclass
class Execution:
    """One run of a flow's task list for one record (or batch)."""

    id: str
    namespace: str
    flow_id: str
    trigger: TriggerInfo
    state: State = State.CREATED
    run_id: str = field(default_factory=run_id)
    start: datetime = field(default_factory=now)
    end: datetime | None = None
    task_runs: list[TaskRun] = field(default_factory=list)
    error: dict[str, str] | None = None
    upstream_id: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    #: the log lines (:meth:`log`); None until the first one: nothing allocated for an
    #: execution that logs nothing
    logs: list[dict[str, Any]] | None = None
    #: lines :meth:`log` dropped past ``LOG_LINES``
    logs_dropped: int = 0
    #: the flow's ``outputs`` (id -> typed value), set when an execution of a flow that
    #: declares them ends without failing; None otherwise (the document then has no key)
    outputs: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def add_task_run(self, run: TaskRun) -> int:
        """Append ``run``; its index in :attr:`task_runs` (what its task run id is made of)."""
        with self._lock:
            self.task_runs.append(run)
            return len(self.task_runs) - 1

    def finish(self, state: State) -> None:
        self.state = state
        self.end = now()

    def task_run_id(self, index: int) -> str:
        """The id of the task run at ``index`` of :attr:`task_runs` (``taskrun.id`` in
        expressions, ``taskRunId`` of its log lines)."""
        return f"{self.id[:16]}-{index}"

    def log(self, level: str, message: str, *, task_id: str | None = None,
            task_run_id: str | None = None, attempt: int | None = None) -> None:
        """Record one log line (``level``: one of ``waxflow.logs.LINE_LEVELS``; ``message``
        should be masked already, and :meth:`document` masks it again). Thread-safe.

        At most ``LOG_LINES`` lines are kept: past that, each new line replaces the last
        one, so the first ``LOG_LINES - 1`` and the latest stay, and :attr:`logs_dropped`
        counts the others. A message longer than ``VALUE_MAX_BYTES`` characters is cut
        here as the document would cut it (``... [truncated: N bytes]``), so a chatty task
        holds no more memory than its document shows.
        """
        if len(message) > VALUE_MAX_BYTES:
            message = (f"{message[:TEXT_KEEP_CHARS]}... "
                       f"[truncated: {len(message.encode())} bytes]")
        line = {"ts": now().isoformat(), "level": level, "taskId": task_id,
                "taskRunId": task_run_id, "attempt": attempt, "message": message}
        with self._lock:
            if self.logs is None:
                self.logs = []
            if len(self.logs) < LOG_LINES:
                self.logs.append(line)
                return
            if LOG_LINES > 0:
                self.logs[-1] = line
            self.logs_dropped += 1

    def document(self) -> dict[str, Any]:
        """The JSON document for the execution log, with secret values redacted."""
        with self._lock:
            runs = [r.as_dict() for r in self.task_runs]
            logs = list(self.logs) if self.logs else None
            dropped = self.logs_dropped
        doc: dict[str, Any] = {
            "id": self.id, "namespace": self.namespace, "flowId": self.flow_id,
            "state": self.state, "terminal": self.terminal, "runId": self.run_id,
            "startDate": iso(self.start), "endDate": iso(self.end),
            "durationMs": ((self.end - self.start).total_seconds() * 1000
                           if self.end is not None else None),
            "trigger": self.trigger.document(), "taskRuns": runs, "error": self.error,
            "upstreamExecutionId": self.upstream_id, "labels": self.labels,
        }
        if self.outputs is not None:
            doc["outputs"] = jsonable(self.outputs)
        if logs is not None:
            doc["logs"] = logs
        if dropped:
            doc["logsDropped"] = dropped
        return redact_obj(doc)  # type: ignore[no-any-return]

    def to_json(self) -> bytes:
        """The document as the execution log stores it: strict UTF-8 JSON of at most
        ``DOC_MAX_BYTES`` (:func:`encode_document`); the execution keeps its full outputs.

        The same bytes as ``encode_document(self.document())``; when no secret is registered
        (nothing to redact) they are written straight from the execution, and only a document
        holding a NaN or infinity, or over ``VALUE_MAX_BYTES``, takes the general path."""
        if redact_obj(_REDACT_PROBE) is not _REDACT_PROBE:  # a secret is registered
            return encode_document(self.document())
        try:
            data = self._json_text().encode()
        except ValueError:  # NaN or an infinity: made strings by the general path
            return encode_document(self.document())
        size = len(data)
        if size <= VALUE_MAX_BYTES and size <= DOC_MAX_BYTES:
            return data
        return encode_document(self.document())  # trimmed to fit

    def _json_text(self) -> str:
        """:meth:`document` without redaction, as the JSON text ``_ENCODE`` makes of it."""
        with self._lock:
            runs = ",".join([r.json_text() for r in self.task_runs])
            logs = _ENCODE(self.logs) if self.logs else None
            dropped = self.logs_dropped
        end = self.end
        duration = ("null" if end is None
                    else _json((end - self.start).total_seconds() * 1000))
        text = (f'{{"id":{_json(self.id)},"namespace":{_json(self.namespace)},'
                f'"flowId":{_json(self.flow_id)},"state":{_state(self.state)},'
                f'"terminal":{"true" if self.state in TERMINAL else "false"},'
                f'"runId":{_json(self.run_id)},"startDate":{_date(self.start)},'
                f'"endDate":{_date(end)},"durationMs":{duration},'
                f'"trigger":{self.trigger.json_text()},"taskRuns":[{runs}],'
                f'"error":{_json(self.error)},"upstreamExecutionId":{_json(self.upstream_id)},'
                f'"labels":{_json(self.labels)}')
        if self.outputs is not None:
            text += f',"outputs":{_value(jsonable(self.outputs))}'
        if logs is not None:
            text += f',"logs":{logs}'
        if dropped:
            text += f',"logsDropped":{dropped}'
        return text + "}"


# ------------------------------------------------------------------ the encoded document
LOG = logging.getLogger(__name__)


def _env_bytes(name: str, default: int, floor: int, unit: str = "bytes") -> int:
    """A byte count (a count of ``unit``) from the environment (``default`` when unset or
    not an integer; at least ``floor``)."""
    raw = os.environ.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        LOG.warning("$%s=%r is not a number of %s; using %d", name, raw, unit, default)
        return default
    return max(value, floor)


#: hard cap of one encoded document (UTF-8 bytes), below the producer's 1,000,000-byte
#: ``message.max.bytes`` and the broker's 1,048,588; ``$WAXFLOW_DOC_MAX_BYTES``
DOC_MAX_BYTES = _env_bytes("WAXFLOW_DOC_MAX_BYTES", 900_000, 16_384)
#: a value of a document (an output value, the trigger key, the skipped list) whose JSON is
#: larger is replaced by a marker; ``$WAXFLOW_DOC_VALUE_MAX_BYTES``
VALUE_MAX_BYTES = _env_bytes("WAXFLOW_DOC_VALUE_MAX_BYTES", 65_536, 1_024)
#: log lines kept per execution (:meth:`Execution.log`; 0: none, all counted as dropped);
#: ``$WAXFLOW_EXECUTION_LOG_LINES``
LOG_LINES = _env_bytes("WAXFLOW_EXECUTION_LOG_LINES", 200, 0, "lines")
#: characters of a replaced value shown in its marker's ``preview``
PREVIEW_CHARS = 256
#: characters kept of a cut text (an error message)
TEXT_KEEP_CHARS = 1_024
#: the smallest value limit tried before falling back to the minimal document
_MIN_LIMIT = 1_024

#: strict, compact, UTF-8: one encoder built once (``json.dumps`` with keywords builds one per
#: call); raises ValueError on NaN/Infinity
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode

_NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}

#: a JSON string literal of a ``str`` exactly as ``_ENCODE`` writes it (C, no encoder set-up)
_STRING = json.encoder.encode_basestring
#: :func:`redact_obj` gives back this very object only when no secret is registered
_REDACT_PROBE: dict[str, Any] = {}


def _unserializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


#: ``_ENCODE``'s C encoder, built once (``_ENCODE`` builds one per call) and without the
#: check for circular references: only for values ``jsonable`` made (a cycle already fails
#: there, with RecursionError); ``_ENCODE`` itself where there is no C encoder
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_VALUE = (_C_ENCODER(None, _unserializable, _STRING, None, ":", ",", False, False, False)
          if _C_ENCODER is not None else None)


def _value(value: Any) -> str:
    """``_ENCODE(value)`` of a value :func:`jsonable` made (ValueError for NaN/infinity)."""
    return "".join(_VALUE(value, 0)) if _VALUE is not None else _ENCODE(value)


#: each state's JSON text
_STATES = {state: f'"{state.value}"' for state in State}


def _state(state: Any) -> str:
    """``_ENCODE(state)`` (a State, or its text)."""
    return _STATES.get(state) or _json(state)


def _date(ts: datetime | None) -> str:
    """``_ENCODE(iso(ts))``: an ISO date needs no escaping."""
    return "null" if ts is None else f'"{iso(ts)}"'


def _json(value: Any) -> str:
    """``_ENCODE(value)``, cheaper for the scalars a document is mostly made of (raises
    ValueError for a NaN or infinity, as ``_ENCODE`` does)."""
    if value is None:
        return "null"
    if isinstance(value, str):  # a StrEnum (State) too: written as its text
        return _STRING(value)
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    if kind is dict and not value:
        return "{}"
    return _ENCODE(value)


def _nonfinite(value: float) -> str:
    return "NaN" if value != value else _NONFINITE[value]


def finite(obj: Any) -> Any:
    """A copy of a JSON-like structure with NaN, Infinity and -Infinity (values and keys) as
    the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (as Jackson, Kestra's JSON library,
    writes them); everything else unchanged."""
    if type(obj) is float:
        return obj if math.isfinite(obj) else _nonfinite(obj)
    if isinstance(obj, dict):
        return {(_nonfinite(k) if type(k) is float and not math.isfinite(k) else k): finite(v)
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):  # a float subclass
        return _nonfinite(obj)
    return obj


def encode_document(doc: dict[str, Any], *, max_bytes: int | None = None,
                    value_max: int | None = None) -> bytes:
    """``doc`` as strict compact UTF-8 JSON of at most ``max_bytes`` (``DOC_MAX_BYTES``).

    Fast path: one strict encoding and one ``len()``. NaN/Infinity (only on the ValueError
    they raise) become strings (:func:`finite`). When the bytes exceed ``value_max``
    (``VALUE_MAX_BYTES``) or ``max_bytes``, :func:`_fit` trims a copy: ``doc`` itself is
    never changed. The result then carries ``"truncated": true`` (docs/execution-log.md).
    """
    max_bytes = DOC_MAX_BYTES if max_bytes is None else max_bytes
    value_max = VALUE_MAX_BYTES if value_max is None else value_max
    try:
        data = _ENCODE(doc).encode()
    except ValueError:
        doc = finite(doc)
        data = _ENCODE(doc).encode()
    size = len(data)
    if size <= value_max and size <= max_bytes:  # no value can be larger than the whole
        return data
    return _fit(doc, data, max_bytes, value_max)


def _fit(doc: dict[str, Any], data: bytes, max_bytes: int, value_max: int) -> bytes:
    """Trim ``doc`` until it encodes in ``max_bytes``: first every value over ``value_max``
    becomes a marker (a log message is cut); while still too large, the log lines keep their
    head and last line within what the rest leaves; then all log lines go, the limit shrinks
    (÷4, down to 1 KiB) and long lists (attempts, task runs) keep their head and last item;
    last, the minimal document. Dropped log lines are counted in ``logsDropped``."""
    limit = value_max
    lists = False
    logs_budget: int | None = None  # None: every log line stays
    has_logs = isinstance(doc.get("logs"), list) and bool(doc["logs"])
    while True:
        trim = _Trim(limit, lists, logs_budget)
        trimmed = trim.document(doc)
        if not trim.changed:
            if len(data) <= max_bytes:
                return data
        else:
            trimmed["truncated"] = True
            data = _ENCODE(trimmed).encode()
            if len(data) <= max_bytes:
                return data
        if has_logs and logs_budget is None:
            # the log lines give way before anything else: keep what fits beside the rest
            rest = dict(trimmed, logs=[], logsDropped=_LOGS_DROPPED_MAX, truncated=True)
            logs_budget = max(0, max_bytes - len(_ENCODE(rest).encode()))
            continue
        if limit <= _MIN_LIMIT and lists:
            break
        limit = max(_MIN_LIMIT, min(limit, max_bytes) // 4)
        lists = True
        logs_budget = 0
    data = _ENCODE(_minimal(doc, max_bytes)).encode()
    if len(data) > max_bytes:
        LOG.warning("execution %s: even its minimal document has %d bytes (limit %d)",
                    doc.get("id"), len(data), max_bytes)
    return data


def _size(value: Any) -> tuple[int, str]:
    text = _ENCODE(value)
    return len(text.encode()), text


def _marker(value: Any, size: int, text: str) -> dict[str, Any]:
    preview = value if isinstance(value, str) else text
    return {"$truncated": True, "bytes": size, "preview": preview[:PREVIEW_CHARS]}


#: stands for the ``logsDropped`` count when measuring the room the log lines may take
_LOGS_DROPPED_MAX = 10**12


class _Trim:
    """One pass of trimming at one value ``limit``; ``changed`` tells whether it cut.

    ``lists``: long attempt and task-run lists keep their head and last item;
    ``logs_budget``: the log lines keep their head and last line within so many bytes (None:
    all stay, their messages cut at the limit)."""

    def __init__(self, limit: int, lists: bool, logs_budget: int | None = None) -> None:
        self.limit = limit
        self.lists = lists
        self.logs_budget = logs_budget
        self.changed = False

    def value(self, value: Any) -> Any:
        """``value``, or its marker when its JSON is larger than the limit."""
        if value is None or type(value) in (bool, int, float):
            return value
        size, text = _size(value)
        if size <= self.limit:
            return value
        self.changed = True
        return _marker(value, size, text)

    def text(self, value: Any) -> Any:
        """A string field (an error message) stays a string: cut, saying how long it was."""
        if not isinstance(value, str):
            return self.value(value)
        size = len(value.encode())
        if size <= self.limit:
            return value
        self.changed = True
        return f"{value[:TEXT_KEEP_CHARS]}... [truncated: {size} bytes]"

    def items(self, items: Any, budget: int) -> Any:
        """A list over ``budget`` bytes keeps its first items within it and its last item;
        one marker ``{"$truncated": true, "count": k, "bytes": n}`` stands for the others."""
        if not isinstance(items, list) or len(items) < 2:
            return items
        sizes = [_size(item)[0] for item in items]
        if sum(sizes) + len(items) <= budget:
            return items
        head, used = 0, sizes[-1]
        while head < len(items) - 1 and used + sizes[head] + 1 <= budget:
            used += sizes[head] + 1
            head += 1
        omitted = len(items) - 1 - head
        if omitted <= 0:
            return items
        self.changed = True
        return [*items[:head],
                {"$truncated": True, "count": omitted, "bytes": sum(sizes[head:-1])},
                items[-1]]

    def logs(self, lines: list[Any]) -> tuple[list[Any], int]:
        """The log lines (each message cut at the limit) and how many were dropped: within
        ``logs_budget`` bytes, the first lines and the last one (none if the last alone is
        over it)."""
        lines = [dict(line, message=self.text(line.get("message")))
                 if isinstance(line, dict) else self.value(line) for line in lines]
        if self.logs_budget is None or not lines:
            return lines, 0
        sizes = [_size(line)[0] + 1 for line in lines]
        if sum(sizes) <= self.logs_budget:
            return lines, 0
        self.changed = True
        if sizes[-1] > self.logs_budget:
            return [], len(lines)
        head, used = 0, sizes[-1]
        while head < len(lines) - 1 and used + sizes[head] <= self.logs_budget:
            used += sizes[head]
            head += 1
        return [*lines[:head], lines[-1]], len(lines) - 1 - head

    def error(self, error: Any) -> Any:
        if isinstance(error, dict):
            return {k: self.text(v) for k, v in error.items()}
        return self.text(error)

    def task_run(self, run: Any) -> Any:
        if not isinstance(run, dict):
            return self.value(run)
        out = dict(run)
        outputs = run.get("outputs")
        if isinstance(outputs, dict):
            out["outputs"] = {k: self.value(v) for k, v in outputs.items()}
        elif outputs is not None:
            out["outputs"] = self.value(outputs)
        attempts = run.get("attempts")
        if isinstance(attempts, list):
            attempts = [dict(a, error=self.text(a.get("error"))) if isinstance(a, dict) else a
                        for a in attempts]
            out["attempts"] = self.items(attempts, 4 * self.limit) if self.lists else attempts
        return out

    def document(self, doc: dict[str, Any]) -> dict[str, Any]:
        out = dict(doc)
        trigger = doc.get("trigger")
        if isinstance(trigger, dict):
            trig = dict(trigger)
            trig["key"] = self.value(trigger.get("key"))
            if trigger.get("skipped") is not None:
                trig["skipped"] = self.items(trigger["skipped"], self.limit)
            out["trigger"] = trig
        out["error"] = self.error(doc.get("error"))
        out["upstreamExecutionId"] = self.text(doc.get("upstreamExecutionId"))
        outputs = doc.get("outputs")
        if isinstance(outputs, dict):
            out["outputs"] = {k: self.value(v) for k, v in outputs.items()}
        runs = doc.get("taskRuns")
        if isinstance(runs, list):
            runs = [self.task_run(r) for r in runs]
            out["taskRuns"] = self.items(runs, 4 * self.limit) if self.lists else runs
        lines = doc.get("logs")
        if isinstance(lines, list):
            out["logs"], dropped = self.logs(lines)
            if dropped:
                before = doc.get("logsDropped")
                out["logsDropped"] = dropped + (before if type(before) is int else 0)
        return out


_MINIMAL_TRIGGER = ("type", "topic", "partition", "offset", "timestamp", "messagesCount",
                    "deliveryCount", "ack", "skippedCount", "date", "next")


def _minimal(doc: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """The last resort: the execution's identity, state, dates, trigger coordinates (a
    batch's offsets if they take at most half of ``max_bytes``) and error (cut); task runs
    replaced by one marker; no log lines (``logsDropped`` counts them)."""
    trim = _Trim(_MIN_LIMIT, True)
    found = doc.get("trigger")
    trigger: dict[str, Any] = found if isinstance(found, dict) else {}
    trig = {k: trim.text(trigger[k]) for k in _MINIMAL_TRIGGER if k in trigger}
    trig["key"] = trim.value(trigger.get("key"))
    offsets = trigger.get("offsets")
    trig["offsets"] = offsets if _size(offsets)[0] <= max_bytes // 2 else trim.value(offsets)
    runs = doc.get("taskRuns") or []
    out = {k: trim.text(doc.get(k)) for k in (
        "id", "namespace", "flowId", "state", "terminal", "runId", "startDate", "endDate",
        "durationMs")}
    out.update({
        "trigger": trig,
        "taskRuns": [{"$truncated": True, "count": len(runs), "bytes": _size(runs)[0]}]
        if runs else [],
        "error": trim.error(doc.get("error")),
        "upstreamExecutionId": trim.text(doc.get("upstreamExecutionId")),
        "labels": trim.value(doc.get("labels")),
        "truncated": True,
    })
    if isinstance(doc.get("outputs"), dict):
        out["outputs"] = trim.value(doc["outputs"])
    lines = doc.get("logs")
    before = doc.get("logsDropped")
    dropped = (len(lines) if isinstance(lines, list) else 0) + (
        before if type(before) is int else 0)
    if dropped:
        out["logsDropped"] = dropped
    return out


# ------------------------------------------------------------------ for writers of documents
def secrets_registered() -> bool:
    """Whether a secret is registered (then :meth:`Execution.to_json` redacts through the
    general path, and a writer of document text must leave it to that path)."""
    return redact_obj(_REDACT_PROBE) is not _REDACT_PROBE


#: ``_ENCODE(value)`` of a scalar, a State or a small value, as :meth:`Execution.to_json`
#: writes it (ValueError for a NaN or infinity)
json_scalar = _json
#: ``_ENCODE(value)`` of a value :func:`jsonable` made (ValueError for a NaN or infinity)
json_value = _value
#: ``_ENCODE(iso(ts))`` (``null`` for None)
json_date = _date
#: the strict compact encoder of documents (ValueError for a NaN or infinity)
encode_json = _ENCODE
