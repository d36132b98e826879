"""Issue 13: Kestra's flow-level ``finally``, ``afterExecution`` and ``outputs``, and a task's
``runIf``, run through the real engine with the compiler's expressions (no broker: the
execution document is checked as the execution log would store it)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from waxflow.dataflows.compiler import flow_expressions
from waxflow.dataflows.reference import FLOW_EXAMPLE
from waxflow.dataflows.spec import json_schema, parse_flow_text
from waxflow.errors import FlowError
from waxflow.execution import Execution, State, TriggerInfo, encode_document
from waxflow.operators.engine import Engine


def flow_of(body: str) -> Any:
    return parse_flow_text(f"id: f\nnamespace: tests\n{body}", "flow.yaml")


def run(flow: Any, inputs: dict[str, Any] | None = None, *, deferrable: bool = False
        ) -> Execution:
    """One execution through the real engine (``deferrable``: retries pause it, as in the
    pipelined realtime step, and it is advanced until terminal)."""
    execution = Execution(id="e" * 32, namespace="tests", flow_id=flow.id,
                          trigger=TriggerInfo(type="manual"))
    engine = Engine(flow, flow_expressions(flow, inputs))
    ctx = engine.begin(execution, {}, deferrable=deferrable)
    pauses = 0
    while engine.advance(ctx) is not None:
        pauses += 1
        assert pauses < 10
    return execution


def runs(execution: Execution) -> list[tuple[str, str]]:
    return [(r.task_id, r.state.value) for r in execution.task_runs]


def messages(execution: Execution) -> list[str]:
    return [line["message"] for line in execution.logs or []]


FULL = """\
inputs:
  - {id: fail, type: BOOLEAN, defaults: false}
tasks:
  - id: work
    type: core.Log
    message: "working ({{ execution.state }})"
  - id: maybe_fail
    type: core.Fail
    runIf: "{{ inputs.fail }}"
    errorMessage: "record refused"
  - id: count
    type: core.Set
    values: {n: 41}
errors:
  - id: on_error
    type: core.Log
    message: "error handler ({{ execution.state }})"
finally:
  - id: cleanup
    type: core.Log
    message: "finally ({{ execution.state }})"
afterExecution:
  - id: notify
    type: core.Log
    runIf: "{{ execution.state == 'FAILED' }}"
    message: "alert: {{ execution.id }} is {{ execution.state }}"
  - id: audit
    type: core.Log
    message: "after ({{ execution.state }})"
outputs:
  - id: total
    type: INT
    value: "{{ outputs.count.n + 1 }}"
  - id: summary
    type: JSON
    value:
      state: done
      work: "{{ outputs.count }}"
"""


def test_success_runs_finally_renders_outputs_then_after_execution_sees_success() -> None:
    execution = run(flow_of(FULL))
    assert execution.state == State.SUCCESS
    assert runs(execution) == [("work", "SUCCESS"), ("maybe_fail", "SKIPPED"),
                               ("count", "SUCCESS"), ("cleanup", "SUCCESS"),
                               ("notify", "SKIPPED"), ("audit", "SUCCESS")]
    assert execution.outputs == {"total": 42, "summary": {"state": "done", "work": {"n": 41}}}
    assert messages(execution) == ["working (RUNNING)", "finally (RUNNING)", "after (SUCCESS)"]
    doc = json.loads(execution.to_json())
    assert doc["outputs"] == {"total": 42, "summary": {"state": "done", "work": {"n": 41}}}
    assert doc["state"] == "SUCCESS" and doc["error"] is None
    skipped = doc["taskRuns"][1]
    assert skipped["state"] == "SKIPPED" and skipped["attempts"] == []


def test_failure_runs_errors_then_finally_and_after_execution_sees_failed() -> None:
    execution = run(flow_of(FULL), {"fail": True})
    assert execution.state == State.FAILED
    assert execution.error == {"taskId": "maybe_fail", "message": "record refused"}
    assert runs(execution) == [("work", "SUCCESS"), ("maybe_fail", "FAILED"),
                               ("on_error", "SUCCESS"), ("cleanup", "SUCCESS"),
                               ("notify", "SUCCESS"), ("audit", "SUCCESS")]
    assert execution.outputs is None
    assert "outputs" not in json.loads(execution.to_json())
    assert f"alert: {execution.id} is FAILED" in messages(execution)
    assert messages(execution)[-1] == "after (FAILED)"


def test_a_failing_finally_task_fails_the_execution() -> None:
    flow = flow_of("""\
