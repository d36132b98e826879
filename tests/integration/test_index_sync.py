"""ExecutionIndex.sync against the real broker: incremental reads, tombstones, transactions."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from waxflow.recovery.executions_cli import add_parser
from waxflow.recovery.index import ExecutionIndex

pytestmark = pytest.mark.integration


def doc(exec_id: str, state: str, offset: int, run: str = "r1") -> dict[str, Any]:
    terminal = state in ("SUCCESS", "FAILED")
    return {"id": exec_id, "namespace": "shop", "flowId": "orders", "state": state,
            "terminal": terminal, "runId": run,
            "startDate": f"2026-11-25T16:00:{offset:02d}+00:00",
            "endDate": f"2026-11-25T16:00:{offset:02d}.5+00:00" if terminal else None,
            "durationMs": 500.0 if terminal else None,
            "trigger": {"type": "kafka.RealtimeTrigger", "topic": "orders", "partition": 0,
                        "offset": offset, "key": None, "timestamp": None, "offsets": None,
                        "messagesCount": None, "deliveryCount": None},
            "taskRuns": [], "error": None, "upstreamExecutionId": None, "labels": {}}


def produce(producer: Producer, topic: str, *records: tuple[str, dict[str, Any] | None]) -> None:
    """Produce keyed documents (None = tombstone) and wait until the broker has them all."""
    failures: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for key, value in records:
        producer.produce(topic, key=key.encode(),
                         value=None if value is None else json.dumps(value).encode(),
                         on_delivery=report)
    assert producer.flush(30) == 0 and not failures


def test_sync_is_incremental(bootstrap: str, new_topic: Callable[..., str],
                             tmp_path: Path) -> None:
    topic = new_topic(partitions=3)
    producer = Producer({"bootstrap.servers": bootstrap})
    ids = [f"{i:032x}" for i in range(4)]
    produce(producer, topic, *[(i, doc(i, "RUNNING", n)) for n, i in enumerate(ids)])

    with ExecutionIndex(tmp_path / "ix.sqlite") as index:
        assert index.sync(bootstrap, topic) == 4
        assert index.last_sync_complete
        assert {r["id"] for r in index.list()} == set(ids)
        assert sum(index.positions(topic).values()) == 4

        # two new executions, one finishing, one replayed under a new run, one tombstone
        produce(producer, topic, ("a" * 32, doc("a" * 32, "RUNNING", 10)),
                ("b" * 32, doc("b" * 32, "FAILED", 11)),
                (ids[0], doc(ids[0], "SUCCESS", 0)),
                (ids[1], doc(ids[1], "SUCCESS", 1, run="r2")),
                (ids[2], None))
        assert index.sync(bootstrap, topic) == 4  # the tombstone is read but not a document
        rows = {r["id"]: r for r in index.list()}
        assert len(rows) == 6
        assert rows[ids[0]]["state"] == "SUCCESS" and rows[ids[0]]["runs"] == 1
        assert rows[ids[1]]["state"] == "SUCCESS" and rows[ids[1]]["runs"] == 2
        assert rows[ids[2]]["state"] == "RUNNING"  # tombstones never erase history
        assert sum(index.positions(topic).values()) == 9

        assert index.sync(bootstrap, topic) == 0

    with ExecutionIndex(tmp_path / "ix.sqlite") as index:  # positions survive a reopen
        assert index.sync(bootstrap, topic) == 0
        assert len(index.list()) == 6


def test_missing_topic_reads_nothing_and_creates_nothing(bootstrap: str, tmp_path: Path) -> None:
    topic = f"waxflow-missing-{uuid.uuid4().hex[:8]}"
    with ExecutionIndex(tmp_path / "ix.sqlite") as index:
        assert index.sync(bootstrap, topic, timeout=5) == 0
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert topic not in admin.list_topics(timeout=10).topics


def test_transactional_log_does_not_stall(bootstrap: str, new_topic: Callable[..., str],
                                          tmp_path: Path) -> None:
    """Commit markers sit at the end of the log; aborted documents are never indexed."""
    topic = new_topic()
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"c" * 32, value=json.dumps(doc("c" * 32, "SUCCESS", 1)))
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"d" * 32, value=json.dumps(doc("d" * 32, "SUCCESS", 2)))
    producer.flush(30)
    producer.abort_transaction(30)

    with ExecutionIndex(tmp_path / "ix.sqlite") as index:
        t0 = time.monotonic()
        assert index.sync(bootstrap, topic, timeout=10) == 1
        assert index.last_sync_complete and time.monotonic() - t0 < 5
        assert [r["id"] for r in index.list()] == ["c" * 32]
        assert index.positions(topic) == {0: 4}  # past both control markers


def test_cli_syncs_then_answers_json(bootstrap: str, new_topic: Callable[..., str],
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topic = new_topic()
    produce(Producer({"bootstrap.servers": bootstrap}),
            topic, ("e" * 32, doc("e" * 32, "FAILED", 5)))
    parser = argparse.ArgumentParser(prog="waxflow")
    add_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["executions", "trace", "orders", "0", "5", "--format", "json",
                              "--bootstrap", bootstrap, "--topic-log", topic,
                              "--index", str(tmp_path / "cli.sqlite")])
    assert args.func(args) == 0
    traced = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["state"], r["match"]) for r in traced] == [("e" * 32, "FAILED", "record")]
