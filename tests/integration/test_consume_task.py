"""kafka.Consume mid-flow: the stored ION file equals what was produced, and the group's
offsets are committed only after the file exists."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.storage import read_records
from tests.flow_helpers import (
    WAXFLOW,
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce,
    produce_json,
)
from tests.kafka_helpers import committed

pytestmark = pytest.mark.integration

FLOW = """
id: pull
namespace: tests
triggers:
  - {{id: once, type: schedule.Interval, interval: PT1S}}
tasks:
  - id: consume
    type: kafka.Consume
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    onSerdeError: SKIPPED
"""


def _run(flow: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WAXFLOW, "run", str(flow), "--ticks", "1"], capture_output=True,
                          text=True, env=env, timeout=120)


def test_consume_stores_what_was_produced_then_commits(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, group = new_topic(2), f"g-{uuid.uuid4().hex[:8]}"
    produce_json(bootstrap, topic, [{"id": i, "v": f"x{i}"} for i in range(500)], partitions=2)
    produce(bootstrap, topic, [b"{not json"])
    flow = tmp_path / "pull.yaml"
    flow.write_text(FLOW.format(topic=topic, group=group))

    # storage that cannot be written: the task fails and nothing is committed
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    log_topic = new_log_topic()
    res = _run(flow, flow_env(bootstrap, log_topic, WAXFLOW_STORAGE=str(blocker / "s")))
    assert res.returncode == 0, res.stderr[-2000:]
    doc = next(iter(latest_by_id(log_documents(bootstrap, log_topic)).values()))
    assert doc["state"] == "FAILED"
    assert all(o < 0 for o in committed(bootstrap, group, topic, 2).values())

    log_topic = new_log_topic()
    res = _run(flow, flow_env(bootstrap, log_topic, WAXFLOW_STORAGE=str(tmp_path / "ok")))
    assert res.returncode == 0, res.stderr[-2000:]
    doc = next(iter(latest_by_id(log_documents(bootstrap, log_topic)).values()))
    assert doc["state"] == "SUCCESS", doc["error"]
    out = doc["taskRuns"][0]["outputs"]
    assert out["messagesCount"] == 500 and out["skippedCount"] == 1
    stored = list(read_records(out["uri"]))
    assert sorted((r["value"]["id"], r["value"]["v"]) for r in stored) == \
        [(i, f"x{i}") for i in range(500)]
    assert sum(committed(bootstrap, group, topic, 2).values()) == 501

    # a second run with the same group has nothing new
    log_topic = new_log_topic()
    res = _run(flow, flow_env(bootstrap, log_topic, WAXFLOW_STORAGE=str(tmp_path / "ok")))
    doc = next(iter(latest_by_id(log_documents(bootstrap, log_topic)).values()))
    assert doc["taskRuns"][0]["outputs"]["messagesCount"] == 0
