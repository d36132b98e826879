"""Issue 13: Kestra's flow keys (``inputs``, ``variables``, ``pluginDefaults``,
``concurrency``), its serdes file tasks (IonToJson, JsonToIon, CsvToIon, IonToCsv) and
Consume's schema registry properties, run through the real engine and internal storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from waxflow.connectors.ion import ion_loads
from waxflow.connectors.storage import Storage, local_path, read_records
from waxflow.dataflows.compiler import _max_concurrency, flow_expressions
from waxflow.dataflows.spec import parse_flow_text
from waxflow.errors import FlowError
from waxflow.execution import Execution, TriggerInfo
from waxflow.flow import InputError, RealtimeTrigger, registry_properties
from waxflow.operators.engine import Engine

REALTIME = """\
triggers:
  - id: t
    type: io.kestra.plugin.kafka.RealtimeTrigger
    topic: orders
    groupId: g
    properties: {bootstrap.servers: "127.0.0.1:1"}
"""


@pytest.fixture(autouse=True)
def _storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "storage"))


def flow_of(body: str) -> Any:
    return parse_flow_text(f"id: f\nnamespace: tests\n{body}", "flow.yaml")


def problems(body: str) -> list[str]:
    with pytest.raises(FlowError) as err:
        flow_of(body)
    return [str(p) for p in err.value.problems]


def run(flow: Any, inputs: dict[str, Any] | None = None, trigger: dict[str, Any] | None = None,
        exec_id: str = "e1") -> Execution:
    """One execution through the real engine, with the compiler's expressions."""
    execution = Execution(id=exec_id, namespace="tests", flow_id=flow.id,
                          trigger=TriggerInfo(type="manual"))
    return Engine(flow, flow_expressions(flow, inputs)).run(execution, trigger or {})


def outputs(execution: Execution) -> dict[str, Any]:
    assert execution.state.name == "SUCCESS", execution.document()
    return {r.task_id: r.outputs for r in execution.task_runs}


# ------------------------------------------------------------------ inputs and variables
INPUTS = """\
inputs:
  - id: name
    type: STRING
    defaults: world
  - id: count
    type: INT
    defaults: 3
    min: 1
  - id: ratio
    type: FLOAT
    required: false
  - id: on
    type: BOOLEAN
    defaults: false
  - id: doc
    type: JSON
    defaults: '{"a": [1, 2]}'
  - id: colour
    type: SELECT
    values: [red, green]
    defaults: red
  - id: tags
    type: ARRAY
    itemType: INT
    defaults: [1, 2]
variables:
  greeting: hello
  nested: {x: 1}
tasks:
  - id: out
    type: io.kestra.plugin.core.output.OutputValues
    values:
      text: "{{ vars.greeting }} {{ inputs.name }}"
      count: "{{ inputs.count + 1 }}"
      ratio: "{{ inputs.ratio ?? 'none' }}"
      on: "{{ inputs.on }}"
      a1: "{{ inputs.doc.a[1] }}"
      colour: "{{ inputs.colour }}"
      tags: "{{ inputs.tags | sum }}"
      x: "{{ vars.nested.x }}"
"""


def test_inputs_take_their_defaults_typed_and_vars_are_read() -> None:
    values = outputs(run(flow_of(INPUTS)))["out"]["values"]
    assert values == {"text": "hello world", "count": 4, "ratio": "none", "on": False,
                      "a1": 2, "colour": "red", "tags": 3, "x": 1}


def test_given_inputs_are_converted_from_command_line_text() -> None:
    given = {"name": "you", "count": "7", "ratio": "0.5", "on": "true", "doc": '{"a": [0, 9]}',
             "colour": "green", "tags": "[4, 5]"}
    values = outputs(run(flow_of(INPUTS), given))["out"]["values"]
    assert values == {"text": "hello you", "count": 8, "ratio": 0.5, "on": True, "a1": 9,
                      "colour": "green", "tags": 9, "x": 1}