tasks:
  - {id: a, type: core.Log, message: hi}
finally:
  - {id: boom, type: core.Fail, errorMessage: cleanup broke}
  - {id: still, type: core.Log, message: "never"}
afterExecution:
  - {id: after, type: core.Log, message: "{{ execution.state }}"}
outputs:
  - {id: o, type: STRING, value: x}
""")
    execution = run(flow)
    assert execution.state == State.FAILED
    assert execution.error == {"taskId": "boom", "message": "cleanup broke"}
    assert runs(execution) == [("a", "SUCCESS"), ("boom", "FAILED"), ("after", "SUCCESS")]
    assert execution.outputs is None  # a failed execution has none
    assert messages(execution)[-1] == "FAILED"


def test_finally_keeps_the_first_error_of_a_failed_execution() -> None:
    flow = flow_of("""\
tasks:
  - {id: a, type: core.Fail, errorMessage: first}
finally:
  - {id: b, type: core.Fail, errorMessage: second}
""")
    execution = run(flow)
    assert execution.state == State.FAILED
    assert execution.error == {"taskId": "a", "message": "first"}
    assert runs(execution) == [("a", "FAILED"), ("b", "FAILED")]


def test_a_failing_after_execution_task_never_changes_the_state() -> None:
    flow = flow_of("""\
tasks:
  - {id: a, type: core.Log, message: hi}
afterExecution:
  - {id: broken, type: core.Fail, errorMessage: slack is down}
  - {id: next, type: core.Log, message: "not reached"}
""")
    execution = run(flow)
    assert execution.state == State.SUCCESS
    assert execution.error is None
    assert runs(execution) == [("a", "SUCCESS"), ("broken", "FAILED")]
    doc = json.loads(execution.to_json())
    assert doc["taskRuns"][1]["attempts"][0]["error"] == "slack is down"
    assert doc["terminal"] is True and doc["endDate"] is not None


def test_an_output_that_does_not_fit_its_type_fails_the_execution() -> None:
    flow = flow_of("""\
tasks:
  - {id: a, type: core.Set, values: {word: twelve}}
afterExecution:
  - {id: after, type: core.Log, message: "{{ execution.state }}"}
outputs:
  - {id: n, type: INT, value: "{{ outputs.a.word }}"}
""")
    execution = run(flow)
    assert execution.state == State.FAILED
    assert execution.error is not None
    assert execution.error["taskId"] == ""
    assert execution.error["message"].startswith("output 'n' (INT): ")
    assert "twelve" in execution.error["message"]
    assert execution.outputs is None
    assert messages(execution)[-1] == "FAILED"


def test_an_output_that_does_not_render_fails_the_execution_naming_it() -> None:
    flow = flow_of("""\
tasks:
  - {id: a, type: core.Log, message: hi}
outputs:
  - {id: missing, type: STRING, value: "{{ outputs.a.nothing }}"}
""")
    execution = run(flow)
    assert execution.state == State.FAILED
    assert execution.error is not None
    assert execution.error["message"].startswith("output 'missing' (STRING): ")


def test_null_outputs_need_required_false() -> None:
    body = """\
tasks:
  - {id: a, type: core.Log, message: hi}
outputs:
  - {id: o, type: STRING, value: "{{ null }}"%s}
"""
    assert run(flow_of(body % "")).state == State.FAILED
    execution = run(flow_of(body % ", required: false"))
    assert execution.state == State.SUCCESS and execution.outputs == {"o": None}


def test_outputs_of_a_warning_execution_are_kept() -> None:
    flow = flow_of("""\
