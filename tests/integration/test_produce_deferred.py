"""``kafka.Produce`` in a consumer-group flow enqueues its records and returns; a delivery the
broker refuses afterwards still fails its execution (never a silent loss), on the real broker.

The destination topic takes at most 1,024-byte record batches (``max.message.bytes``); one
input asks for a 4,000-byte output (alone in its partition), which the client accepts and the
broker refuses *after* the task returned. Transactional: the refused record poisons the
epoch's transaction, which aborts; it is redone without that execution's records, so the
others are output exactly once and it is FAILED naming the record.
Non-transactional (pipelined): the refusal is learnt when the snapshot settles the quiet
producers (failures only are reported), before its offset can be committed; the execution's
latest document says FAILED (a SUCCESS document may come first) and the others succeed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.flow_helpers import flow_env, new_log_topic, produce, run_flow, write_flow
from tests.integration.test_produce import flow_yaml, terminal_docs, trigger
from tests.kafka_helpers import committed, end_offsets, read_all

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("big", [4000, 1_100_000], ids=["broker-refuses", "client-refuses"])
@pytest.mark.parametrize("txn", [True, False], ids=["transactional", "at-least-once"])
def test_a_delivery_refused_after_the_task_returned_fails_only_its_execution(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, txn: bool,
        big: int) -> None:
    """``big``: 4,000 bytes is taken by the client and refused by the broker afterwards;
    1.1 MB is over the client's ``message.max.bytes`` and refused as it is sent (for a
    transactional task: when the epoch's transaction sends the held records)."""
    src = new_topic(1)
    # the broker refuses a whole record batch: the large record goes alone to partition 1
    dst = new_topic(2, **{"max.message.bytes": "1024"})
    sizes = [10, 20, big, 30, 40]
    produce(bootstrap, src, [json.dumps({"n": i, "size": s}).encode()
                             for i, s in enumerate(sizes)])
    trig = trigger(src, valueDeserializer="JSON")
    tasks = [{"id": "out", "type": "kafka.Produce", "topic": dst, "transactional": txn,
              "from": {"key": "{{ trigger.value.n }}",
                       "value": "{{ 'x' * trigger.value.size }}",
                       "partition": "{{ 1 if trigger.value.size > 1000 else 0 }}"}}]
    path = write_flow(tmp_path, flow_yaml(f"late-{str(txn).lower()}", trig, tasks))
    log = new_log_topic()
    result = run_flow(path, flow_env(bootstrap, log), idle=2, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]

    docs = terminal_docs(bootstrap, log)
    assert [d["state"] for d in docs] == ["SUCCESS", "SUCCESS", "FAILED", "SUCCESS", "SUCCESS"]
    failed = docs[2]
    assert failed["error"]["taskId"] == "out"
    assert "too large" in failed["error"]["message"].lower(), failed["error"]
    assert f"topic {dst}" in failed["error"]["message"]
    if txn:  # worded from the record as it was held (its headers name the execution)
        assert f"of execution {failed['id']}" in failed["error"]["message"]
    assert [r["state"] for r in failed["taskRuns"]] == ["FAILED"]
    assert committed(bootstrap, trig["groupId"], src, 1) == end_offsets(bootstrap, src, 1)
    isolation = "read_committed" if txn else "read_uncommitted"
    keys = Counter(m.key() for m in read_all(bootstrap, dst, isolation=isolation))
    assert set(keys) == {b"0", b"1", b"3", b"4"}
    if txn:
        assert set(keys.values()) == {1}  # exactly once, the aborted transaction invisible