@pytest.mark.parametrize(("given", "expected"), [
    ({"count": "zero"}, "input 'count' (INT): invalid literal"),
    ({"count": "0"}, "input 'count' (INT): 0 is below min 1"),
    ({"colour": "blue"}, "input 'colour' (SELECT): 'blue' is not one of red, green"),
    ({"nope": "1"}, "has no input 'nope' (its inputs: colour, count, doc, name, on, ratio, "
                    "tags)"),
])
def test_a_bad_input_value_is_one_line_naming_it(given: dict[str, str], expected: str
                                                 ) -> None:
    with pytest.raises(InputError) as err:
        flow_expressions(flow_of(INPUTS), given)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_a_required_input_without_value_is_refused_before_the_execution(tmp_path: Path
                                                                         ) -> None:
    flow = flow_of("inputs:\n  - {id: file, type: FILE}\ntasks:\n"
                   "  - {id: l, type: core.Log, message: '{{ inputs.file }}'}\n")
    with pytest.raises(InputError, match=r"input 'file' \(FILE\) of flow tests.f is required: "
                                         r"give it with --input file=VALUE"):
        flow_expressions(flow)
    with pytest.raises(InputError, match="input 'file' \\(FILE\\): no such file: /no/such"):
        flow_expressions(flow, {"file": "/no/such"})
    data = tmp_path / "in.csv"
    data.write_text("a\n1\n")
    assert flow_expressions(flow, {"file": str(data)})  # a FILE input is the file's URI


def test_input_declarations_are_checked_by_validate() -> None:
    found = problems(REALTIME + """\
inputs:
  - {id: a, type: INT, defaults: x}
  - {id: b, type: SELECT}
  - {id: c, type: ARRAY}
  - {id: e, type: TEXT, defaults: y}
tasks:
  - {id: l, type: core.Log, message: "{{ inputs.a }}"}
""")
    text = "\n".join(found)
    assert "`defaults` does not fit type INT" in text
    assert "input type SELECT needs `values`" in text
    assert "input type ARRAY needs `itemType`" in text
    assert "inputs[3].type: Input should be 'STRING'" in text
    found = problems(REALTIME + "inputs:\n  - {id: d, type: STRING, defaults: x}\n"
                     "  - {id: d, type: INT, defaults: 1}\n"
                     "tasks:\n  - {id: l, type: core.Log, message: m}\n")
    assert any("inputs: duplicate input id 'd'" in p for p in found), found


def test_a_required_input_without_defaults_needs_a_value_at_run(tmp_path: Path) -> None:
    """A triggered flow may leave a required input without `defaults` (validate accepts
    it: ``waxflow run --input`` gives the value); ``waxflow run`` without that value stops
    in one line naming the input, before it connects to anything."""
    text = REALTIME + "inputs:\n  - {id: who, type: STRING}\ntasks:\n  - {id: l, type: " \
                      "core.Log, message: \"{{ inputs.who }}\"}\n"
    flow_of(text)  # valid
    flow = tmp_path / "flow.yaml"
    flow.write_text(f"id: f\nnamespace: tests\n{text}")
    waxflow = str(Path(sys.executable).with_name("waxflow"))
    res = subprocess.run([waxflow, "run", str(flow)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "WAXFLOW_BOOTSTRAP": "127.0.0.1:9"})
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "input 'who' (STRING)" in last and "--input who=VALUE" in last, res.stderr[-2000:]


# ------------------------------------------------------------------ pluginDefaults
def test_plugin_defaults_fill_tasks_and_triggers_by_either_spelling_and_prefix() -> None:
    flow = flow_of("""\
pluginDefaults:
  - type: io.kestra.plugin.kafka
    values:
      properties: {bootstrap.servers: "127.0.0.1:29999", client.id: shared}
  - type: core.Log
    values: {level: WARN, message: from-defaults}
  - type: io.kestra.plugin.core.debug.Return
    forced: true
    values: {format: forced}
triggers:
  - {id: t, type: kafka.RealtimeTrigger, topic: a, groupId: g,
     properties: {client.id: own}}
tasks:
  - id: seq
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - {id: l1, type: io.kestra.plugin.core.log.Log}
      - {id: l2, type: core.Log, message: mine}
  - {id: r, type: core.Return, format: not-this}
  - {id: p, type: io.kestra.plugin.kafka.Produce, topic: x, from: {value: v}}
""")
    trig = flow.trigger
    assert trig.properties == {"bootstrap.servers": "127.0.0.1:29999", "client.id": "own"}
    seq, ret, produce = flow.tasks
    assert [(t.level, t.message) for t in seq.tasks] == [("WARN", "from-defaults"),
                                                         ("WARN", "mine")]
    assert ret.format == "forced"
    assert produce.properties["bootstrap.servers"] == "127.0.0.1:29999"


