"""Issue 13: Kestra's names and expressions, run-time ``task``/``taskrun``/``parents``,
``waxflow test`` as a real dry run, alike unreachable-broker errors, and validation that
reports every problem at once."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

from waxflow.connectors import kafka_produce
from waxflow.connectors.kafka_source import cluster_metadata
from waxflow.dataflows.local_run import DryRunScope, run_jsonl
from waxflow.dataflows.spec import json_schema, parse_flow_text, task_union
from waxflow.errors import FlowError, SourceStop
from waxflow.execution import Execution, TriggerInfo
from waxflow.expressions import ExpressionError, Expressions
from waxflow.flow import NoTrigger
from waxflow.operators.engine import Engine
from waxflow.tasks import TASK_ALIASES, TASK_TYPES, TaskBase, add_task_aliases, task_type

WAXFLOW = str(Path(sys.executable).with_name("waxflow"))
REALTIME = """\
triggers:
  - id: t
    type: io.kestra.plugin.kafka.RealtimeTrigger
    topic: orders
    groupId: g
    properties: {bootstrap.servers: "127.0.0.1:1"}
"""


def flow_of(body: str, head: str = "") -> Any:
    return parse_flow_text(f"id: f\nnamespace: tests\n{head}{body}", "flow.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(FlowError) as err:
        parse_flow_text(f"id: f\nnamespace: tests\n{text}", "flow.yaml")
    return [str(p) for p in err.value.problems]


def run_manual(flow: Any) -> Execution:
    execution = Execution(id="e1", namespace="tests", flow_id="f",
                          trigger=TriggerInfo(type="manual"))
    return Engine(flow, Expressions()).run(execution, {})


def outputs(execution: Execution) -> dict[str, Any]:
    return {r.task_id: r.outputs for r in execution.task_runs}


# ------------------------------------------------------------------------- type names
def test_task_type_aliases() -> None:
    @task_type("zz.Probe", aliases=("io.example.plugin.Probe",))
    class Probe(TaskBase):
        """A task type registered for this test only."""

        type: Literal["zz.Probe"] = Field(description="the task type")

    try:
        Probe.model_rebuild(_types_namespace={"AnyTask": task_union()}, force=True)
        task = Probe.model_validate({"id": "p", "type": "io.example.plugin.Probe"})
        assert task.type == "zz.Probe"  # one spelling in the history and in `task.type`
        schema = json.dumps(Probe.model_json_schema())
        assert '"enum": ["zz.Probe", "io.example.plugin.Probe"]' in schema
        with pytest.raises(ValueError, match="registered twice"):
            add_task_aliases("core.Log", "io.example.plugin.Probe")
    finally:
        TASK_TYPES.pop("zz.Probe", None)
        TASK_ALIASES.pop("io.example.plugin.Probe", None)


def test_schema_lists_both_spellings() -> None:
    text = json.dumps(json_schema())
    for name in ("kafka.Produce", "io.kestra.plugin.kafka.Produce", "core.Log",
                 "io.kestra.plugin.core.log.Log", "io.kestra.plugin.kafka.RealtimeTrigger",
                 "io.kestra.plugin.core.trigger.Schedule", "io.kestra.plugin.core.http.Request"):
        assert f'"{name}"' in text, name


def test_kestra_names_make_the_same_flow() -> None:
    body = """\
tasks:
  - id: check
    type: {if_}
    condition: "{{{{ trigger.value.n > 1 }}}}"
    then:
      - {{id: hello, type: {log}, message: hi}}
  - id: send
    type: {produce}
    topic: out
    from: {{value: x}}
"""
    kestra = flow_of(body.format(if_="io.kestra.plugin.core.flow.If",
                                 log="io.kestra.plugin.core.log.Log",
                                 produce="io.kestra.plugin.kafka.Produce"), REALTIME)
    ours = flow_of(body.format(if_="core.If", log="core.Log", produce="kafka.Produce"),
                   REALTIME.replace("io.kestra.plugin.kafka.RealtimeTrigger",
                                    "kafka.RealtimeTrigger"))
    assert kestra.model_dump() == ours.model_dump()


# ------------------------------------------------------------------- validation in one pass
def test_unknown_type_does_not_hide_the_tasks_other_problems() -> None:
    found = problems(REALTIME + """\