tasks:
  - {id: a, type: core.Fail, allowFailure: true}
  - {id: b, type: core.Set, values: {v: [1, 2]}}
afterExecution:
  - {id: after, type: core.Log, message: "{{ execution.state }}"}
outputs:
  - {id: items, type: ARRAY, itemType: INT, value: "{{ outputs.b.v }}"}
  - {id: when, type: DATE, value: "{{ '2026-11-29T10:00:00Z' | date('yyyy-MM-dd') }}"}
""")
    execution = run(flow)
    assert execution.state == State.WARNING
    assert execution.outputs == {"items": [1, 2], "when": "2026-11-29"}
    assert messages(execution)[-1] == "WARNING"


def test_run_if_skips_a_task_and_the_next_ones_run() -> None:
    flow = flow_of("""\
tasks:
  - {id: a, type: core.Set, values: {go: "false"}}
  - id: gated
    type: core.Log
    runIf: "{{ outputs.a.go }}"
    message: never
  - id: nested
    type: core.If
    condition: "true"
    then:
      - {id: inner, type: core.Log, message: inner, runIf: "{{ 1 == 1 }}"}
      - {id: inner_off, type: core.Log, message: off, runIf: "0"}
  - {id: last, type: core.Log, message: "gated: {{ outputs.gated is defined }}"}
""")
    execution = run(flow)
    assert execution.state == State.SUCCESS
    assert runs(execution) == [("a", "SUCCESS"), ("gated", "SKIPPED"), ("nested", "SUCCESS"),
                               ("inner", "SUCCESS"), ("inner_off", "SKIPPED"),
                               ("last", "SUCCESS")]
    assert execution.task_runs[4].parent == "nested"
    assert messages(execution) == ["inner", "gated: False"]


def test_a_run_if_that_does_not_render_fails_the_task() -> None:
    flow = flow_of("""\
tasks:
  - {id: a, type: core.Log, message: hi, runIf: "{{ outputs.nope.x }}"}
  - {id: b, type: core.Log, message: never}
""")
    execution = run(flow)
    assert execution.state == State.FAILED
    assert execution.error is not None and execution.error["taskId"] == "a"
    assert execution.error["message"].startswith("runIf: ")
    assert runs(execution) == [("a", "FAILED")]


def test_a_paused_retry_resumes_and_the_end_runs_once() -> None:
    """In the pipelined step a retry pauses the execution; the tasks that finished, the
    skipped ones and the ``finally``/``afterExecution`` tasks each run once."""
    flow = flow_of("""\
tasks:
  - {id: first, type: core.Log, message: first}
  - {id: off, type: core.Log, message: never, runIf: "false"}
  - id: flaky
    type: core.Fail
    runIf: "{{ taskrun.attemptsCount == 0 }}"
    errorMessage: once
    retry: {type: constant, interval: PT0.01S, maxAttempts: 3}
finally:
  - {id: cleanup, type: core.Log, message: cleanup}
afterExecution:
  - {id: after, type: core.Log, message: "after {{ execution.state }}"}
""")
    execution = run(flow, deferrable=True)
    assert execution.state == State.FAILED  # runIf is checked once: the retries fail too
    assert [r for r in runs(execution) if r[0] in ("first", "off", "cleanup", "after")] == [
        ("first", "SUCCESS"), ("off", "SKIPPED"), ("cleanup", "SUCCESS"),
        ("after", "SUCCESS")]
    assert [r.task_id for r in execution.task_runs].count("flaky") == 1
    assert len(execution.task_runs[2].attempts) == 3
    assert messages(execution).count("cleanup") == 1


def test_a_flow_without_the_new_keys_keeps_its_document() -> None:
    flow = flow_of("tasks:\n  - {id: a, type: core.Set, values: {x: 1}}\n")
    execution = run(flow)
    doc = json.loads(execution.to_json())
    assert set(doc) == {"id", "namespace", "flowId", "state", "terminal", "runId",
                        "startDate", "endDate", "durationMs", "trigger", "taskRuns", "error",
                        "upstreamExecutionId", "labels"}
    assert execution.outputs is None


def test_a_large_output_is_trimmed_in_the_document_only() -> None:
    execution = run(flow_of("""\
