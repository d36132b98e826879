"""Issue 13: ``core.Subflow`` gives the child's flow-level outputs as Kestra does
(``outputs.<task>.outputs.<name>``), names its child with templates, and ``core.ForEachItem``
runs its children concurrently (bounded by the child flow's ``concurrency.limit``), its
outputs and log lines in batch order, every batch run before ``transmitFailed`` decides.

Through the real engine, expressions and internal storage; the children meet at a barrier
that only concurrent children can pass (``tests/subflow_funcs.py``).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import subflow_funcs
from waxflow.connectors.storage import Storage, local_path
from waxflow.dataflows import subflow_runner
from waxflow.dataflows.compiler import flow_expressions
from waxflow.dataflows.spec import parse_flow_text
from waxflow.execution import Execution, TriggerInfo
from waxflow.operators.engine import Engine
from waxflow.subflow import FOR_EACH_CONCURRENCY, ForEachItem

DOUBLER = """\
id: doubler
namespace: t.children
inputs:
  - {id: n, type: INT}
outputs:
  - {id: doubled, type: INT, value: "{{ outputs.calc.value }}"}
  - {id: label, type: STRING, value: "n={{ inputs.n }}"}
tasks:
  - {id: check, type: core.Assert, conditions: ["{{ inputs.n > 0 }}"]}
  - {id: calc, type: core.Return, format: "{{ inputs.n * 2 }}"}
  - {id: say, type: core.Log, message: "doubling {{ inputs.n }}"}
"""

PLAIN = """\
id: plain
namespace: t.children
inputs:
  - {id: n, type: INT}
tasks:
  - {id: calc, type: core.Return, format: "{{ inputs.n + 1 }}"}
"""


def together_child(limit: int | None) -> str:
    concurrency = f"concurrency: {{limit: {limit}}}\n" if limit else ""
    return f"""\
id: together
namespace: t.children
{concurrency}inputs:
  - {{id: group, type: STRING}}
  - {{id: n, type: INT}}
  - {{id: parties, type: INT}}
  - {{id: first_waits_for, type: INT, defaults: 0}}
outputs:
  - {{id: n, type: INT, value: "{{{{ outputs.meet.n }}}}"}}
tasks:
  - id: meet
    type: core.Python
    function: tests.subflow_funcs:together
    args:
      group: "{{{{ inputs.group }}}}"
      n: "{{{{ inputs.n }}}}"
      parties: "{{{{ inputs.parties }}}}"
      first_waits_for: "{{{{ inputs.first_waits_for }}}}"
  - {{id: say, type: core.Log, message: "child {{{{ inputs.n }}}} ended"}}
"""


@pytest.fixture
def flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "storage"))
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "doubler.yaml").write_text(DOUBLER, encoding="utf-8")
    (folder / "plain.yaml").write_text(PLAIN, encoding="utf-8")
    monkeypatch.setenv("WAXFLOW_FLOWS_PATH", str(folder))
    monkeypatch.setattr(subflow_runner, "_ENGINES", {})
    return folder


def flow_of(body: str) -> Any:
    return parse_flow_text(f"id: parent\nnamespace: t\n{body}", "parent.yaml")


def run(flow: Any, trigger: dict[str, Any] | None = None, exec_id: str = "e1") -> Execution:
    execution = Execution(id=exec_id, namespace=flow.namespace, flow_id=flow.id,
                          trigger=TriggerInfo(type="manual"))
    return Engine(flow, flow_expressions(flow)).run(execution, trigger or {})


def task_outputs(execution: Execution) -> dict[str, Any]:
    return {r.task_id: r.outputs for r in execution.task_runs}


def lines_file(n: int) -> str:
    return Storage().put_data("t/items.jsonl", "".join(f'{{"n": {i}}}\n'
                                                        for i in range(1, n + 1)).encode())


# ------------------------------------------------------------------ Subflow outputs
def test_subflow_outputs_are_the_child_flow_outputs(flows: Path) -> None:
    execution = run(flow_of("""\
tasks:
  - id: handle
    type: io.kestra.plugin.core.flow.Subflow
    namespace: t.children
    flowId: doubler
    inputs: {n: "{{ trigger.n }}"}
  - id: after
    type: core.Return
    format: "{{ outputs.handle.outputs.doubled + 1 }} {{ outputs.handle.outputs.label }}"
"""), {"n": 4}, exec_id="p1")
    assert execution.state.name == "SUCCESS", execution.document()
    out = task_outputs(execution)
    assert out["handle"] == {"executionId": "p1.p1-0", "state": "SUCCESS",
                             "outputs": {"doubled": 8, "label": "n=4"}}
    assert out["after"] == {"value": "9 n=4"}
    assert [(line["taskId"], line["message"]) for line in execution.logs or []] == [
        ("handle/say", "doubling 4")]


def test_a_failed_child_has_no_outputs(flows: Path) -> None:
    execution = run(flow_of("""\
tasks:
  - {id: handle, type: core.Subflow, namespace: t.children, flowId: doubler,
     transmitFailed: false, inputs: {n: 0}}
  - {id: after, type: core.Return, format: "{{ outputs.handle.state }}"}
"""))
    assert execution.state.name == "SUCCESS", execution.document()
    out = task_outputs(execution)
    assert out["handle"]["state"] == "FAILED"
    assert out["handle"]["outputs"] == {}
    assert out["handle"]["error"]["taskId"] == "check"
    assert out["after"] == {"value": "FAILED"}


def test_a_child_without_flow_outputs_gives_its_task_outputs(flows: Path) -> None:
    out = task_outputs(run(flow_of("""\
tasks:
  - {id: handle, type: core.Subflow, namespace: t.children, flowId: plain, inputs: {n: 1}}
