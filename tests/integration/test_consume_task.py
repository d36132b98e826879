"""kafka.Consume mid-flow: the stored ION file equals what was produced, and the group's
offsets are committed only after the file exists."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

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
from waxflow.connectors.storage import read_records

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


SHARE_FLOW = """
id: pull-share
namespace: tests
triggers:
  - {{id: tick, type: schedule.Interval, interval: PT1S}}
tasks:
  - id: consume
    type: kafka.Consume
    topic: {topic}
    groupType: SHARE
    groupId: {group}
    maxRecords: 1000
    pollDuration: PT2S
    valueDeserializer: JSON
"""


def test_consume_share_group_acks_after_storing(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """groupType SHARE: a failed store RELEASEs the delivery (it comes again), a stored one
    ACCEPTs good records and REJECTs a malformed one; nothing is delivered twice after."""
    topic, group = new_topic(1), f"sg-{uuid.uuid4().hex[:8]}"
    produce_json(bootstrap, topic, [{"id": i} for i in range(40)])
    produce(bootstrap, topic, [b"{not json"])
    flow = tmp_path / "share.yaml"
    flow.write_text(SHARE_FLOW.format(topic=topic, group=group))

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    log_topic = new_log_topic()
    res = _run(flow, flow_env(bootstrap, log_topic, WAXFLOW_STORAGE=str(blocker / "s")))
    assert res.returncode == 0, res.stderr[-2000:]
    doc = next(iter(latest_by_id(log_documents(bootstrap, log_topic)).values()))
    assert doc["state"] == "FAILED"
    assert "released for redelivery" in json.dumps(doc["taskRuns"][0]["attempts"][-1])

    outs = []
    for _ in range(4):  # a share fetch may hand out fewer records than are waiting
        log_topic = new_log_topic()
        res = _run(flow, flow_env(bootstrap, log_topic, WAXFLOW_STORAGE=str(tmp_path / "ok")))
        assert res.returncode == 0, res.stderr[-2000:]
        doc = next(iter(latest_by_id(log_documents(bootstrap, log_topic)).values()))
        assert doc["state"] == "SUCCESS", doc["error"]
        outs.append(doc["taskRuns"][0]["outputs"])
        if sum(o["messagesCount"] + o["skippedCount"] for o in outs) >= 41:
            break
    ids = [r["value"]["id"] for o in outs if o["messagesCount"]
           for r in read_records(o["uri"])]
    assert sorted(ids) == list(range(40))  # each once: accepted records are not redelivered
    assert sum(o["skippedCount"] for o in outs) == 1
    assert sum(o["acks"].get("ACCEPT", 0) for o in outs) == 40
    assert all(o["ackErrors"] == 0 for o in outs)

    log_topic = new_log_topic()
    res = _run(flow, flow_env(bootstrap, log_topic, WAXFLOW_STORAGE=str(tmp_path / "ok")))
    doc = next(iter(latest_by_id(log_documents(bootstrap, log_topic)).values()))
    assert doc["taskRuns"][0]["outputs"]["messagesCount"] == 0
    assert doc["taskRuns"][0]["outputs"]["skippedCount"] == 0  # the REJECT was final


def test_consume_dead_letters_a_malformed_record_with_its_headers(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    from tests.kafka_helpers import read_all

    topic, dlq = new_topic(1), new_topic(1)
    produce_json(bootstrap, topic, [{"id": i} for i in range(3)])
    produce(bootstrap, topic, [b"{not json"], headers=[("trace", b"t-1")])
    flow = tmp_path / "dlq.yaml"
    flow.write_text(FLOW.format(topic=topic, group=f"g-{uuid.uuid4().hex[:8]}").replace(
        "onSerdeError: SKIPPED", f"onSerdeError: DLQ\n    dlqTopic: {dlq}"))
    log_topic = new_log_topic()
    res = _run(flow, flow_env(bootstrap, log_topic, WAXFLOW_STORAGE=str(tmp_path / "ok")))
    assert res.returncode == 0, res.stderr[-2000:]
    doc = next(iter(latest_by_id(log_documents(bootstrap, log_topic)).values()))
    out = doc["taskRuns"][0]["outputs"]
    assert doc["state"] == "SUCCESS" and out["messagesCount"] == 3 and out["skippedCount"] == 1
    [dead] = read_all(bootstrap, dlq)
    headers = dict(dead.headers() or [])
    assert dead.value() == b"{not json" and headers["trace"] == b"t-1"
    assert headers["waxflow.source.topic"] == topic.encode()
    assert headers["waxflow.source.offset"] == b"3"
