"""Bad input on the real broker never blocks, duplicates or leaks (G5), with ``waxflow run``:

- a JSON record nested 5,000 levels deep (``json.loads`` raised RecursionError in the
  deserialize step: the job crashed at that record on every start, with no coordinates) is a
  serde error of that record: SKIPPED, or on the DLQ with its headers, or with FAIL a stop
  naming topic/partition@offset; realtime and ``kafka.Trigger`` batches (where it is counted
  in ``skippedCount``) alike. A value nested exactly ``MAX_DEPTH`` levels is good input and
  goes through the whole execution (its outputs echo it);
- internal storage that cannot be written stops a ``kafka.Trigger`` job with one line naming
  the path and the OS error (was: ``error calling mapper in step "….execute"``), committing
  nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.flow_helpers import (
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    run_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets, read_all
from waxflow.connectors.serdes import MAX_DEPTH
from waxflow.connectors.storage import read_records

pytestmark = pytest.mark.integration

TRACE = ("trace", b"t-1")


def deep(depth: int) -> bytes:
    """A JSON object nested ``depth`` levels deep (the object is level 1)."""
    return b'{"id": -1, "a": ' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"


# (value, error expected in its history, or None for good input); one partition, in order
RECORDS: list[tuple[bytes, str | None]] = [
    (b'{"id": 0}', None),
    (b'{"id": 1}', None),
    (deep(5_000), f"JSON nested deeper than {MAX_DEPTH} levels"),
    (b'{"id": 3}', None),
    (deep(100_000), f"JSON nested deeper than {MAX_DEPTH} levels"),
    (b'{"id": 5}', None),
]
REALTIME_EXTRA: list[tuple[bytes, str | None]] = [(deep(MAX_DEPTH), None)]  # at the limit


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "message.max.bytes": 4 << 20})
    for i, value in enumerate(values):
        producer.produce(topic, value=value, key=f"k{i}".encode(), partition=0,
                         headers=[TRACE])
    assert producer.flush(30) == 0


def realtime_flow(topic: str, group: str, on_serde_error: str) -> str:
    return f"""\
id: deep-realtime
namespace: tests.bad-input
triggers:
  - id: in
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    onSerdeError: {on_serde_error}
tasks:
  - id: echo
    type: core.Set
    values:
      id: "{{{{ trigger.value.id }}}}"
      value: "{{{{ trigger.value }}}}"
"""


def batch_flow(topic: str, group: str, on_serde_error: str) -> str:
    return f"""\
id: deep-batch
namespace: tests.bad-input
triggers:
  - id: in
    type: kafka.Trigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    interval: PT1S
    onSerdeError: {on_serde_error}
tasks:
  - id: count
    type: core.Set
    values: {{n: "{{{{ trigger.messagesCount }}}}", skipped: "{{{{ trigger.skippedCount }}}}"}}
