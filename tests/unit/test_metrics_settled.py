"""Metrics of executions settled in quiet mode (:func:`metrics.executions_done`): counted from
the execution objects, or from what the compiled path keeps, they are exactly what the
terminal documents give (:func:`metrics.document_done`), by the same names and labels."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.unit.test_fastpath import RECORDS, _fast, _record, _runner
from waxflow.connectors import metrics
from waxflow.execution import Attempt, Execution, State, TaskRun, TriggerInfo, now


@pytest.fixture
def enabled(monkeypatch: pytest.MonkeyPatch) -> Iterator[metrics._State]:
    """Metrics on, with a fresh process state and fresh (empty) counters."""
    state = metrics._State()
    monkeypatch.setattr(metrics, "STATE", state)
    metrics.enable("ns.unit", topics=["orders"])
    _fresh(monkeypatch)
    yield state
    state.enabled = False


def _fresh(monkeypatch: pytest.MonkeyPatch) -> metrics._Fast:
    """Empty counters and histograms under the module's names (what the hooks feed)."""
    fast = metrics._Fast()
    for name, (doc, labels, _values) in metrics.FAST.counters.items():
        fast.counters[name] = (doc, labels, {})
    for name, (doc, labels, buckets, _hv) in metrics.FAST.histograms.items():
        fast.histograms[name] = (doc, labels, buckets, {})
    monkeypatch.setattr(metrics, "FAST", fast)
    return fast


def _counts(fast: metrics._Fast) -> dict[str, Any]:
    """Every counter value, and every histogram's bucket counts (sums rounded to ms: the
    documents carry millisecond dates)."""
    out: dict[str, Any] = {}
    for name, (_d, _l, values) in fast.counters.items():
        out[name] = {k: v for k, v in values.items() if v}
    for name, (_d, _l, _b, hvalues) in fast.histograms.items():
        out[name] = {k: (c[:-1], round(c[-1], 2)) for k, c in hvalues.items()}
    return out


def _execution(i: int, state: State, *, attempts: int = 1, kind: str = "core.Set",
               outputs: dict[str, Any] | None = None, batch: bool = False) -> Execution:
    trigger = (TriggerInfo(type="kafka.Trigger", offsets={"orders/0": [0, 9], "more/1": [3, 4]},
                           messages_count=10, skipped_count=2) if batch else
               TriggerInfo(type="kafka.RealtimeTrigger", topic="orders", partition=0, offset=i))
    start = now() - timedelta(seconds=i + 0.3)
    e = Execution(id=f"id{i}", namespace="ns", flow_id="unit", trigger=trigger, start=start)
    run = TaskRun(task_id=f"t{i % 2}", type=kind, parent=None, state=state, outputs=outputs)
    for n in range(attempts):
        last = n == attempts - 1
        run.attempts.append(Attempt(state=state if last else State.FAILED,
                                    start=start + timedelta(seconds=n * 0.1),
                                    end=start + timedelta(seconds=n * 0.1 + 0.05)))
    e.add_task_run(run)
    e.task_runs.append(TaskRun(task_id="never", type="core.Log", parent=None))  # no attempt
    e.finish(state)
    return e


def _executions() -> list[Execution]:
    """Record executions (retries, Load rows of SUCCESS/WARNING runs, a FAILED Load whose
    rows do not count, SKIPPED) and a batch one."""
    return [
        _execution(0, State.SUCCESS, attempts=3),
        _execution(1, State.SUCCESS, kind="duckdb.Load", outputs={"rows": 7}),
        _execution(2, State.FAILED, attempts=2, kind="bigquery.Load", outputs={"rows": 3}),
        _execution(3, State.SKIPPED),
        _execution(4, State.WARNING, kind="postgres.Load", outputs={"rows": 5}),
        _execution(5, State.SUCCESS, batch=True),
    ]


def test_settled_executions_count_what_their_documents_count(
        enabled: metrics._State, monkeypatch: pytest.MonkeyPatch) -> None:
    executions = _executions()
    for e in executions:
        metrics.document_done(e.id, e.to_json())
    from_documents = _counts(metrics.FAST)
    assert from_documents[metrics.ROWS_LOADED] == {("ns.unit", "t1", "duckdb.Load"): 7.0,
                                                   ("ns.unit", "t0", "postgres.Load"): 5.0}
    assert from_documents[metrics.RECORDS] == {("ns.unit", "orders"): 5.0,
                                               ("ns.unit", "more,orders"): 12.0}
    fast = _fresh(monkeypatch)
    metrics.executions_done(executions)
    assert _counts(fast) == from_documents
    assert enabled.done == 2 * len(executions)


def test_compiled_runs_count_what_their_execution_objects_count(
        enabled: metrics._State, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, compiled = _runner()
    runs = [_fast(runner, compiled, _record(offset, value))
            for offset, value in enumerate(RECORDS)]
    assert all(run is not None for run in runs)
    metrics.executions_done(compiled=[run.metric() for run in runs if run is not None])
    from_runs = _counts(metrics.FAST)
    assert from_runs[metrics.EXECUTIONS] == {("tests.fast.fast", "SUCCESS"): len(RECORDS)}
    assert from_runs[metrics.RECORDS] == {("tests.fast.fast", "src"): len(RECORDS)}
    assert sum(from_runs[metrics.TASK_ATTEMPTS].values()) == sum(
        len(run.runs) for run in runs if run is not None) > len(RECORDS)
    fast = _fresh(monkeypatch)
    metrics.executions_done([run.execution() for run in runs if run is not None])
    assert _counts(fast) == from_runs
    fast = _fresh(monkeypatch)
    for run in runs:
        assert run is not None
        metrics.document_done(run.exec_id, run.document)
    assert _counts(fast) == from_runs


def test_settling_keeps_the_health_bookkeeping(enabled: metrics._State) -> None:
    running = Execution(id="slow", namespace="ns", flow_id="unit",
                        trigger=TriggerInfo(type="kafka.RealtimeTrigger", topic="orders",
                                            partition=0, offset=9), state=State.RUNNING)
    metrics.execution_running(running.id)
    assert set(enabled.running) == {"slow"}
    before = enabled.progress
    time.sleep(0.01)
    runner, compiled = _runner()
    run = _fast(runner, compiled, _record(0, RECORDS[0]))
    assert run is not None
    metrics.executions_done([_execution(0, State.SUCCESS)], compiled=[run.metric()])
    assert set(enabled.running) == {"slow"} and enabled.done == 2
    assert enabled.progress > before
    running.finish(State.SUCCESS)
    metrics.executions_done([running])
    assert enabled.running == {} and enabled.done == 3
    assert json.loads(running.to_json())["state"] == "SUCCESS"


def test_nothing_is_counted_while_metrics_are_off(monkeypatch: pytest.MonkeyPatch) -> None:
    state = metrics._State()
    monkeypatch.setattr(metrics, "STATE", state)
    fast = _fresh(monkeypatch)
    metrics.executions_done([_execution(0, State.SUCCESS)])
    assert state.done == 0 and not any(_counts(fast).values())
