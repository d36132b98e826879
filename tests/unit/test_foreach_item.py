"""``core.ForEachItem`` (Kestra's ``io.kestra.plugin.core.flow.ForEachItem``) and the ``read``
expression function: one child execution per batch of an internal storage file, through the
real engine, expressions and storage (the corpus flow 15 runs on the broker in
``tests/integration/test_kestra_corpus.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from waxflow.connectors.storage import Storage, local_path
from waxflow.dataflows import subflow_runner
from waxflow.dataflows.compiler import flow_expressions
from waxflow.dataflows.spec import parse_flow, parse_flow_text
from waxflow.errors import FlowError
from waxflow.execution import Execution, TriggerInfo
from waxflow.operators.engine import Engine

CORPUS = Path(__file__).resolve().parents[1] / "kestra_flows"
CHILD = """\
id: log_record
namespace: streams.consumer
inputs:
  - {id: record, type: JSON}
tasks:
  - id: say
    type: core.Log
    message: "child saw {{ inputs.record.value.n }}"
  - id: check
    type: core.Assert
    conditions: ["{{ inputs.record.value.n > 0 }}"]
  - id: show
    type: core.Return
    format: "n={{ inputs.record.value.n }}"
"""


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "storage"))
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "log_record.yaml").write_text(CHILD, encoding="utf-8")
    monkeypatch.setenv("WAXFLOW_FLOWS_PATH", str(flows))
    monkeypatch.setattr(subflow_runner, "_ENGINES", {})


def run(flow: Any, trigger: dict[str, Any], exec_id: str = "e1") -> Execution:
    execution = Execution(id=exec_id, namespace=flow.namespace, flow_id=flow.id,
                          trigger=TriggerInfo(type="manual"))
    return Engine(flow, flow_expressions(flow)).run(execution, trigger)


def each_outputs(execution: Execution) -> dict[str, Any]:
    out = {r.task_id: r.outputs for r in execution.task_runs}["each"]
    assert out is not None
    return out


def batch_file(ns: list[int]) -> str:
    """A batch file as kafka.Trigger stores it (binary ION records)."""
    uri, _ = Storage().put_records("t/batch.ion", [
        {"key": f"k{n}", "value": {"n": n}, "topic": "t", "partition": 0, "offset": i}
        for i, n in enumerate(ns)])
    return uri


def corpus_15() -> Any:
    return parse_flow(CORPUS / "15_blog_polling_foreachitem.yaml")


def test_corpus_15_runs_one_child_per_record() -> None:
    execution = run(corpus_15(), {"uri": batch_file([3, 1, 2]), "messagesCount": 3})
    assert execution.state.name == "SUCCESS", execution.document()
    out = each_outputs(execution)
    assert out["numberOfBatches"] == 3
    assert out["iterations"] == {"SUCCESS": 3}
    merged = [json.loads(line) for line in
              local_path(out["uri"]).read_text(encoding="utf-8").splitlines()]
    assert [(m["iteration"], m["executionId"], m["state"], m["outputs"]["show"]["value"])
            for m in merged] == [(1, "e1.e1-1.1", "SUCCESS", "n=3"),
                                 (2, "e1.e1-1.2", "SUCCESS", "n=1"),
                                 (3, "e1.e1-1.3", "SUCCESS", "n=2")]


def test_run_if_false_skips_the_task() -> None:
    execution = run(corpus_15(), {"uri": batch_file([]), "messagesCount": 0})
    assert execution.state.name == "SUCCESS", execution.document()
    states = {r.task_id: r.state.name for r in execution.task_runs}
    assert states == {"ion_to_jsonl": "SUCCESS", "each": "SKIPPED"}


def test_rows_per_batch_and_read_of_each_batch_file(tmp_path: Path) -> None:
    flow = parse_flow_text("""\
id: parent
namespace: t
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEachItem
    items: "{{ trigger.uri }}"
    batch: {rows: 2}
    namespace: t
    flowId: lines
    inputs:
      text: "{{ read(taskrun.items) }}"
      n: "{{ taskrun.iteration }}"
""", "parent.yaml")
    child = ("id: lines\nnamespace: t\ninputs:\n  - {id: text, type: STRING}\n"
             "  - {id: n, type: INT}\ntasks:\n  - {id: r, type: core.Return, "
             "format: \"{{ inputs.n }}:{{ inputs.text | trim | replace('\\n', '|') }}\"}\n")
    (tmp_path / "flows" / "lines.yaml").write_text(child, encoding="utf-8")
    items = Storage().put_data("t/items.jsonl", b'{"a":1}\n{"a":2}\n{"a":3}\n\n')
    execution = run(flow, {"uri": items})
    assert execution.state.name == "SUCCESS", execution.document()
    out = each_outputs(execution)
    assert out["numberOfBatches"] == 2
    merged = [json.loads(line) for line in
              local_path(out["uri"]).read_text(encoding="utf-8").splitlines()]
    assert [m["outputs"]["r"]["value"] for m in merged] == [
        '1:{"a":1}|{"a":2}', '2:{"a":3}']


def test_a_failed_child_fails_the_task_after_every_batch_ran() -> None:
    execution = run(corpus_15(), {"uri": batch_file([1, 0, 2, 0]), "messagesCount": 4})
    assert execution.state.name == "FAILED"
    assert execution.error is not None and execution.error["taskId"] == "each"
    assert execution.error["message"].startswith(
        "2 of 4 subflow executions of streams.consumer.log_record FAILED; first e1.e1-1.2: ")
    # every batch ran, the ones after the first failure too
    assert [(line["taskId"], line["message"]) for line in execution.logs or []
            if line["taskId"] == "each/say"] == [
        ("each/say", f"child saw {n}") for n in (1, 0, 2, 0)]


def test_read_refuses_files_outside_internal_storage(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not for templates", encoding="utf-8")
    flow = parse_flow_text(f"""\
id: p
namespace: t
tasks:
  - {{id: r, type: core.Return, format: "{{{{ read('{secret.as_uri()}') }}}}"}}
""", "p.yaml")
    execution = run(flow, {})
    assert execution.state.name == "FAILED"
    assert execution.error is not None
    assert "is not in internal storage" in execution.error["message"]
    assert "not for templates" not in json.dumps(execution.document())
    # nor does ForEachItem split one
    execution = run(parse_flow_text(f"""\
id: p
namespace: t
tasks:
  - {{id: e, type: core.ForEachItem, items: "{secret.as_uri()}", namespace: streams.consumer,
     flowId: log_record}}
""", "p.yaml"), {})
    assert execution.state.name == "FAILED"
    assert execution.error is not None
    assert execution.error["message"].startswith(f"items: {secret.as_uri()} is not in internal "
                                                 "storage")


def test_batch_bytes_is_refused_in_one_line() -> None:
    with pytest.raises(FlowError) as err:
        parse_flow_text("""\
id: p
namespace: t
tasks:
  - {id: e, type: core.ForEachItem, items: x, batch: {bytes: 10MB}, namespace: t,
     flowId: c}
""", "p.yaml")
    assert "batch.bytes is not supported: cut by `rows` or `partitions`" in str(err.value)
