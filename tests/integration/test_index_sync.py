"""ExecutionIndex.sync against the real broker: incremental reads, tombstones, transactions,
documents read back by ``show`` (task runs, logs), and the CLI rendering them."""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from waxflow.recovery import index as index_module
from waxflow.recovery.executions_cli import add_parser
from waxflow.recovery.index import ExecutionIndex
from waxflow.server import broker_view

pytestmark = pytest.mark.integration


@pytest.fixture(params=["thread", "process"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tests using it run twice: the log read by a thread of the syncing process, and
    by two reader processes (``waxflow.recovery.index_reader``, which a sync with many
    records to read starts; the partitions shared among them) handing over batches of 7
    records (many batches, each acknowledged)."""
    if request.param == "process":
        monkeypatch.setattr(index_module, "PROCESS_READER_RECORDS", 1)
        monkeypatch.setattr(index_module, "READER_PROCESSES", 2)
        monkeypatch.setattr(index_module, "BATCH_DOCS", 7)
    else:
        monkeypatch.setattr(index_module, "PROCESS_READER_RECORDS", 1 << 62)
    return str(request.param)


def doc(exec_id: str, state: str, offset: int, run: str = "r1", **extra: Any) -> dict[str, Any]:
    terminal = state in ("SUCCESS", "FAILED")
    return {"id": exec_id, "namespace": "shop", "flowId": "orders", "state": state,
            "terminal": terminal, "runId": run,
            "startDate": f"2026-11-25T16:00:{offset:02d}+00:00",
            "endDate": f"2026-11-25T16:00:{offset:02d}.5+00:00" if terminal else None,
            "durationMs": 500.0 if terminal else None,
            "trigger": {"type": "kafka.RealtimeTrigger", "topic": "orders", "partition": 0,
                        "offset": offset, "key": None, "timestamp": None, "offsets": None,
                        "messagesCount": None, "deliveryCount": None},
            "taskRuns": [], "error": None, "upstreamExecutionId": None, "labels": {},
            **extra}


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
                             tmp_path: Path, reader: str) -> None:
    topic = new_topic(partitions=3)
    producer = Producer({"bootstrap.servers": bootstrap})
    ids = [f"{i:032x}" for i in range(4)]
    produce(producer, topic, *[(i, doc(i, "RUNNING", n)) for n, i in enumerate(ids)])

    with ExecutionIndex(tmp_path / "ix.duckdb") as index:
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

    with ExecutionIndex(tmp_path / "ix.duckdb") as index:  # positions survive a reopen
        assert index.sync(bootstrap, topic) == 0
        assert len(index.list()) == 6


def test_missing_topic_reads_nothing_and_creates_nothing(bootstrap: str, tmp_path: Path) -> None:
    topic = f"waxflow-missing-{uuid.uuid4().hex[:8]}"
    with ExecutionIndex(tmp_path / "ix.duckdb") as index:
        assert index.sync(bootstrap, topic, timeout=5) == 0
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert topic not in admin.list_topics(timeout=10).topics


def test_transactional_log_does_not_stall(bootstrap: str, new_topic: Callable[..., str],
                                          tmp_path: Path, reader: str) -> None:
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

    with ExecutionIndex(tmp_path / "ix.duckdb") as index:
        t0 = time.monotonic()
        assert index.sync(bootstrap, topic, timeout=10) == 1
        assert index.last_sync_complete and time.monotonic() - t0 < 5
        assert [r["id"] for r in index.list()] == ["c" * 32]
        assert index.positions(topic) == {0: 4}  # past both control markers


def test_group_lag_leaves_transaction_markers_out(bootstrap: str,
                                                 new_topic: Callable[..., str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The Flows page's lag: a group that read every committed record of a transactional
    topic has lag 0 (not 1 per commit marker); one record left in a committed transaction
    is lag 1 (not 2 with its marker); an aborted transaction after the group's offset is
    no work left, nor in the middle of the records left (counted by reading them); past
    ``EXACT_LAG_RECORDS`` the lag is an estimate from offsets, marked not exact."""
    topic = new_topic(partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])

    def commit(*values: bytes) -> None:
        for value in values:
            producer.begin_transaction()
            producer.produce(topic, key=b"k", value=value)
            producer.commit_transaction(30)

    def consume(count: int) -> None:
        seen = 0
        deadline = time.monotonic() + 30
        while seen < count and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                seen += 1
                consumer.commit(message=msg, asynchronous=False)
        assert seen == count

    def lag() -> dict[str, Any]:
        broker_view._LAGS._items.clear()  # answers are cached for a few seconds
        return broker_view.group_lag({"bootstrap.servers": bootstrap}, group, [topic])

    try:
        commit(b"v0", b"v1", b"v2")
        consume(3)
        first = lag()
        assert first["error"] is None
        [row] = first["partitions"]
        assert row["end"] - row["committed"] == 1 and row["lag"] == 0
        assert first["total"] == 0
        commit(b"left")
        assert lag()["total"] == 1
        consume(1)
        producer.begin_transaction()
        producer.produce(topic, key=b"k", value=b"aborted")
        producer.flush(30)
        producer.abort_transaction(30)
        assert lag()["total"] == 0
        # in the middle of the range left: a commit marker, an aborted record and its abort
        # marker: two records left, counted by reading them (exact)
        commit(b"a")
        producer.begin_transaction()
        producer.produce(topic, key=b"k", value=b"aborted")
        producer.flush(30)
        producer.abort_transaction(30)
        commit(b"c")
        counted = lag()
        assert counted["total"] == 2 and counted["exact"] is True
        assert counted["partitions"][0]["exact"] is True
        # past EXACT_LAG_RECORDS the lag is estimated from offsets, and says so
        monkeypatch.setattr(broker_view, "EXACT_LAG_RECORDS", 1)
        estimated = lag()
        assert estimated["exact"] is False and estimated["partitions"][0]["exact"] is False
        assert estimated["total"] == 5  # a, its marker, the aborted record and marker, c
    finally:
        consumer.close()


def test_cli_syncs_then_answers_json(bootstrap: str, new_topic: Callable[..., str],
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topic = new_topic()
    produce(Producer({"bootstrap.servers": bootstrap}),
            topic, ("e" * 32, doc("e" * 32, "FAILED", 5)))
    parser = argparse.ArgumentParser(prog="waxflow")
    add_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["executions", "trace", "orders", "0", "5", "--format", "json",
                              "--bootstrap", bootstrap, "--topic-log", topic,
                              "--index", str(tmp_path / "cli.duckdb")])
    assert args.func(args) == 0
    traced = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["state"], r["match"]) for r in traced] == [("e" * 32, "FAILED", "record")]