def test_plugin_defaults_problems_are_reported() -> None:
    found = problems("pluginDefaults:\n  - {type: core.Log}\n"
                     "tasks:\n  - {id: l, type: core.Log, message: m}\n")
    assert any("pluginDefaults[0].values: missing required property 'values'" in p
               for p in found), found


# ------------------------------------------------------------------ concurrency
def test_concurrency_queue_lowers_max_concurrency_and_cancel_is_refused() -> None:
    flow = flow_of(REALTIME + "concurrency: {limit: 3}\ntasks:\n"
                   "  - {id: l, type: core.Log, message: m}\n")
    assert isinstance(flow.trigger, RealtimeTrigger)
    assert _max_concurrency(flow, flow.trigger) == 3
    found = problems(REALTIME + "concurrency: {limit: 3, behavior: CANCEL}\ntasks:\n"
                     "  - {id: l, type: core.Log, message: m}\n")
    assert any("behavior CANCEL is not supported" in p for p in found), found


# ------------------------------------------------------------------ serdes file tasks
def _stored_batch(records: list[dict[str, Any]]) -> str:
    uri, _ = Storage().put_records("tests/f/batch.ion", records)
    return uri


def test_ion_to_json_lines_and_array() -> None:
    uri = _stored_batch([{"key": "k1", "value": {"n": 1, "s": "é"}, "offset": 0},
                         {"key": None, "value": [1.5, True, None], "offset": 1}])
    flow = flow_of("""\
tasks:
  - {id: lines, type: io.kestra.plugin.serdes.json.IonToJson, from: "{{ trigger.uri }}"}
  - {id: array, type: serdes.IonToJson, from: "{{ trigger.uri }}", newLine: false}
  - {id: back, type: io.kestra.plugin.serdes.json.JsonToIon, from: "{{ outputs.lines.uri }}"}
""")
    out = outputs(run(flow, trigger={"uri": uri}))
    lines = local_path(out["lines"]["uri"]).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"key": "k1", "value": {"n": 1, "s": "é"}, "offset": 0},
        {"key": None, "value": [1.5, True, None], "offset": 1}]
    assert out["lines"]["uri"].endswith("/tests/f/e1/lines.jsonl")
    array = json.loads(local_path(out["array"]["uri"]).read_text(encoding="utf-8"))
    assert array == [json.loads(line) for line in lines]
    assert list(read_records(out["back"]["uri"])) == array
    assert local_path(out["back"]["uri"]).read_bytes().startswith(b"\xe0\x01\x00\xea")


def test_csv_to_ion_and_back(tmp_path: Path) -> None:
    source = tmp_path / "posts.csv"
    source.write_text('\ufeffid;name;text\n1;a;"x;y"\n\n2;b;"line\nbreak"\n3;c\n',
                      encoding="utf-8")
    flow = flow_of("""\
inputs:
  - {id: file, type: FILE}
tasks:
  - {id: rows, type: io.kestra.plugin.serdes.csv.CsvToIon, from: "{{ inputs.file }}",
     fieldSeparator: ";", skipEmptyRows: true, onBadLines: SKIP}
  - {id: csv, type: io.kestra.plugin.serdes.csv.IonToCsv, from: "{{ outputs.rows.uri }}"}
""")
    out = outputs(run(flow, {"file": str(source)}))
    assert list(read_records(out["rows"]["uri"])) == [
        {"id": "1", "name": "a", "text": "x;y"}, {"id": "2", "name": "b", "text": "line\nbreak"}]
    assert local_path(out["csv"]["uri"]).read_text(encoding="utf-8") == \
        'id,name,text\n1,a,x;y\n2,b,"line\nbreak"\n'


