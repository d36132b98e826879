"""The compiled per-record path (:mod:`waxflow.operators.fastpath`) gives what the general
path gives: the same terminal document (byte for byte once dates, durations and run ids are
set aside; the same field order), the same Produce records and log lines — or it falls back
(None) for the records it cannot vouch for, which the general path then runs.

The general path here is the product's own: the execute step's job (``RecordExecutions.job``)
run by the engine, its Produce records captured by the dry-run scope (what ``waxflow test``
uses); the pipeline's emission of both paths is tested on the broker
(tests/integration/test_fastpath.py)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from waxflow.dataflows.compiler import build_runner
from waxflow.dataflows.local_run import DryRunScope
from waxflow.dataflows.spec import parse_flow_text
from waxflow.execution import VALUE_MAX_BYTES
from waxflow.operators.execute import RecordExecutions
from waxflow.operators.fastpath import ENV, CompiledFlow, FastRun, compile_flow
from waxflow.records import Decoded, RawRecord

FLOW = """\
id: fast
namespace: tests.fast
labels:
  team: core
triggers:
  - id: records
    type: kafka.RealtimeTrigger
    topic: src
    groupId: g
    valueDeserializer: JSON
tasks:
  - id: route
    type: core.Switch
    value: "{{ trigger.value.kind }}"
    cases:
      order:
        - id: total
          type: core.Set
          values:
            total: "{{ trigger.value.amount * trigger.value.qty }}"
            label: "order {{ trigger.value.id }} for {{ trigger.value.customer }}"
            nested: {"k": "{{ trigger.key }}", "n": [1, "{{ trigger.offset }}"]}
        - id: big
          type: core.If
          condition: "{{ outputs.total.total > 100 }}"
          then:
            - id: say
              type: core.Log
              message: "big order {{ trigger.value.id }} in {{ flow.id }}"
          else:
            - id: small
              type: core.Return
              format: "{{ outputs.total.total }}"
      refund:
        - id: ratio
          type: core.Set
          values:
            ratio: "{{ 100 / trigger.value.amount }}"
            x: "{{ trigger.value.x }}"
    defaults:
      - id: other
        type: core.Log
        level: WARN
        message: "{{ trigger.value.kind }} at {{ execution.id }}"
  - id: out
    type: kafka.Produce
    topic: dst
    transactional: false
    valueSerializer: JSON
    headers:
      source: "{{ trigger.topic }}"
    from:
      key: "{{ trigger.key }}"
      value: "{{ dict(trigger.value, route=outputs.route.value) }}"
      headers:
        kind: "{{ trigger.value.kind }}"
