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