tasks:
  - id: "not an id"
    type: io.kestra.plugin.core.flow.WorkingDirectory
    retry: {type: constant, interval: soon}
    tasks:
      - {id: inner, type: core.Log}
""")
    text = "\n".join(found)
    assert "unknown type 'io.kestra.plugin.core.flow.WorkingDirectory': waxflow has no " \
           "equivalent of this Kestra task" in text
    assert "tasks[0].id: String should match pattern" in text
    assert "tasks[0].retry.interval:" in text
    assert "tasks[0].tasks[0].message: missing required property 'message'" in text
    assert "did you mean" not in text  # no misleading guess for a Kestra plugin we lack


def test_several_triggers_do_not_hide_their_property_errors() -> None:
    found = problems("""\
triggers:
  - {id: a, type: kafka.RealtimeTrigger, topic: x, groupId: g, valueDeserializer: JSNO}
  - {id: b, type: kafka.RealtimeTrigger, topic: y}
tasks:
  - {id: log, type: core.Log, message: hi}
""")
    text = "\n".join(found)
    assert "triggers[0].valueDeserializer: Input should be" in text
    assert "triggers[1].groupId: missing required property 'groupId'" in text
    assert "waxflow runs one trigger per flow and this flow has 2" in text


def test_duplicate_ids_come_with_the_other_problems() -> None:
    text = "\n".join(problems(REALTIME + """\
tasks:
  - {id: a, type: core.Log, message: hi}
  - {id: a, type: core.Log, message: hi, level: LOUD}
  - {id: b, type: core.Lgo, message: hi}
"""))
    assert "duplicate task id 'a'" in text
    assert "tasks[1].level:" in text
    assert "unknown type 'core.Lgo'; did you mean 'core.Log'?" in text


@pytest.mark.parametrize(("typo", "meant"), [
    ("io.kestra.plugin.kafka.produce", "io.kestra.plugin.kafka.Produce"),  # docs' URL case
    ("io.kestra.core.tasks.log.Log", None),  # an old Kestra name: accepted as is
    ("http.Requets", "http.Request"),
])
def test_unknown_types_get_did_you_mean(typo: str, meant: str | None) -> None:
    body = REALTIME + f"tasks:\n  - {{id: x, type: {typo}, message: m, uri: u}}\n"
    if meant is None:
        flow_of(body.replace("uri: u", "level: INFO"))
        return
    assert any(f"did you mean '{meant}'?" in p for p in problems(body))


def test_a_flow_without_trigger_is_manual() -> None:
    flow = flow_of("tasks:\n  - {id: log, type: core.Log, message: hi}\n")
    assert flow.enabled_triggers == []
    with pytest.raises(NoTrigger, match="`waxflow test FLOW` runs it once"):
        _ = flow.trigger


def test_run_accepts_a_manual_flow_and_refuses_a_disabled_one(tmp_path: Path) -> None:
    from waxflow.dataflows.preflight import preflight

    path = tmp_path / "manual.yaml"
    path.write_text("id: f\nnamespace: tests\ntasks:\n  - {id: l, type: core.Log, message: m}\n")
    preflight(path, environ={})  # a manual flow: `waxflow run` runs it once
    path.write_text("id: f\nnamespace: tests\ndisabled: true\n" + REALTIME
                    + "tasks:\n  - {id: l, type: core.Log, message: m}\n")
    with pytest.raises(FlowError, match="the flow is disabled"):
        preflight(path, environ={})


# ------------------------------------------------------------------- run-time variables
def test_task_and_taskrun_are_defined_at_run_time() -> None:
    flow = flow_of("""\
tasks:
  - id: me
    type: io.kestra.plugin.core.debug.Return
    format: "{{ task.id }}|{{ task.type }}|{{ taskrun.attemptsCount }}|\
{{ taskrun.id is string }}|{{ taskrun.startDate[:2] }}"
  - id: flaky
    type: core.Fail
    condition: "{{ taskrun.attemptsCount < 2 }}"
    retry: {type: constant, interval: PT0S, maxAttempts: 3}