def test_csv_bad_row_fails_naming_it(tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("a,b\n1,2\n3\n", encoding="utf-8")
    flow = flow_of("tasks:\n  - {id: rows, type: serdes.CsvToIon, from: '" + str(source)
                   + "'}\n")
    execution = run(flow)
    assert execution.state.name == "FAILED"
    assert execution.error is not None
    assert execution.error["message"] == f"row 3 of {source} has 1 fields, the header 2"


def test_ion_to_json_of_a_missing_file_fails_in_one_line() -> None:
    flow = flow_of("tasks:\n  - {id: j, type: serdes.IonToJson, from: 'file:///no/such.ion'}\n")
    execution = run(flow)
    assert execution.state.name == "FAILED"
    assert execution.error is not None
    assert execution.error["message"] == \
        "`from`: file:///no/such.ion does not exist in internal storage"


def test_ion_values_without_json_form_are_written_as_text() -> None:
    uri = _stored_batch([{"blob": b"\x00\x01", "big": 10**30}])
    flow = flow_of("tasks:\n  - {id: j, type: serdes.IonToJson, from: '" + uri + "'}\n")
    text = local_path(outputs(run(flow))["j"]["uri"]).read_text(encoding="utf-8")
    assert json.loads(text) == {"blob": "AAE=", "big": 10**30}
    assert ion_loads(b"\xe0\x01\x00\xea\x0f") is None  # (the reader used above is ION's)


# ------------------------------------------------------------------ schema registry
CONSUME = """\
tasks:
  - id: read
    type: io.kestra.plugin.kafka.Consume
    topic: t
    valueDeserializer: AVRO
"""


def test_consume_avro_needs_a_registry_and_glue_needs_a_region() -> None:
    assert any("AVRO deserializers need serdeProperties.schema.registry.url (or a "
               "schemaRegistryVendor)" in p for p in problems(CONSUME))
    glue = CONSUME + ("    schemaRegistryVendor:\n"
                      "      type: io.kestra.plugin.kafka.registry.AwsGlueSchemaRegistry\n")
    found = problems(glue)
    assert len(found) == 1 and "the AWS Glue schema registry needs a `region`" in found[0]
    flow = flow_of(glue + "      region: eu-west-1\n      endpoint: http://127.0.0.1:5000\n")
    assert registry_properties({}, flow.tasks[0].schemaRegistryVendor) == {
        "schema.registry.url": "aws-glue://eu-west-1", "aws.region": "eu-west-1",
        "aws.glue.endpoint": "http://127.0.0.1:5000"}
    found = problems(glue + "      region: eu-west-1\n      schemaRegistryUrl: http://a:1\n")
    assert len(found) == 1 and "`schemaRegistryUrl` is for Confluent-compatible" in found[0]
    found = problems(CONSUME + "    serdeProperties: {schema.registry.url: 'http://a:1'}\n"
                     "    schemaRegistryVendor:\n"
                     "      type: io.kestra.plugin.kafka.registry.ConfluentSchemaRegistry\n"
                     "      schemaRegistryUrl: http://b:1\n")
    assert any("name different registries" in p for p in found), found
    flow = flow_of(CONSUME + "    schemaRegistryVendor:\n"
                   "      type: io.kestra.plugin.kafka.registry.ConfluentSchemaRegistry\n"
                   "      schemaRegistryUrl: http://b:1\n")
    assert flow.tasks[0].schemaRegistryVendor.schemaRegistryUrl == "http://b:1"


# ------------------------------------------------------------------ Subflow
CHILD = """\
id: log_record
namespace: streams.consumer
inputs:
  - {id: record, type: JSON}
  - {id: factor, type: INT, defaults: 2}
variables: {unit: kg}
tasks:
  - id: check
    type: core.Assert
    conditions: ["{{ inputs.record.n > 0 }}"]
  - id: calc
    type: core.Return
    format: "{{ inputs.record.n * inputs.factor }} {{ vars.unit }} via {{ trigger.flowId }}"
  - id: say
    type: core.Log
    message: "child saw {{ inputs.record.n }}"
"""


def _subflows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, child: str = CHILD) -> None:
    from waxflow.dataflows import subflow_runner

    folder = tmp_path / "flows" / "nested"
    folder.mkdir(parents=True)
    (folder / "child.yaml").write_text(child, encoding="utf-8")
    (tmp_path / "flows" / "broken.yml").write_text("id: [", encoding="utf-8")
    monkeypatch.setenv("WAXFLOW_FLOWS_PATH", str(tmp_path / "flows"))
    monkeypatch.setattr(subflow_runner, "_ENGINES", {})


