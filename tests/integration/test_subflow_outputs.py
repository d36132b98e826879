"""Issue 13 on the real broker: ``waxflow run`` jobs whose Subflow reads the child flow's
flow-level outputs (Kestra's ``outputs.<task>.outputs.<name>``), whose ForEachItem runs its
children concurrently (they meet at a barrier only concurrent children pass) with their
outputs in batch order, and whose Kestra blueprint ``extend:`` is accepted with one note.
The child flows are found under ``$WAXFLOW_FLOWS_PATH``; the job refuses to start when one is
missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.flow_helpers import new_group, produce_json, run_once
from tests.kafka_helpers import committed
from waxflow.connectors.storage import local_path

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

DOUBLER = """\
id: doubler
namespace: tests.children
inputs:
  - {id: n, type: INT}
outputs:
  - {id: doubled, type: INT, value: "{{ outputs.calc.value }}"}
tasks:
  - {id: check, type: core.Assert, conditions: ["{{ inputs.n >= 0 }}"]}
  - {id: calc, type: core.Return, format: "{{ inputs.n * 2 }}"}
"""

TOGETHER = """\
id: together
namespace: tests.children
inputs:
  - {id: group, type: STRING}
  - {id: record, type: JSON}
  - {id: parties, type: INT}
outputs:
  - {id: n, type: INT, value: "{{ inputs.record.value.n }}"}
tasks:
  - id: meet
    type: core.Python
    function: tests.subflow_funcs:together
    args:
      group: "{{ inputs.group }}"
      n: "{{ inputs.record.value.n }}"
      parties: "{{ inputs.parties }}"
"""

REALTIME = """\
id: subflow_outputs
namespace: tests.subflows
extend:
  title: Double every number
  tags: [Kafka]
pluginDefaults:
  - type: core.Log
    values: {{message: "order {{{{ trigger.value.n }}}} doubled"}}
tasks:
  - id: handle
    type: io.kestra.plugin.core.flow.Subflow
    namespace: tests.children
    flowId: doubler
    inputs: {{n: "{{{{ trigger.value.n }}}}"}}
  - id: after
    type: core.Return
    format: "{{{{ outputs.handle.outputs.doubled + 1 }}}}"
  - {{id: say, type: core.Log}}
triggers:
  - id: numbers
    type: io.kestra.plugin.kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
"""

BATCH = """\
id: foreach_concurrent
namespace: tests.subflows
tasks:
  - id: to_jsonl
    type: io.kestra.plugin.serdes.json.IonToJson
    from: "{{{{ trigger.uri }}}}"
    newLine: true
  - id: each
    type: io.kestra.plugin.core.flow.ForEachItem
    items: "{{{{ outputs.to_jsonl.uri }}}}"
    batch: {{rows: 1}}
    namespace: tests.children
    flowId: together
    inputs:
      group: "{{{{ execution.id }}}}"
      record: "{{{{ read(taskrun.items) }}}}"
      parties: "{{{{ trigger.messagesCount }}}}"
triggers:
  - id: poll
    type: io.kestra.plugin.kafka.Trigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    interval: PT2S
    maxRecords: {parties}
"""


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "doubler.yaml").write_text(DOUBLER, encoding="utf-8")
    (folder / "together.yaml").write_text(TOGETHER, encoding="utf-8")
    return folder


def test_subflow_outputs_extend_and_plugin_defaults_in_a_realtime_job(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, flows: Path) -> None:
    topic, group = new_topic(1), new_group()
    produce_json(bootstrap, topic, [{"n": 1}, {"n": -1}, {"n": 20}])

    run = run_once(bootstrap, tmp_path, REALTIME.format(topic=topic, group=group), idle=4.0,
                   timeout=180, WAXFLOW_LOG_LEVEL="INFO", WAXFLOW_FLOWS_PATH=str(flows),
                   WAXFLOW_STORAGE=str(tmp_path / "storage")).ok()

    err = run.result.stderr
    notes = [line for line in err.splitlines() if "extend: note:" in line]
    assert len(notes) == 1 and f"{run.path}:3:1: extend: note: Kestra blueprint metadata" in \
        notes[0], err[-3000:]
    docs = {d["trigger"]["offset"]: d for d in run.latest().values()}
    assert sorted(docs) == [0, 1, 2]
    assert [docs[o]["state"] for o in (0, 1, 2)] == ["SUCCESS", "FAILED", "SUCCESS"]
    for offset, n in ((0, 1), (2, 20)):
        runs = {r["taskId"]: r for r in docs[offset]["taskRuns"]}
        handle = runs["handle"]["outputs"]
        assert handle["state"] == "SUCCESS"
        assert handle["outputs"] == {"doubled": 2 * n}  # the child's flow-level outputs
        assert handle["executionId"].startswith(f"{docs[offset]['id']}.")
        assert runs["after"]["outputs"] == {"value": 2 * n + 1}
        assert [line["message"] for line in docs[offset]["logs"]
                if line["taskId"] == "say"] == [f"order {n} doubled"]
    failed = docs[1]
    assert failed["error"]["taskId"] == "handle"
    assert failed["error"]["message"].startswith(
        f"subflow tests.children.doubler execution {failed['id']}.")
    assert committed(bootstrap, group, topic, 1) == {0: 3}


def test_for_each_item_children_run_concurrently_in_a_batch_job(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, flows: Path) -> None:
    topic, group = new_topic(1), new_group()
    produce_json(bootstrap, topic, [{"n": i} for i in range(1, 5)])

    run = run_once(bootstrap, tmp_path, BATCH.format(topic=topic, group=group, parties=4),
                   idle=5.0, timeout=240, WAXFLOW_FLOWS_PATH=str(flows), PYTHONPATH=str(REPO),
                   WAXFLOW_STORAGE=str(tmp_path / "storage")).ok()

    docs = list(run.latest().values())
    assert len(docs) == 1, [d["trigger"] for d in docs]
    (doc,) = docs
    assert doc["state"] == "SUCCESS", json.dumps(doc)[:3000]
    each: dict[str, Any] = {r["taskId"]: r for r in doc["taskRuns"]}["each"]["outputs"]
    assert each["numberOfBatches"] == 4 and each["iterations"] == {"SUCCESS": 4}
    merged = [json.loads(line) for line in
              local_path(each["uri"]).read_text(encoding="utf-8").splitlines()]
    # all four met at the barrier (concurrently); the file lists them in batch order
    assert [(m["iteration"], m["state"], m["outputs"]) for m in merged] == [
        (i, "SUCCESS", {"n": i}) for i in range(1, 5)]
    assert [m["executionId"] for m in merged] == [
        f"{merged[0]['executionId'].rsplit('.', 1)[0]}.{i}" for i in range(1, 5)]
    assert committed(bootstrap, group, topic, 1) == {0: 4}


def test_a_job_whose_child_flow_is_missing_does_not_start(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, flows: Path) -> None:
    topic, group = new_topic(1), new_group()
    produce_json(bootstrap, topic, [{"n": 1}])
    (flows / "doubler.yaml").unlink()

    result = run_once(bootstrap, tmp_path, REALTIME.format(topic=topic, group=group), idle=3.0,
                      timeout=120, WAXFLOW_FLOWS_PATH=str(flows)).result

    assert result.returncode != 0
    assert "no flow tests.children.doubler among the flow files of $WAXFLOW_FLOWS_PATH=" \
        in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert committed(bootstrap, group, topic, 1) in ({}, {0: -1001}, {0: 0})
