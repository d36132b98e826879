"""``schedule.Interval``: one execution per tick, for flows that extract and produce.

The source has one partition; its snapshot is the last tick emitted, so with recovery on a
restart continues after it (without recovery the schedule restarts from now). Ticks of an
``interval`` are aligned to multiples of it since the Unix epoch; ``cron`` is read in UTC.
The execution id derives from (namespace, flow id, tick time), so a tick replayed after a
crash keeps its id. Like the record executions, a tick's execution is done (terminal
document acknowledged) before the step returns.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from waxflow.connectors.execution_log import ExecutionLog
from waxflow.connectors.kafka_output import KafkaOutput
from waxflow.execution import Execution
from waxflow.flow import FlowBase, ScheduleTrigger
from waxflow.operators.engine import Engine


def next_tick(trigger: ScheduleTrigger, after: datetime) -> datetime:
    """The first tick strictly after ``after``."""
    if trigger.interval is not None:
        step = trigger.interval.total_seconds()
        n = int(after.timestamp() // step) + 1
        return datetime.fromtimestamp(n * step, UTC)
    from croniter import croniter

    tick: datetime = croniter(trigger.cron, after.astimezone(UTC)).get_next(datetime)
    return tick


def tick_execution_id(namespace: str, flow_id: str, tick: datetime) -> str:
    raw = f"{namespace}\x1f{flow_id}\x1fschedule\x1f{tick.isoformat()}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class _SchedulePartition(StatefulSourcePartition[datetime, str | None]):
    def __init__(self, trigger: ScheduleTrigger, resume: str | None, max_ticks: int | None):
        self._trigger = trigger
        last = datetime.fromisoformat(resume) if resume else datetime.now(UTC)
        self._due = next_tick(trigger, last)
        self._last = resume
        self._left = max_ticks

    def next_batch(self) -> list[datetime]:
        if self._left is not None and self._left <= 0:
            raise StopIteration
        if datetime.now(UTC) < self._due:
            return []
        tick, self._due = self._due, next_tick(self._trigger, self._due)
        self._last = tick.isoformat()
        if self._left is not None:
            self._left -= 1
        return [tick]

    def next_awake(self) -> datetime:
        return self._due

    def snapshot(self) -> str | None:
        return self._last


class ScheduleSource(FixedPartitionedSource[datetime, str | None]):
    """Emits tick times; ``max_ticks`` ends the dataflow after that many (tests, demos)."""

    def __init__(self, trigger: ScheduleTrigger, max_ticks: int | None = None) -> None:
        self._trigger = trigger
        self._max = max_ticks

    def list_parts(self) -> list[str]:
        return ["schedule"]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: str | None) -> _SchedulePartition:
        return _SchedulePartition(self._trigger, resume_state, self._max)


class TickRunner:
    """Runs the execution of each tick and waits for its documents."""

    def __init__(self, flow: FlowBase, engine: Engine, log_conf: dict[str, Any]) -> None:
        self.flow = flow
        self.engine = engine
        self._log_conf = log_conf
        self._log: ExecutionLog | None = None
        self._output = KafkaOutput(f"{flow.namespace}.{flow.id}", None)

    def __call__(self, ticks: list[datetime]) -> list[tuple[str, tuple[str, int]]]:
        if self._log is None:
            self._log = ExecutionLog(self._log_conf)
        batch = self._log.batch()
        trig = self.flow.trigger
        assert isinstance(trig, ScheduleTrigger)
        for tick in ticks:
            execution = Execution(
                id=tick_execution_id(self.flow.namespace, self.flow.id, tick),
                namespace=self.flow.namespace, flow_id=self.flow.id,
                trigger={"type": trig.type, "date": tick.isoformat(),
                         "next": next_tick(trig, tick).isoformat(), "topic": None,
                         "partition": None, "offset": None, "offsets": None,
                         "messagesCount": None, "deliveryCount": None},
                labels=dict(self.flow.labels), state="RUNNING")
            batch.write(execution.id, execution.to_json())
            self.engine.run(execution, {"date": tick.isoformat(),
                                        "next": next_tick(trig, tick).isoformat()},
                            self._output.scope())
            batch.write(execution.id, execution.to_json())
        batch.wait()
        return [("done", ("schedule", int(t.timestamp()))) for t in ticks]


def execute_ticks(step_id: str, up: Stream[datetime], runner: TickRunner
                  ) -> Stream[tuple[str, tuple[str, int]]]:
    """Run one execution per tick; emit ``("done", ("schedule", tick_epoch_seconds))``."""
    return op.flat_map_batch(step_id, up, runner)


__all__ = ["ScheduleSource", "TickRunner", "execute_ticks", "next_tick", "timedelta"]
