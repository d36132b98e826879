"""``schedule.Interval``: one execution per tick, for flows that extract and produce.

The source has one partition; its snapshot is the last tick emitted, so with recovery on a
restart continues after it (without recovery the schedule restarts from now). Ticks of an
``interval`` are aligned to multiples of it since the Unix epoch; ``cron`` is read in UTC.
The execution id derives from (namespace, flow id, tick time), so a tick replayed after a
crash keeps its id. The flow's :class:`~waxflow.operators.executor.Executor` runs it: a tick's
execution is done (terminal document acknowledged) before the step returns.
"""

from __future__ import annotations

from datetime import UTC, datetime

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from waxflow.connectors import shutdown
from waxflow.connectors.execution_log import LogBatch
from waxflow.execution import Execution, TriggerInfo, execution_id
from waxflow.flow import FlowBase, ScheduleTrigger
from waxflow.operators.executor import Executor, Job


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
    """Deterministic id of a tick's execution."""
    return execution_id(namespace, flow_id, "schedule", tick.isoformat())


class _SchedulePartition(StatefulSourcePartition[datetime, str | None]):
    def __init__(self, trigger: ScheduleTrigger, resume: str | None, max_ticks: int | None):
        self._trigger = trigger
        last = datetime.fromisoformat(resume) if resume else datetime.now(UTC)
        self._due = next_tick(trigger, last)
        self._last = resume
        self._left = max_ticks

    def next_batch(self) -> list[datetime]:
        if (self._left is not None and self._left <= 0) or shutdown.requested():
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


class TickExecutions:
    """The batch function of a schedule flow's execute step: one execution per tick."""

    def __init__(self, *, flow: FlowBase, trigger: ScheduleTrigger, executor: Executor) -> None:
        self.flow = flow
        self.trigger = trigger
        self.executor = executor

    def job(self, tick: datetime, _deliveries: LogBatch) -> Job:
        """The execution of one tick (its id derives from the tick time)."""
        date, following = tick.isoformat(), next_tick(self.trigger, tick).isoformat()
        execution = Execution(
            id=tick_execution_id(self.flow.namespace, self.flow.id, tick),
            namespace=self.flow.namespace, flow_id=self.flow.id,
            trigger=TriggerInfo(type=self.trigger.type, date=date, next=following),
            labels=dict(self.flow.labels))
        return Job(execution, {"date": date, "next": following})

    def __call__(self, ticks: list[datetime]) -> list[tuple[str, tuple[str, int]]]:
        self.executor.run(ticks, self.job)
        return [("done", ("schedule", int(t.timestamp()))) for t in ticks]


def execute_ticks(step_id: str, up: Stream[datetime], runner: TickExecutions
                  ) -> Stream[tuple[str, tuple[str, int]]]:
    """Run one execution per tick; emit ``("done", ("schedule", tick_epoch_seconds))``."""
    return op.flat_map_batch(step_id, up, runner)


__all__ = ["ScheduleSource", "TickExecutions", "execute_ticks", "next_tick"]