""")
    execution = run_manual(flow)
    assert execution.state == "SUCCESS", execution.error
    assert outputs(execution)["me"] == {"value": "me|core.Return|0|True|20"}
    flaky = next(r for r in execution.task_runs if r.task_id == "flaky")
    assert len(flaky.attempts) == 3  # attemptsCount was 0, 1, then 2: the third passed


def test_foreach_value_and_parents(caplog: pytest.LogCaptureFixture) -> None:
    flow = flow_of("""\
tasks:
  - id: outer
    type: io.kestra.plugin.core.flow.ForEach
    values: '["a", "b"]'
    tasks:
      - id: inner
        type: core.ForEach
        values: [1, 2]
        tasks:
          - id: say
            type: core.Log
            message: "{{ parent.taskrun.value }}{{ taskrun.value }} \
{{ parents | map(attribute='task.id') | join('<') }}"
  - id: after
    type: core.Return
    format: "{{ taskrun.value is defined }} {{ parents | length }}"
""")
    with caplog.at_level(logging.INFO, logger="waxflow.task"):
        execution = run_manual(flow)
    assert execution.state == "SUCCESS", execution.error
    said = [r.getMessage().split("] ", 1)[1] for r in caplog.records if "[e1 say]" in
            r.getMessage()]
    assert said == ["a1 inner<outer", "a2 inner<outer", "b1 inner<outer", "b2 inner<outer"]
    assert outputs(execution)["outer"] == {"count": 2}
    assert outputs(execution)["after"] == {"value": "False 0"}


def test_output_values_and_dict_method_names() -> None:
    flow = flow_of("""\
tasks:
  - id: s
    type: io.kestra.plugin.core.output.OutputValues
    values: {echo: hi, items: 3}
  - id: r
    type: core.Return
    format: "{{ outputs.s.values.echo }} {{ outputs.s.values.items }}"
  - id: check
    type: io.kestra.plugin.core.execution.Assert
    conditions: ["{{ outputs.r.value == 'hi 3' }}"]
""")
    execution = run_manual(flow)
    assert execution.state == "SUCCESS", execution.error


# ------------------------------------------------------------------- Pebble in the sandbox
@pytest.mark.parametrize(("source", "expected"), [
    ("{{ trigger.value ?? '' }}", {"a": 1, "n": None, "s": '{"k": [5]}'}),
    ("{{ trigger.missing ?? 'd' }}", "d"),
    ("{{ trigger.missing.deeper ?? 'd' }}", "d"),
    ("{{ trigger.value.n ?? 0 }}", 0),
    ("{{ trigger.value.a ?? 'x' | string }}", "1"),
    ("{{ trigger.nope ?? trigger.value.a ?? 9 }}", 1),
    ("{{ '??' ~ 'x' }} ?? text", "??x ?? text"),
    ("{{ trigger.value | jq('.a') | first }}", 1),
    ("{{ trigger.value.s | jq('.k[0]') }}", [5]),
    ("{{ trigger.value | jq('.missing') }}", [None]),
    ("{{ trigger.value ?? '' | jq('.a') | first }}", 1),
    ("{{ fromJson(trigger.value.s).k | toJson }}", "[5]"),
])
def test_pebble_forms(source: str, expected: Any) -> None:
    exprs = Expressions()
    assert exprs.check(source) == []
    ctx = {"trigger": {"value": {"a": 1, "n": None, "s": '{"k": [5]}'}}}
    assert exprs.compile(source).render(ctx) == expected


def test_unsupported_jq_fails_validation_with_what_to_write() -> None:
    (message,) = Expressions().check("{{ trigger.value | jq('.a | length') }}")
    assert "is not supported" in message and "`.a.b`" in message and "use Jinja" in message


def test_missing_value_without_coalescing_still_fails() -> None:
    with pytest.raises(ExpressionError):
        Expressions().compile("{{ trigger.missing }}").render({"trigger": {}})


# ------------------------------------------------------------------- the dry run
def _records(tmp_path: Path, *lines: Any) -> Path:
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(("serde", "as_text"), [("STRING", True), ("JSON", False)])
def test_dry_run_applies_the_deserializers(tmp_path: Path, serde: str, as_text: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "st"))
    flow = flow_of("""\
