"""``waxflow test FLOW --records FILE.jsonl``: no broker, all three trigger kinds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WAXFLOW = str(Path(sys.executable).with_name("waxflow"))

HEADS = {
    "realtime": "  - {id: t, type: kafka.RealtimeTrigger, topic: x, groupId: g, "
                "valueDeserializer: JSON}",
    "batch": "  - {id: t, type: kafka.Trigger, topic: x, groupId: g, valueDeserializer: JSON}",
    "schedule": "  - {id: t, type: schedule.Interval, interval: PT1M}",
}
TASKS = {
    "realtime": '  - {id: s, type: core.Set, values: {double: "{{ trigger.value.n * 2 }}"}}',
    "batch": '  - {id: s, type: core.Set, values: {count: "{{ trigger.messagesCount }}"}}',
    "schedule": '  - {id: s, type: core.Set, values: {who: "{{ trigger.who }}"}}',
}


def _run(tmp_path: Path, kind: str, lines: list[object]) -> tuple[int, list[dict[str, object]]]:
    flow = tmp_path / f"{kind}.yaml"
    flow.write_text(f"id: t-{kind}\nnamespace: tests\ntriggers:\n{HEADS[kind]}\ntasks:\n"
                    f"{TASKS[kind]}\n")
    records = tmp_path / "records.jsonl"
    records.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    res = subprocess.run([WAXFLOW, "test", str(flow), "--records", str(records), "--format",
                          "json"], capture_output=True, text=True, timeout=60,
                         env={"WAXFLOW_STORAGE": str(tmp_path / "st"), "PATH": "/usr/bin"})
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout)


def test_realtime_one_execution_per_line(tmp_path: Path) -> None:
    code, docs = _run(tmp_path, "realtime", [{"n": 1}, {"value": {"n": 5}, "key": "k"}])
    assert code == 0
    assert [d["taskRuns"][0]["outputs"] for d in docs] == [{"double": 2}, {"double": 10}]


def test_batch_lines_are_one_stored_batch(tmp_path: Path) -> None:
    code, docs = _run(tmp_path, "batch", [{"n": i} for i in range(7)])
    assert code == 0
    (doc,) = docs
    assert doc["trigger"]["messagesCount"] == 7
    assert Path(str(doc["trigger"]["uri"]).removeprefix("file://")).exists()
    assert doc["taskRuns"][0]["outputs"] == {"count": 7}


def test_schedule_one_tick_per_line(tmp_path: Path) -> None:
    code, docs = _run(tmp_path, "schedule", [{"who": "a"}, {"who": "b"}])
    assert code == 0
    assert [d["taskRuns"][0]["outputs"]["who"] for d in docs] == ["a", "b"]


INPUTS_FLOW = """\
id: t-inputs
namespace: tests
inputs:
  - {id: factor, type: INT, defaults: 2}
  - {id: label, type: STRING, defaults: none}
triggers:
  - {id: t, type: kafka.RealtimeTrigger, topic: x, groupId: g, valueDeserializer: JSON}
tasks:
  - id: s
    type: core.Set
    values: {out: "{{ trigger.value.n * inputs.factor }}", label: "{{ inputs.label }}"}
"""


def _run_inputs(tmp_path: Path, *inputs: str) -> subprocess.CompletedProcess[str]:
    flow = tmp_path / "inputs.yaml"
    flow.write_text(INPUTS_FLOW)
    records = tmp_path / "records.jsonl"
    records.write_text('{"n": 3}\n')
    args = [a for name_value in inputs for a in ("--input", name_value)]
    return subprocess.run([WAXFLOW, "test", str(flow), "--records", str(records), "--format",
                           "json", *args], capture_output=True, text=True, timeout=60,
                          env={"WAXFLOW_STORAGE": str(tmp_path / "st"), "PATH": "/usr/bin"})


def test_inputs_take_their_defaults_unless_given(tmp_path: Path) -> None:
    res = _run_inputs(tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["taskRuns"][0]["outputs"] == {"out": 6, "label": "none"}
    res = _run_inputs(tmp_path, "factor=5", "label=x=y")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["taskRuns"][0]["outputs"] == {"out": 15, "label": "x=y"}


def test_a_bad_input_is_one_line_naming_it(tmp_path: Path) -> None:
    for given, expected in (("factor=many", "factor"), ("colour=red", "no input 'colour'")):
        res = _run_inputs(tmp_path, given)
        assert res.returncode != 0
        assert "Traceback" not in res.stderr
        assert expected in res.stderr, res.stderr
    res = _run_inputs(tmp_path, "novalue")
    assert res.returncode == 2 and "expected NAME=VALUE" in res.stderr
