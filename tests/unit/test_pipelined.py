"""The pieces of pipelined executions that need no broker: the per-partition progress (lowest
unfinished offset) and the engine's pause at a retry delay (resumed from the retrying task,
finished tasks not run again)."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from waxflow.dataflows.spec import parse_flow_text
from waxflow.execution import Execution, State, TriggerInfo
from waxflow.expressions import Expressions
from waxflow.operators.engine import Engine
from waxflow.progress import PartitionProgress, Progress


def test_commit_point_is_the_lowest_unfinished_offset() -> None:
    part = PartitionProgress("t/0")
    assert part.commit_point() is None
    part.seek(10)
    assert part.commit_point() == 10
    part.read([10, 11, 12, 14], next_offset=15)  # 13: a transaction marker, never read
    assert part.commit_point() == 10
    part.done(11)
    part.done(14)
    assert part.commit_point() == 10 and part.in_flight == 4
    part.done(10)
    assert part.commit_point() == 12 and part.in_flight == 2
    part.done(12)
    assert part.commit_point() == 15 and part.in_flight == 0


def test_commit_point_never_passes_an_unfinished_offset_in_any_order() -> None:
    rng = random.Random(3)
    part = PartitionProgress("t/0")
    offsets = list(range(1000))
    part.read(offsets, next_offset=1000)
    order = offsets[:]
    rng.shuffle(order)
    finished: set[int] = set()
    for off in order:
        part.done(off)
        finished.add(off)
        point = part.commit_point()
        assert point is not None
        assert all(o in finished for o in range(point))  # G1: everything below is done
        assert point == 1000 or point not in finished  # and it is the lowest unfinished
    assert part.commit_point() == 1000


def test_progress_keeps_the_first_error_and_counts_running_executions() -> None:
    progress = Progress()
    progress.check()
    progress.started()
    progress.started()
    progress.pause(1)
    assert progress.unfinished == 2 and progress.running == 1
    progress.fail(RuntimeError("first"))
    progress.fail(RuntimeError("second"))
    with pytest.raises(RuntimeError, match="first"):
        progress.check()


FLOW = """\
id: pause
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: in
    groupId: g
tasks:
  - id: before
    type: core.Set
    values: {a: 1}
  - id: branch
    type: core.If
    condition: "{{ true }}"
    then:
      - id: flaky
        type: core.Python
        function: tests.flow_funcs:fail_once
        args: {marks: "@MARKS@"}
        retry: {type: constant, interval: PT7S, maxAttempts: 3}
  - id: after
    type: core.Set
    values: {b: "{{ outputs.before.a + 1 }}"}
"""


def _execution() -> Execution:
    return Execution(id="e1", namespace="tests", flow_id="pause",
                     trigger=TriggerInfo(type="kafka.RealtimeTrigger", topic="in", partition=0,
                                         offset=0, key=None, timestamp=None))


@pytest.mark.parametrize("deferrable", [True, False], ids=["paused", "in-place"])
def test_a_retry_pauses_the_execution_and_resumes_at_the_retrying_task(
        tmp_path: Any, deferrable: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = parse_flow_text(FLOW.replace("@MARKS@", str(tmp_path)), "pause.yaml")
    engine = Engine(flow, Expressions())
    slept: list[float] = []
    real_sleep, me = time.sleep, threading.get_ident()

    def sleep(seconds: float) -> None:  # the time module is shared: other tests' threads
        if threading.get_ident() == me:  # (pollers, timers) must still sleep for real
            slept.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr("waxflow.operators.engine.time.sleep", sleep)
    execution = _execution()
    ctx = engine.begin(execution, {"value": {"id": "r1"}}, deferrable=deferrable)
    delay = engine.advance(ctx)
    if deferrable:
        assert delay == pytest.approx(7.0) and not slept  # paused: no thread sleeps
        assert execution.state == State.RUNNING
        states = {r.task_id: r.state for r in execution.task_runs}
        assert states == {"before": State.SUCCESS, "branch": State.RUNNING,
                          "flaky": State.RETRYING}
        assert engine.advance(ctx) is None  # the retry is due: it continues from there
    else:
        assert delay is None and slept == [pytest.approx(7.0)]
    assert execution.state == State.SUCCESS
    runs = {r.task_id: r for r in execution.task_runs}
    assert sorted(runs) == ["after", "before", "branch", "flaky"]  # each ran once
    assert [a.state for a in runs["flaky"].attempts] == [State.FAILED, State.SUCCESS]
    assert len(runs["branch"].attempts) == 1 and len(runs["before"].attempts) == 1
    assert runs["after"].outputs == {"b": 2}