tasks:
  - {id: a, type: core.Log, message: hi}
outputs:
  - {id: big, type: STRING, value: "{{ 'x' * 5000 }}"}
  - {id: small, type: INT, value: "7"}
"""))
    assert execution.state == State.SUCCESS
    assert execution.outputs is not None and len(execution.outputs["big"]) == 5000
    doc = json.loads(encode_document(execution.document(), value_max=1024))
    assert doc["truncated"] is True
    assert doc["outputs"]["big"]["$truncated"] is True
    assert doc["outputs"]["small"] == 7


def test_secrets_rendered_into_outputs_are_masked_in_the_document(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_SECRET_API_TOKEN", "s3cr3t-token-value")
    execution = run(flow_of("""\
tasks:
  - {id: a, type: core.Log, message: hi}
outputs:
  - {id: leak, type: STRING, value: "token={{ secret('API_TOKEN') }}"}
"""))
    assert execution.state == State.SUCCESS
    assert b"s3cr3t-token-value" not in execution.to_json()
    assert json.loads(execution.to_json())["outputs"]["leak"] == "token=******"


# ------------------------------------------------------------------ validation
def problems(body: str) -> list[str]:
    with pytest.raises(FlowError) as err:
        flow_of(body)
    return [str(p) for p in err.value.problems]


BASE = "tasks:\n  - {id: a, type: core.Log, message: hi}\n"


@pytest.mark.parametrize(("extra", "expected"), [
    ("finally:\n  - {id: b, type: core.Nope}\n",
     "flow.yaml:6:19: finally[0].type: unknown type 'core.Nope'"),
    ("afterExecution:\n  - {id: a, type: core.Log, message: x}\n",
     "flow.yaml:6:10: afterExecution[0].id: duplicate task id 'a' (first used at tasks[0])"),
    ("afterExecution:\n  - {id: c, type: core.Log, message: x, runIf: '{{ nope }}'}\n",
     "flow.yaml:6:48: afterExecution[0].runIf: unknown variable 'nope'"),
    ("outputs:\n  - {id: o, type: INT}\n",
     "flow.yaml:6:5: outputs[0].value: missing required property 'value'"),
    ("outputs:\n  - {id: o, type: INT, value: '{{ x'}\n",
     "flow.yaml:6:31: outputs[0].value: syntax error"),
    ("outputs:\n  - {id: o, type: INT, value: 1}\n  - {id: o, type: INT, value: 2}\n",
     "flow.yaml:6:3: outputs: duplicate output id 'o'"),
    ("outputs:\n  - {id: o, type: SECRET, value: x}\n",
     "flow.yaml:6:19: outputs[0].type: output type SECRET is not supported"),
    ("finaly:\n  - {id: b, type: core.Log, message: x}\n",
     "flow.yaml:5:1: finaly: unknown property 'finaly'; did you mean 'finally'?"),
])
def test_bad_keys_get_one_clear_error_with_file_and_line(extra: str, expected: str) -> None:
    found = problems(BASE + extra)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_the_schema_and_the_reference_example_know_the_keys() -> None:
    props = json_schema()["properties"]
    assert {"finally", "afterExecution", "outputs"} <= set(props)
    assert "finally_" not in props
    flow = parse_flow_text(FLOW_EXAMPLE, "the reference's flow example")
    assert [t.id for t in flow.finally_] == ["tidy"]
    assert [t.id for t in flow.afterExecution] == ["alert"]
    assert flow.afterExecution[0].runIf == "{{ execution.state == 'FAILED' }}"
    assert [o.id for o in flow.outputs] == ["rows"]
    # every task of every list is seen by the walks (compiler, executor, preflight)
    assert [path[0] for path, _ in flow.all_tasks()] == ["tasks", "finally", "afterExecution"]