PARENT = """\
variables: {unit: lb}
tasks:
  - id: handle
    type: io.kestra.plugin.core.flow.Subflow
    namespace: streams.consumer
    flowId: log_record
    inputs:
      record: "{{ trigger }}"
  - id: after
    type: core.Return
    format: "{{ outputs.handle.outputs.calc.value }} / {{ vars.unit }}"
"""


def test_subflow_runs_the_child_flow_with_its_inputs(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _subflows(tmp_path, monkeypatch)
    execution = run(flow_of(PARENT), trigger={"n": 3}, exec_id="p1")
    out = outputs(execution)
    assert out["handle"]["executionId"] == "p1.p1-0"
    assert out["handle"]["state"] == "SUCCESS"
    assert out["handle"]["outputs"]["calc"] == {"value": "6 kg via f"}
    assert out["after"] == {"value": "6 kg via f / lb"}
    assert [(line["taskId"], line["message"]) for line in execution.logs or []] == [
        ("handle/say", "child saw 3")]
    # the same parent execution (a replay) runs a child of the same id
    assert outputs(run(flow_of(PARENT), trigger={"n": 3}, exec_id="p1"))["handle"][
        "executionId"] == "p1.p1-0"


def test_a_failed_subflow_fails_the_task_unless_transmit_failed_is_false(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _subflows(tmp_path, monkeypatch)
    execution = run(flow_of(PARENT), trigger={"n": 0})
    assert execution.state.name == "FAILED"
    assert execution.error is not None
    assert execution.error["taskId"] == "handle"
    assert execution.error["message"].startswith(
        "subflow streams.consumer.log_record execution e1.e1-0 FAILED: ")
    loose = PARENT.replace("      record:", "    transmitFailed: false\n    inputs:\n      record:"
                           ).replace("    inputs:\n    transmitFailed", "    transmitFailed")
    flow = flow_of(loose.replace("  - id: after\n    type: core.Return\n    format: \"{{ "
                                 "outputs.handle.outputs.calc.value }} / {{ vars.unit }}\"\n",
                                 ""))
    assert flow.tasks[0].transmitFailed is False
    out = outputs(run(flow, trigger={"n": 0}))
    assert out["handle"]["state"] == "FAILED"
    assert out["handle"]["error"]["taskId"] == "check"


def test_subflow_problems_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _subflows(tmp_path, monkeypatch)
    missing = flow_of("tasks:\n  - {id: s, type: core.Subflow, namespace: a.b, flowId: nope}\n")
    execution = run(missing)
    assert execution.error is not None
    assert execution.error["message"] == (
        f"no flow a.b.nope among the flow files of $WAXFLOW_FLOWS_PATH={tmp_path / 'flows'}")
    bad_input = flow_of("tasks:\n  - {id: s, type: core.Subflow, namespace: streams.consumer, "
                        "flowId: log_record, inputs: {record: '[1]', factor: x}}\n")
    execution = run(bad_input)
    assert execution.error is not None
    assert execution.error["message"] == ("subflow streams.consumer.log_record: input "
                                          "'factor' (INT): invalid literal for int() with "
                                          "base 10: 'x'")
    found = problems("tasks:\n  - {id: s, type: core.Subflow, namespace: a, flowId: b, "
                     "wait: false}\n")
    assert any("wait: false is not supported" in p for p in found), found


def test_a_flow_calling_itself_stops_at_the_depth_limit(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _subflows(tmp_path, monkeypatch, "id: loop\nnamespace: t\ntasks:\n"
              "  - {id: again, type: core.Subflow, namespace: t, flowId: loop}\n")
    execution = run(flow_of("tasks:\n  - {id: s, type: core.Subflow, namespace: t, "
                            "flowId: loop}\n"))
    assert execution.state.name == "FAILED"
    assert execution.error is not None
    assert "more than 10 subflows deep (a flow calling itself?)" in execution.error["message"]


# ------------------------------------------------------------------ JSONata
def test_jsonata_transform_value_and_items() -> None:
    uri = _stored_batch([{"order_id": 1, "items": [{"quantity": 2, "price": 3.5}]},
                         {"order_id": 2, "items": [{"quantity": 1, "price": 4},
                                                   {"quantity": 3, "price": 1}]}])
    flow = flow_of("""\
tasks:
  - id: one
    type: io.kestra.plugin.transform.jsonata.TransformValue
    from: '{"order_id": 7, "items": [{"quantity": 2, "price": 3.5}, {"quantity": 1, "price": 1}]}'
    expression: |
      $.{"order_id": order_id, "total": $sum(items.(quantity * price))}
  - id: native
    type: jsonata.TransformValue
    from: "{{ trigger.record }}"
    expression: "items[price > {{ trigger.floor }}].price"
  - id: each
    type: io.kestra.plugin.transform.jsonata.TransformItems
    from: "{{ trigger.uri }}"
    expression: 'items.{"order": %.order_id, "cost": quantity * price}'
""")
    out = outputs(run(flow, trigger={"uri": uri, "floor": 2, "record": {
        "items": [{"price": 1}, {"price": 5}, {"price": 9}]}}))
    assert out["one"] == {"value": {"order_id": 7, "total": 8}}
    assert out["native"] == {"value": [5, 9]}
    assert out["each"]["processedItemsTotal"] == 2
    assert list(read_records(out["each"]["uri"])) == [
        {"order": 1, "cost": 7}, {"order": 2, "cost": 4}, {"order": 2, "cost": 3}]


def test_jsonata_errors_are_one_line() -> None:
    found = problems("tasks:\n  - {id: t, type: jsonata.TransformValue, from: '{}', "
                     "expression: '$.{'}\n")
    assert any("expression: not a valid JSONata expression: " in p for p in found), found
    flow = flow_of("tasks:\n  - {id: t, type: jsonata.TransformValue, from: '{\"a\": 1}', "
                   "expression: '$nope(a)'}\n")
    execution = run(flow)
    assert execution.error is not None
    assert execution.error["message"].startswith("JSONata evaluation failed: ")
    assert "\n" not in execution.error["message"]


def test_consume_header_filters_leave_other_records_out() -> None:
    flow = flow_of("tasks:\n  - {id: read, type: kafka.Consume, topic: t, valueDeserializer: JSON,"
                   " headerFilters: {kind: order}}\n")
    consume = flow.tasks[0]

    class Ctx:  # what _decode_store reads of a run context
        vars = {"execution": {"id": "e1"}, "flow": {"namespace": "tests", "id": "f"}}

    raws = [("t", 0, i, None, json.dumps({"i": i}).encode(), 1000 + i,
             ((("kind", b"order"),) if i % 2 else (("kind", b"refund"),)))
            for i in range(6)]
    uri, count, skipped = consume._decode_store(Ctx(), raws)
    assert (count, skipped) == (3, set())
    assert [r["value"] for r in read_records(uri)] == [{"i": 1}, {"i": 3}, {"i": 5}]


def test_purge_current_execution_files(tmp_path: Path) -> None:
    batch = Storage().put_records("tests/f/e1.ion", [{"value": 1}])
    other = Storage().put_records("tests/f/e2.ion", [{"value": 2}])[0]
    rows = Storage().put_records("e1.q.rows.ion", [{"a": 1}])[0]
    flow = flow_of("""\
tasks:
  - {id: to_json, type: serdes.IonToJson, from: "{{ trigger.uri }}"}
  - {id: purge, type: io.kestra.plugin.core.storage.PurgeCurrentExecutionFiles}
""")
    out = outputs(run(flow, trigger={"uri": batch[0]}))
    assert sorted(out["purge"]["uris"]) == sorted([batch[0], out["to_json"]["uri"], rows])
    assert local_path(other).is_file()  # another execution's file stays
    for uri in out["purge"]["uris"]:
        assert not Path(uri.removeprefix("file://")).exists()
