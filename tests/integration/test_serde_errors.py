"""G5 bad input on the real broker: onSerdeError SKIPPED, DLQ and FAIL with `waxflow run`.

A topic mixes valid JSON, malformed JSON and bytes that are not UTF-8. A bad record must never
disappear silently: SKIPPED leaves a SKIPPED history entry, DLQ also copies it (original bytes,
source coordinates and the error in headers) to the DLQ topic, and neither stops the flow or
holds back the group's offsets; FAIL stops the job with a one-line message and does not commit
past the bad record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from tests.flow_helpers import (
    latest_by_id,
    log_documents,
    new_group,
    new_log_topic,
    realtime_flow,
    run_once,
)
from tests.kafka_helpers import committed, end_offsets, read_all

pytestmark = pytest.mark.integration

# (partition, key, value, what the error must mention or None); the flow reads keys as
# STRING and values as JSON; offsets follow the order per partition
RECORDS: list[tuple[int, bytes, bytes, str | None]] = [
    (0, b"k0", b'{"id": 1, "type": "purchase"}', None),
    (0, b"k1", b'{"id": 2, "type": ', "malformed JSON"),
    (0, b"k2", b'{"id": 3, "type": "refund"}', None),
    (0, b"\xc3\x28", b'{"id": 4, "type": "refund"}', "the key"),  # key: invalid UTF-8
    (1, b"k3", b"\xff\xfe\x00garbage", "UTF-8"),
    (1, b"k4", b'{"id": 5, "type": "purchase"}', None),
    (1, b"k5", b"not json at all", "malformed JSON"),
]
TRACE = ("trace", b"trace-123")


def produce_records(bootstrap: str, topic: str) -> dict[tuple[int, int], tuple[bytes, bytes,
                                                                              str | None]]:
    """Produce RECORDS; return them by (partition, offset) as the broker placed them."""
    placed: dict[tuple[int, int], tuple[bytes, bytes, str | None]] = {}
    errors: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for partition, key, value, bad in RECORDS:
        def report(err: Any, msg: Any, key: bytes = key, value: bytes = value,
                   bad: str | None = bad) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                placed[(msg.partition(), msg.offset())] = (key, value, bad)
        producer.produce(topic, value=value, key=key, partition=partition, headers=[TRACE],
                         on_delivery=report)
    assert producer.flush(30) == 0 and not errors
    return placed


TASKS = """\
tasks:
  - id: seen
    type: core.Set
    values:
      rid: "{{ trigger.value.id }}"