"""


def check_dlq(bootstrap: str, topic: str, dlq: str, bad: dict[int, bytes]) -> None:
    """Each bad record once on the DLQ: original bytes and headers, where it came from, why."""
    dead = read_all(bootstrap, dlq)
    assert len(dead) == len(bad)
    for msg in dead:
        pairs: list[tuple[str, bytes]] = list(msg.headers() or [])  # type: ignore[arg-type]
        headers = dict(pairs)
        assert headers["waxflow.source.topic"] == topic.encode()
        assert headers["waxflow.source.partition"] == b"0"
        offset = int(headers["waxflow.source.offset"])
        assert msg.value() == bad.pop(offset), "the DLQ keeps the original bytes"
        assert headers[TRACE[0]] == TRACE[1], "original headers are kept"
        assert f"nested deeper than {MAX_DEPTH} levels" in headers["waxflow.error"].decode()
    assert bad == {}


@pytest.mark.parametrize("mode", ["SKIPPED", "DLQ"])
def test_realtime_deep_json_is_a_serde_error_of_that_record(
        mode: str, bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    dlq = new_topic(1) if mode == "DLQ" else None
    records = RECORDS + REALTIME_EXTRA
    produce(bootstrap, topic, [v for v, _ in records])
    on_error = "{type: SKIPPED}" if dlq is None else f"{{type: DLQ, topic: {dlq}}}"
    flow = write_flow(tmp_path, realtime_flow(topic, group, on_error))

    result = run_flow(flow, flow_env(bootstrap, log), idle=2, timeout=120)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "panicked" not in result.stderr
    docs = {d["trigger"]["offset"]: d for d in latest_by_id(log_documents(bootstrap, log))
            .values()}
    assert sorted(docs) == list(range(len(records))), "one history entry per record"
    for offset, (value, error) in enumerate(records):
        doc = docs[offset]
        if error is None:
            assert doc["state"] == "SUCCESS", doc["error"]
            outputs = doc["taskRuns"][0]["outputs"]
            assert outputs["value"] == json.loads(value), "decoded and echoed whole"
        else:
            assert doc["state"] == "SKIPPED"
            message = doc["error"]["message"]
            assert message.startswith(f"cannot deserialize the value of record {topic}/0@"
                                      f"{offset}: {error}"), message
            assert (dlq in message) if dlq else ("DLQ" not in message)
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1) \
        == {0: len(records)}
    if dlq is not None:
        check_dlq(bootstrap, topic, dlq, {i: v for i, (v, e) in enumerate(records) if e})


def test_realtime_fail_stops_at_the_deep_record_naming_it(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce(bootstrap, topic, [v for v, _ in RECORDS])
    flow = write_flow(tmp_path, realtime_flow(topic, group, "{type: FAIL}"))

    result = run_flow(flow, flow_env(bootstrap, log), idle=2, timeout=120)

    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "panicked" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if "waxflow: error:" in ln]
    assert len(errors) == 1, result.stderr
    assert f"record {topic}/0@2: JSON nested deeper than {MAX_DEPTH} levels" in errors[0]
    assert committed(bootstrap, group, topic, 1)[0] <= 2, "nothing committed past it"


@pytest.mark.parametrize("mode", ["SKIPPED", "DLQ"])
def test_batch_deep_json_is_skipped_and_counted(
        mode: str, bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    dlq = new_topic(1) if mode == "DLQ" else None
    produce(bootstrap, topic, [v for v, _ in RECORDS])
    on_error = "{type: SKIPPED}" if dlq is None else f"{{type: DLQ, topic: {dlq}}}"
    flow = write_flow(tmp_path, batch_flow(topic, group, on_error))
    env = flow_env(bootstrap, log, WAXFLOW_STORAGE=str(tmp_path / "storage"))

    result = run_flow(flow, env, idle=3, timeout=120)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "panicked" not in result.stderr
    docs = list(latest_by_id(log_documents(bootstrap, log)).values())
    assert docs and all(d["state"] == "SUCCESS" for d in docs), docs
    good = [json.loads(v) for v, e in RECORDS if e is None]
    bad = {i: e for i, (_v, e) in enumerate(RECORDS) if e is not None}
    assert sum(d["trigger"]["messagesCount"] for d in docs) == len(good)
    assert sum(d["trigger"]["skippedCount"] for d in docs) == len(bad)
    skipped: dict[int, str] = {s["offset"]: s["error"] for d in docs
                               for s in d["trigger"]["skipped"]}
    assert sorted(skipped) == sorted(bad)
    for offset, error in bad.items():
        assert skipped[offset].startswith(f"cannot deserialize the value of record {topic}/0@"
                                          f"{offset}: {error}")
    stored: list[dict[str, Any]] = [r for d in docs for r in read_records(d["trigger"]["uri"])]
    assert sorted((r["offset"], r["value"]["id"]) for r in stored) == [
        (i, v["id"]) for i, v in zip([i for i, (_v, e) in enumerate(RECORDS) if e is None],
                                     good, strict=True)]
    counts = [t["outputs"] for d in docs for t in d["taskRuns"]]
    assert sum(c["skipped"] for c in counts) == len(bad)
    assert committed(bootstrap, group, topic, 1) == end_offsets(bootstrap, topic, 1) \
        == {0: len(RECORDS)}
    if dlq is not None:
        check_dlq(bootstrap, topic, dlq, {i: v for i, (v, e) in enumerate(RECORDS) if e})


def test_unwritable_storage_stops_the_batch_job_with_one_line(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """CI runs as root, which ignores read-only permissions: a storage path under a regular
    file fails for everyone (mkdir: Not a directory)."""
    topic, group, log = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    flow = write_flow(tmp_path, batch_flow(topic, group, "{type: SKIPPED}"))
    produce(bootstrap, topic, [b'{"id": %d}' % i for i in range(3)])
    ok = run_flow(flow, flow_env(bootstrap, log, WAXFLOW_STORAGE=str(tmp_path / "good")),
                  idle=3, timeout=120)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert committed(bootstrap, group, topic, 1) == {0: 3}

    produce(bootstrap, topic, [b'{"id": %d}' % i for i in range(3, 6)])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    storage = blocker / "storage"
    result = run_flow(flow, flow_env(bootstrap, log, WAXFLOW_STORAGE=str(storage)),
                      idle=3, timeout=120)

    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "panicked" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if "waxflow: error" in ln]
    assert len(errors) == 1, result.stderr
    line = errors[0]
    assert line.startswith(f"waxflow: error: cannot write internal storage file {storage}/"
                           "tests.bad-input/deep-batch/"), line
    assert f"[Errno 20] Not a directory: '{storage}/tests.bad-input/deep-batch'" in line
    assert f"$WAXFLOW_STORAGE={storage}" in line
    assert "error calling" not in result.stderr
    assert committed(bootstrap, group, topic, 1) == {0: 3}, "nothing committed past the batch"
    docs = latest_by_id(log_documents(bootstrap, log)).values()
    assert sorted(d["trigger"]["offsets"][f"{topic}/0"][0] for d in docs) == [0], \
        "no execution recorded for the batch that could not be stored"