LOGS = [
    {"ts": "2026-11-25T16:00:01.100000+00:00", "level": "DEBUG", "taskId": "load",
     "taskRunId": "tr1", "attempt": 1, "message": "connecting to inventory"},
    {"ts": "2026-11-25T16:00:01.200000+00:00", "level": "WARN", "taskId": "load",
     "taskRunId": "tr1", "attempt": 1, "message": "attempt 1 failed: HTTP 503; retrying"},
    {"ts": "2026-11-25T16:00:02.300000+00:00", "level": "ERROR", "taskId": "load",
     "taskRunId": "tr1", "attempt": 2, "message": "gave up: HTTP 503 [final]"},
]
TASK_RUNS = [{"taskId": "load", "type": "http.Request", "parentTaskId": None, "state": "FAILED",
              "attempts": [{"state": "FAILED", "startDate": "2026-11-25T16:00:01+00:00",
                            "endDate": "2026-11-25T16:00:01.5+00:00", "error": "HTTP 503"},
                           {"state": "FAILED", "startDate": "2026-11-25T16:00:02+00:00",
                            "endDate": "2026-11-25T16:00:02.5+00:00", "error": "HTTP 503"}],
              "outputs": {"status": 503}}]


def test_show_reads_the_document_back_with_logs(bootstrap: str, new_topic: Callable[..., str],
                                                tmp_path: Path) -> None:
    topic = new_topic(partitions=2)
    producer = Producer({"bootstrap.servers": bootstrap})
    eid = "f" * 32
    produce(producer, topic, (eid, doc(eid, "RUNNING", 3)),
            ("g" * 32, doc("g" * 32, "SUCCESS", 4)),
            (eid, doc(eid, "FAILED", 3, taskRuns=TASK_RUNS, logs=LOGS, logsDropped=2,
                      error={"taskId": "load", "message": "gave up"})))
    path = tmp_path / "ix.duckdb"
    with ExecutionIndex(path) as index:
        assert index.sync(bootstrap, topic) == 3
        shown = index.show(eid[:8])
        assert shown is not None and "documentError" not in shown
        assert shown["taskRuns"] == TASK_RUNS and shown["logs"] == LOGS
        assert shown["logsDropped"] == 2 and shown["state"] == "FAILED"
        assert [r["state"] for r in shown["runs"]] == ["FAILED"]
        other = index.show("g" * 32)
        assert other is not None and other["logs"] == [] and other["taskRuns"] == []
    # a later process, without syncing: the broker of the last sync is remembered
    with ExecutionIndex(path) as index:
        shown = index.show(eid)
        assert shown is not None and shown["logs"] == LOGS
    # a broker that cannot be reached: the summary, and why the document is missing
    with ExecutionIndex(path, bootstrap="127.0.0.1:1") as index:
        shown = index.show(eid)
        assert shown is not None and shown["state"] == "FAILED" and shown["logs"] == []
        assert "127.0.0.1:1" in shown["documentError"]


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="waxflow")
    add_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def test_cli_show_renders_logs_by_level(bootstrap: str, new_topic: Callable[..., str],
                                        tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    topic = new_topic()
    eid = "c0ffee" + "0" * 26
    produce(Producer({"bootstrap.servers": bootstrap}), topic,
            (eid, doc(eid, "FAILED", 7, taskRuns=TASK_RUNS, logs=LOGS, logsDropped=2,
                      error={"taskId": "load", "message": "gave up"})))
    common = ("--bootstrap", bootstrap, "--topic-log", topic,
              "--index", str(tmp_path / "cli.duckdb"))
    assert run_cli("executions", "show", eid[:8], *common) == 0
    out = capsys.readouterr().out
    assert "connecting to inventory" in out and "retrying" in out
    assert "gave up: HTTP 503 [final]" in out  # rich markup in a message is shown as text
    assert "2 more dropped" in out and "load #2" in out
    assert run_cli("executions", "show", eid[:8], "--level", "warn", *common) == 0
    out = capsys.readouterr().out
    assert "connecting to inventory" not in out and "retrying" in out and "[final]" in out
    assert run_cli("executions", "show", eid, "--level", "ERROR", "--format", "json",
                   *common) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [line["message"] for line in shown["logs"]] == ["gave up: HTTP 503 [final]"]
    assert shown["taskRuns"][0]["attempts"][1]["error"] == "HTTP 503"
    with pytest.raises(SystemExit):
        run_cli("executions", "show", eid, "--level", "loud", *common)
    assert "unknown log level" in capsys.readouterr().err


def test_incremental_sync_between_appends(bootstrap: str, new_topic: Callable[..., str],
                                          tmp_path: Path, reader: str) -> None:
    """Documents appended between syncs (and during one, by a writer that keeps going) all
    land, each execution once, at its latest state."""
    topic = new_topic(partitions=3)
    producer = Producer({"bootstrap.servers": bootstrap})
    ids = [f"{i:032x}" for i in range(300)]
    path = tmp_path / "ix.duckdb"
    with ExecutionIndex(path) as index:
        produce(producer, topic, *[(i, doc(i, "RUNNING", n % 60)) for n, i in enumerate(ids)])
        assert index.sync(bootstrap, topic) == 300
        assert index.count() == {"RUNNING": 300}
        # the terminal documents of the first half, and 100 new executions
        produce(producer, topic, *[(i, doc(i, "SUCCESS", n % 60)) for n, i in
                                   enumerate(ids[:150])],
                *[(f"{i:032x}", doc(f"{i:032x}", "RUNNING", 1)) for i in range(300, 400)])
        assert index.sync(bootstrap, topic) == 250
        assert index.count() == {"RUNNING": 250, "SUCCESS": 150}

        stop = threading.Event()

        def write() -> None:
            n = 0
            while not stop.is_set():
                produce(producer, topic, *[(i, doc(i, "FAILED", 0)) for i in
                                           ids[150 + n:155 + n]])
                n += 5
                if n >= 150:
                    return

        writer = threading.Thread(target=write)
        writer.start()
        syncs = 0
        while writer.is_alive():
            index.sync(bootstrap, topic)
            syncs += 1
        writer.join()
        index.sync(bootstrap, topic)
        assert syncs >= 1
        assert index.count() == {"RUNNING": 100, "SUCCESS": 150, "FAILED": 150}
        assert len({r["id"] for r in index.list(limit=1000)}) == 400
        assert sum(index.positions(topic).values()) == 300 + 250 + 150
        assert index.sync(bootstrap, topic) == 0
