"""The execution model: states, deterministic ids, what triggered it, task runs, the document.

An execution id is derived only from the flow and the trigger's coordinates
(:func:`execution_id`), so a replayed record, batch or tick gets the same id (G2); each run of
it gets a fresh ``runId`` so the history can show the replay. ``document()`` is what goes to
the execution-log topic (docs/execution-log.md); secrets are redacted from it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

    def describe(self) -> str:
        """What triggered the execution, for messages: a record, a batch or a tick."""
        if self.offset is not None:
            return f"record {self.topic}/{self.partition}@{self.offset}"
        if self.date is not None:
            return f"tick {self.date}"
        return f"batch of {self.messages_count} records (offsets {self.offsets})"


def now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


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


@dataclass
class Execution:
    """One run of a flow's task list for one record (or batch)."""

    id: str
    namespace: str
    flow_id: str
    trigger: TriggerInfo
    state: State = State.CREATED
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    start: datetime = field(default_factory=now)
    end: datetime | None = None
    task_runs: list[TaskRun] = field(default_factory=list)
    error: dict[str, str] | None = None
    upstream_id: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def add_task_run(self, run: TaskRun) -> None:
        with self._lock:
            self.task_runs.append(run)

    def finish(self, state: State) -> None:
        self.state = state
        self.end = now()

    def document(self) -> dict[str, Any]:
        """The JSON document for the execution log, with secret values redacted."""
        with self._lock:
            runs = [r.as_dict() for r in self.task_runs]
        doc = {
            "id": self.id, "namespace": self.namespace, "flowId": self.flow_id,
            "state": self.state, "terminal": self.terminal, "runId": self.run_id,
            "startDate": iso(self.start), "endDate": iso(self.end),
            "durationMs": ((self.end - self.start).total_seconds() * 1000
                           if self.end is not None else None),
            "trigger": self.trigger.document(), "taskRuns": runs, "error": self.error,
            "upstreamExecutionId": self.upstream_id, "labels": self.labels,
        }
        return redact_obj(doc)  # type: ignore[no-any-return]

    def to_json(self) -> bytes:
        return json.dumps(self.document(), separators=(",", ":"), ensure_ascii=False).encode()