tasks:
  - {id: r, type: core.Return, format: "{{ trigger.value is string }}"}
""", REALTIME + f"    valueDeserializer: {serde}\n")
    docs = run_jsonl(flow, _records(tmp_path, {"value": {"a": 1}, "key": "k"}, "plain"))
    assert [d["taskRuns"][0]["outputs"]["value"] for d in docs if d["taskRuns"]] == \
        ([True, True] if as_text else [False])
    if not as_text:  # "plain" is not JSON: onSerdeError (default SKIPPED)
        assert [d["state"] for d in docs] == ["SUCCESS", "SKIPPED"]


def test_dry_run_captures_produce_and_reads_consume_files(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "st"))
    monkeypatch.setattr(kafka_produce, "REACH_TIMEOUT", 30.0)  # would show if it connected
    flow = flow_of("""\
tasks:
  - id: read
    type: io.kestra.plugin.kafka.Consume
    topic: in
    properties: {bootstrap.servers: "127.0.0.1:1"}
    valueDeserializer: JSON
  - id: send
    type: io.kestra.plugin.kafka.Produce
    properties: {bootstrap.servers: "127.0.0.1:1"}
    topic: out
    valueSerializer: JSON
    from:
      key: "{{ execution.id }}"
      value: {count: "{{ outputs.read.messagesCount }}"}
""")
    with pytest.raises(FlowError, match=r"--consume in=FILE\.jsonl"):
        run_jsonl(flow, None)
    scope = DryRunScope()
    started = time.monotonic()
    (doc,) = run_jsonl(flow, None, consume={"in": _records(tmp_path, {"n": 1}, {"n": 2})},
                       scope=scope)
    assert time.monotonic() - started < 10
    assert doc["state"] == "SUCCESS", doc["error"]
    assert doc["taskRuns"][0]["outputs"]["messagesCount"] == 2
    (record,) = scope.produced
    assert (record.topic, json.loads(record.value or b"")) == ("out", {"count": 2})
    assert record.document()["key"] == "test-manual"


def test_waxflow_test_shows_logs_and_what_it_did_not_send(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("id: f\nnamespace: tests\n" + REALTIME + """\
    valueDeserializer: JSON
tasks:
  - {id: say, type: io.kestra.plugin.core.log.Log, message: "got {{ trigger.value.n }}"}
  - id: send
    type: io.kestra.plugin.kafka.Produce
    properties: {bootstrap.servers: "127.0.0.1:1"}
    topic: out
    from: {value: "n={{ trigger.value.n }}"}
""")
    res = subprocess.run([WAXFLOW, "test", str(flow), "--records",
                          str(_records(tmp_path, {"n": 7})), "--format", "json",
                          "--outputs", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120,
                         env={"WAXFLOW_STORAGE": str(tmp_path / "st"), "PATH": "/usr/bin"})
    assert res.returncode == 0, res.stderr
    assert "got 7" in res.stderr
    assert 'dry run, not sent to out' in res.stderr and '"value": "n=7"' in res.stderr
    assert json.loads((tmp_path / "out" / "out.jsonl").read_text())["value"] == "n=7"
    assert json.loads(res.stdout)[0]["state"] == "SUCCESS"


# ------------------------------------------------------------------- unreachable broker
def test_produce_and_consume_say_alike_that_kafka_is_unreachable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_produce, "REACH_TIMEOUT", 1.0)
    flow = flow_of("""\
tasks:
  - id: send
    type: kafka.Produce
    properties: {bootstrap.servers: "127.0.0.1:1"}
    topic: x
    from: {value: hi}
""")
    started = time.monotonic()
    execution = run_manual(flow)
    assert time.monotonic() - started < 10
    assert execution.error is not None
    produce_says = execution.error["message"]
    with pytest.raises(SourceStop) as consume:  # what kafka.Consume's start raises
        cluster_metadata({"bootstrap.servers": "127.0.0.1:1", "group.id": "g"}, 1.0)
    assert produce_says.startswith("cannot reach Kafka at 127.0.0.1:1 within 1s: ")
    assert str(consume.value).split(": ")[0] == produce_says.split(": ")[0]