""")))
    assert out["handle"]["outputs"] == {"calc": {"value": 2}}


def test_templated_names_are_rendered_when_the_task_runs(flows: Path) -> None:
    flow = flow_of("""\
variables: {ns: t.children}
tasks:
  - id: handle
    type: core.Subflow
    namespace: "{{ vars.ns }}"
    flowId: "{{ trigger.child }}"
    inputs: {n: 2}
""")
    out = task_outputs(run(flow, {"child": "doubler"}))
    assert out["handle"]["outputs"] == {"doubled": 4, "label": "n=2"}
    failed = run(flow, {"child": "not a flow id"})
    assert failed.state.name == "FAILED"
    assert failed.error is not None
    assert failed.error["message"] == ("flowId 'not a flow id' is not a flow id (a letter or "
                                       "_, then letters, digits, _ -)")


# ------------------------------------------------------------------ ForEachItem
def for_each(group: str, *, parties: int, first_waits_for: int = 0,
             transmit_failed: bool = True) -> Any:
    return flow_of(f"""\
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEachItem
    items: "{{{{ trigger.uri }}}}"
    namespace: t.children
    flowId: together
    transmitFailed: {str(transmit_failed).lower()}
    inputs:
      group: {group}
      n: "{{{{ taskrun.iteration }}}}"
      parties: {parties}
      first_waits_for: {first_waits_for}
""")


def merged(out: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            local_path(out["uri"]).read_text(encoding="utf-8").splitlines()]


def test_children_run_concurrently_and_report_in_batch_order(flows: Path) -> None:
    (flows / "together.yaml").write_text(together_child(None), encoding="utf-8")
    group = uuid.uuid4().hex
    # all four children must be at the barrier at once; the first ends last
    execution = run(for_each(group, parties=4, first_waits_for=4), {"uri": lines_file(4)})
    assert execution.state.name == "SUCCESS", execution.document()
    out = task_outputs(execution)["each"]
    assert out["numberOfBatches"] == 4 and out["iterations"] == {"SUCCESS": 4}
    assert [(m["iteration"], m["executionId"], m["state"], m["outputs"]) for m in merged(out)] \
        == [(i, f"e1.e1-0.{i}", "SUCCESS", {"n": i}) for i in range(1, 5)]
    assert [(line["taskId"], line["message"]) for line in execution.logs or []] == [
        ("each/say", f"child {i} ended") for i in range(1, 5)]
    assert subflow_funcs.PEAK[group] == 4


def test_the_child_flow_concurrency_limit_bounds_the_children(flows: Path) -> None:
    (flows / "together.yaml").write_text(together_child(2), encoding="utf-8")
    group = uuid.uuid4().hex
    flow = for_each(group, parties=2, first_waits_for=2)
    task = flow.tasks[0]
    assert isinstance(task, ForEachItem)
    execution = run(flow, {"uri": lines_file(6)})
    assert execution.state.name == "SUCCESS", execution.document()
    assert task.concurrency() == 2
    assert subflow_funcs.PEAK[group] == 2  # two met at the barrier, never a third
    out = task_outputs(execution)["each"]
    assert [m["outputs"]["n"] for m in merged(out)] == [1, 2, 3, 4, 5, 6]


def test_the_default_bound(flows: Path) -> None:
    (flows / "together.yaml").write_text(together_child(None), encoding="utf-8")
    task = for_each("g", parties=1).tasks[0]
    assert task.concurrency() == FOR_EACH_CONCURRENCY == 8


def test_every_batch_runs_then_transmit_failed_decides(flows: Path) -> None:
    (flows / "together.yaml").write_text(
        together_child(None).replace("tasks:\n", "tasks:\n  - {id: odd, type: core.Assert, "
                                     "conditions: [\"{{ inputs.n % 2 == 0 }}\"]}\n"),
        encoding="utf-8")
    group = uuid.uuid4().hex
    failing = run(for_each(group, parties=1), {"uri": lines_file(4)})
    assert failing.state.name == "FAILED"
    assert failing.error is not None and failing.error["message"].startswith(
        "2 of 4 subflow executions of t.children.together FAILED; first e1.e1-0.1: ")
    assert [line["message"] for line in failing.logs or []
            if line["taskId"] == "each/say"] == ["child 2 ended", "child 4 ended"]
    tolerant = run(for_each(uuid.uuid4().hex, parties=1, transmit_failed=False),
                   {"uri": lines_file(4)})
    assert tolerant.state.name == "SUCCESS", tolerant.document()
    out = task_outputs(tolerant)["each"]
    assert out["iterations"] == {"FAILED": 2, "SUCCESS": 2}
    assert [(m["iteration"], m["state"]) for m in merged(out)] == [
        (1, "FAILED"), (2, "SUCCESS"), (3, "FAILED"), (4, "SUCCESS")]


def test_a_flow_calling_itself_through_for_each_item_stops_at_the_depth_limit(
        flows: Path) -> None:
    """The depth of the calling thread carries over to the children's threads."""
    (flows / "loop.yaml").write_text("""\
id: loop
namespace: t.children
inputs:
  - {id: uri, type: STRING}
tasks:
  - {id: again, type: core.ForEachItem, items: "{{ inputs.uri }}", namespace: t.children,
     flowId: loop, inputs: {uri: "{{ inputs.uri }}"}}
""", encoding="utf-8")
    uri = lines_file(1)
    execution = run(flow_of(f"""\
tasks:
  - {{id: start, type: core.Subflow, namespace: t.children, flowId: loop,
     inputs: {{uri: "{uri}"}}}}
"""))
    assert execution.state.name == "FAILED"
    assert execution.error is not None
    assert "more than 10 subflows deep (a flow calling itself?)" in execution.error["message"]
