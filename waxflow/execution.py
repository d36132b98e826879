"""The execution record: deterministic ids, task runs with attempts, the log document.

An execution id is derived only from (namespace, flow id, topic, partition, offset), so a
replayed record gets the same id (G2); each run of it gets a fresh ``runId`` so the history
can show the replay. ``document()`` is what goes to the execution-log topic
(docs/execution-log.md); secrets are redacted from it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from waxflow.expressions import redact_obj

TERMINAL = frozenset({"SUCCESS", "WARNING", "FAILED", "SKIPPED"})


def execution_id(namespace: str, flow_id: str, topic: str, partition: int, offset: int) -> str:
    """The deterministic id of the execution of one record (32 hex chars)."""
    raw = f"{namespace}\x1f{flow_id}\x1f{topic}\x1f{partition}\x1f{offset}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


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
    state: str
    start: datetime
    end: datetime | None = None
    error: str | None = None


@dataclass
class TaskRun:
    task_id: str
    type: str
    parent: str | None
    state: str = "RUNNING"
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
    trigger: dict[str, Any]
    state: str = "CREATED"
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

    def finish(self, state: str) -> None:
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
            "trigger": self.trigger, "taskRuns": runs, "error": self.error,
            "upstreamExecutionId": self.upstream_id, "labels": self.labels,
        }
        return redact_obj(doc)  # type: ignore[no-any-return]

    def to_json(self) -> bytes:
        return json.dumps(self.document(), separators=(",", ":"), ensure_ascii=False).encode()