"""

#: fields that differ between two runs of one execution (dates, durations, run ids)
VOLATILE = frozenset({"startDate", "endDate", "durationMs", "runId", "ts"})


def _runner(text: str = FLOW) -> tuple[RecordExecutions, CompiledFlow]:
    flow = parse_flow_text(text, "flow.yaml")
    runner = build_runner(flow)
    engine = runner.executor.engine
    # (the class itself: a flow it does not take says why)
    fast = CompiledFlow(flow=flow, exprs=engine.exprs, env=engine.env,
                        trigger_type=runner.trigger_type)
    return runner, fast


def _record(offset: int, value: Any, key: bytes | None = b"k") -> Decoded:
    raw = RawRecord("src", 0, offset, key, json.dumps(value).encode(), 1_700_000_000_000 + offset,
                    (("waxflow.execution.id", b"up-1"),) if offset % 2 else ())
    return Decoded(raw, key.decode() if key is not None else None, value)


def _stable(document: bytes) -> str:
    """The document with its volatile fields blanked, field order kept."""
    def scrub(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: ("*" if k in VOLATILE else scrub(v)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [scrub(v) for v in obj]
        return obj
    return json.dumps(scrub(json.loads(document)))


def _general(runner: RecordExecutions, rec: Decoded) -> tuple[bytes, list[tuple[Any, ...]]]:
    job = runner.job(rec, None)  # type: ignore[arg-type]  # (no DLQ: no batch needed)
    assert job is not None and job.variables is not None
    scope = DryRunScope()
    runner.executor.engine.run(job.execution, job.variables, scope)
    outputs = [(p.topic, p.key, p.value, [(k, v) for k, v in p.headers], p.partition,
                p.timestamp) for p in scope.produced]
    return job.execution.to_json(), outputs


def _fast(runner: RecordExecutions, fast: CompiledFlow, rec: Decoded) -> FastRun | None:
    return fast.run(rec, runner.id_of(rec))


def _fast_outputs(run: FastRun) -> list[tuple[Any, ...]]:
    return [(t, k, v, list(h), p, ts) for _task, records in run.records
            for t, k, v, h, p, ts in records]


RECORDS = [
    {"kind": "order", "id": 1, "customer": "ann", "amount": 30, "qty": 5},    # If: then (Log)
    {"kind": "order", "id": 2, "customer": "bob", "amount": 2.5, "qty": 3},   # If: else
    {"kind": "refund", "id": 3, "amount": 8, "x": "é\u2028\"q\""},             # 2nd case
    {"kind": "other", "id": 4},                                                # defaults (Log)
    {"kind": None, "id": 5},                                                   # null kind
    {"kind": "order", "id": 6, "customer": {"n": [1, None, True]}, "amount": 1, "qty": 1},
]


def test_documents_records_and_log_lines_are_the_general_paths() -> None:
    runner, fast = _runner()
    for offset, value in enumerate(RECORDS):
        rec = _record(offset, value)
        document, outputs = _general(runner, rec)
        run = _fast(runner, fast, rec)
        assert run is not None, value
        assert _stable(run.document) == _stable(document), value
        assert _fast_outputs(run) == outputs, value
        # the execution object the general path would hold (built for a late failure)
        # writes the very same bytes
        assert run.execution().to_json() == run.document
    logged = [json.loads(_fast(runner, fast, _record(0, RECORDS[0])).document)]  # type: ignore[union-attr]
    assert logged[0]["logs"][0]["message"] == "big order 1 in fast"
    assert logged[0]["trigger"]["key"] == "k"


def test_a_record_the_path_cannot_vouch_for_falls_back_and_emits_nothing() -> None:
    runner, fast = _runner()
    failing = {"kind": "refund", "id": 7, "amount": 0}           # 100 / 0: the task fails
    unfit = {"kind": "refund", "id": 8, "amount": 4, "x": math.inf}  # no JSON for Produce
    big = {"kind": "refund", "id": 9, "amount": 4, "x": "y" * (VALUE_MAX_BYTES + 10)}
    for offset, (value, state) in enumerate([(failing, "FAILED"), (unfit, "FAILED"),
                                             (big, "SUCCESS")], start=100):
        rec = _record(offset, value)
        assert _fast(runner, fast, rec) is None, value  # (a run holds everything it emits)
        document, _ = _general(runner, rec)
        assert json.loads(document)["state"] == state
    # the records around it are unaffected (a batch goes on past a fallback)
    assert _fast(runner, fast, _record(200, RECORDS[0])) is not None


def test_a_document_holding_a_nan_falls_back() -> None:
    text = FLOW.split("tasks:\n")[0] + (
        "tasks:\n  - id: s\n    type: core.Set\n    values: {x: \"{{ trigger.value.x }}\"}\n")
    runner, fast = _runner(text)
    rec = _record(1, {"x": math.nan})
    assert _fast(runner, fast, rec) is None
    document, _ = _general(runner, rec)
    assert json.loads(document)["taskRuns"][0]["outputs"] == {"x": "NaN"}
    run = _fast(runner, fast, _record(2, {"x": 1.5}))
    assert run is not None
    assert _stable(run.document) == _stable(_general(runner, _record(2, {"x": 1.5}))[0])


@pytest.mark.parametrize(("change", "why"), [
    ("    runIf: \"{{ true }}\"\n", "runIf"),
    ("    timeout: PT1S\n", "timeout"),
])
def test_flows_the_path_does_not_take(change: str, why: str) -> None:
    text = FLOW.replace("  - id: out\n    type: kafka.Produce\n",
                        f"  - id: out\n    type: kafka.Produce\n{change}")
    flow = parse_flow_text(text, "flow.yaml")
    runner = build_runner(flow)
    engine = runner.executor.engine
    assert compile_flow(flow=flow, exprs=engine.exprs, env=engine.env,
                        trigger_type=runner.trigger_type) is None, why


@pytest.mark.parametrize("body", [
    # a Produce whose topic Jinja alone renders
    "  - id: t\n    type: kafka.Produce\n    topic: \"{{ now() }}\"\n    from: {value: x}\n",
    # a template reading the task's own variables
    "  - id: s\n    type: core.Set\n    values: {a: \"{{ taskrun.id }}\"}\n",
    # a secret
    "  - id: s\n    type: core.Set\n    values: {a: \"{{ secret('X') }}\"}\n",
    # a template only Jinja renders (a loop)
    "  - id: s\n    type: core.Set\n    values: {a: \"{% for i in [1] %}{{ i }}{% endfor %}\"}\n",
    # a task type it does not compile
    "  - id: s\n    type: core.Sleep\n    duration: PT0S\n",
])
def test_tasks_and_templates_that_keep_a_flow_on_the_general_path(body: str) -> None:
    text = FLOW.split("tasks:\n")[0] + "tasks:\n" + body
    flow = parse_flow_text(text, "flow.yaml")
    runner = build_runner(flow)
    engine = runner.executor.engine
    assert compile_flow(flow=flow, exprs=engine.exprs, env=engine.env,
                        trigger_type=runner.trigger_type) is None


def test_a_transactional_produce_holds_the_same_records() -> None:
    runner, fast = _runner(FLOW.replace("transactional: false", "transactional: true"))
    assert [t.id for t in fast.transactional] == ["out"]
    rec = _record(3, RECORDS[0])
    document, outputs = _general(runner, rec)
    run = _fast(runner, fast, rec)
    assert run is not None
    assert _stable(run.document) == _stable(document)
    assert _fast_outputs(run) == outputs


def test_the_environment_variable_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = parse_flow_text(FLOW, "flow.yaml")
    runner = build_runner(flow)
    engine = runner.executor.engine
    monkeypatch.setenv(ENV, "0")
    assert compile_flow(flow=flow, exprs=engine.exprs, env=engine.env,
                        trigger_type=runner.trigger_type) is None