"""


def flow_text(topic: str, group: str, on_serde_error: str) -> str:
    return realtime_flow("serde-errors", "tests.g5", TASKS, topic=topic, group=group,
                         trigger=f"    onSerdeError: {on_serde_error}\n")


def execution_docs_by_coord(bootstrap: str, log: str) -> dict[tuple[int, int],
                                                              dict[str, Any]]:
    """Latest document per execution, keyed by the trigger's (partition, offset); each record
    must have exactly one execution id."""
    latest = latest_by_id(log_documents(bootstrap, log))
    by_coord: dict[tuple[int, int], dict[str, Any]] = {}
    for doc in latest.values():
        coord = (doc["trigger"]["partition"], doc["trigger"]["offset"])
        assert coord not in by_coord, f"two execution ids for record {coord}"
        by_coord[coord] = doc
    return by_coord


def check_history(bootstrap: str, topic: str, log: str,
                  placed: dict[tuple[int, int], tuple[bytes, bytes, str | None]]
                  ) -> dict[tuple[int, int], dict[str, Any]]:
    docs = execution_docs_by_coord(bootstrap, log)
    assert set(docs) == set(placed), "every record, good or bad, has one history entry"
    for (partition, offset), (_key, value, bad) in placed.items():
        doc = docs[(partition, offset)]
        assert doc["terminal"] is True
        assert doc["trigger"]["topic"] == topic
        if bad is None:
            assert doc["state"] == "SUCCESS", doc
            assert doc["error"] is None
            assert doc["taskRuns"][0]["outputs"] == {"rid": json.loads(value)["id"]}
        else:
            assert doc["state"] == "SKIPPED", doc
            assert doc["taskRuns"] == []
            message = doc["error"]["message"]
            assert f"{topic}/{partition}@{offset}" in message
            assert bad in message
    return docs


def test_skipped_records_bad_input_and_moves_on(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic, group = new_topic(partitions=2), new_group()
    placed = produce_records(bootstrap, topic)

    run = run_once(bootstrap, tmp_path, flow_text(topic, group, "{type: SKIPPED}"), idle=2,
                   timeout=60).ok()

    assert "Traceback" not in run.result.stderr
    check_history(bootstrap, topic, run.log_topic, placed)
    assert committed(bootstrap, group, topic, 2) == end_offsets(bootstrap, topic, 2) == {0: 4,
                                                                                         1: 3}


def test_dlq_gets_the_original_record_with_source_headers(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic = new_topic(partitions=2)
    dlq, group = new_topic(partitions=1), new_group()
    placed = produce_records(bootstrap, topic)

    run = run_once(bootstrap, tmp_path, flow_text(topic, group, f"{{type: DLQ, topic: {dlq}}}"),
                   idle=2, timeout=60).ok()

    assert "Traceback" not in run.result.stderr
    docs = check_history(bootstrap, topic, run.log_topic, placed)
    assert committed(bootstrap, group, topic, 2) == end_offsets(bootstrap, topic, 2) == {0: 4,
                                                                                         1: 3}

    bad = {coord: rec for coord, rec in placed.items() if rec[2] is not None}
    dead = read_all(bootstrap, dlq)
    assert len(dead) == len(bad), "each bad record once on the DLQ, no good one"
    seen: set[tuple[int, int]] = set()
    for msg in dead:
        headers: dict[str, list[bytes]] = {}
        for name, value in msg.headers() or []:
            headers.setdefault(name, []).append(value)
        assert headers["waxflow.source.topic"] == [topic.encode()]
        coord = (int(headers["waxflow.source.partition"][0]),
                 int(headers["waxflow.source.offset"][0]))
        assert coord in bad, coord
        key, value, reason = bad[coord]
        assert msg.value() == value, "the DLQ keeps the original bytes"
        assert msg.key() == key
        assert reason is not None and reason in headers["waxflow.error"][0].decode()
        assert headers[TRACE[0]] == [TRACE[1]], "original headers are kept"
        assert dlq in docs[coord]["error"]["message"]
        seen.add(coord)
    assert seen == set(bad)


def test_fail_stops_without_committing_past_the_bad_record(
        bootstrap: str, new_topic: Callable[..., str], admin: AdminClient,
        tmp_path: Path) -> None:
    topic, group, log = new_topic(partitions=1), new_group(), new_log_topic()
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in (b'{"id": 1}', b'{"id": 2}', b'{"id": 3, oops', b'{"id": 4}'):
        producer.produce(topic, value=value, partition=0)
    assert producer.flush(30) == 0
    bad_offset = 2
    text = flow_text(topic, group, "{type: FAIL}")

    for _run in range(2):  # a rerun stops at the same record: nothing was committed past it
        result = run_once(bootstrap, tmp_path, text, idle=2, timeout=60, log_topic=log).result
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and "panicked" not in result.stderr
        where = f"{topic}/0@{bad_offset}"
        naming = [ln for ln in result.stderr.splitlines() if where in ln]
        assert len(naming) == 1, result.stderr
        assert naming[0].startswith("waxflow: error:")
        assert "malformed JSON" in naming[0]
        assert sum("waxflow: error" in ln for ln in result.stderr.splitlines()) == 1

        offset = committed(bootstrap, group, topic, 1)[0]
        assert offset < bad_offset + 1, f"committed {offset}, past bad record {bad_offset}"

    # the bad record did not turn into a SKIPPED (or any terminal) history entry
    if log in admin.list_topics(timeout=10).topics:
        for doc in log_documents(bootstrap, log):
            if doc["trigger"]["offset"] == bad_offset:
                assert doc["state"] != "SKIPPED", doc
