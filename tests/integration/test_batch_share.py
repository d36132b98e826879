"""``kafka.Trigger`` with ``groupType: SHARE`` on the real broker (record lock 1 s): one
share-group delivery per batch, its records acknowledged by the batch execution's outcome.

The corpus flow 06 (Kestra's share-group Trigger example) runs with only its connection
details replaced; the other flows are the same trigger with a task that fails or names the
process. Records are produced in small producer batches: the broker acquires whole producer
batches (``max.poll.records`` is a soft limit). Each process logs its ack counts when it
stops.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from tests.flow_helpers import (
    created_log_topic,
    flow_env,
    log_documents,
    run_flow,
    runs_by_id,
    start_flow,
    write_flow,
)
from waxflow.connectors.storage import read_records

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "kestra_flows"
Coord = tuple[str, int, int]


@pytest.fixture(autouse=True)
def _storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Internal storage in the test's directory (the jobs inherit the environment)."""
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "storage"))


log_topic = created_log_topic


def produce_batches(bootstrap: str, topic: str, values: list[str], per_batch: int = 5
                    ) -> None:
    """Produce ``values`` in producer batches of at most ``per_batch`` records."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                  "batch.num.messages": per_batch})
    for v in values:
        p.produce(topic, value=v.encode())
    assert p.flush(30) == 0


def ack_summary(stderr: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for m in re.finditer(r"acks ACCEPT=(\d+) RELEASE=(\d+) REJECT=(\d+); ack errors=(\d+)",
                         stderr):
        for name, value in zip(("ACCEPT", "RELEASE", "REJECT", "errors"), m.groups(),
                               strict=True):
            total[name] += int(value)
    return total


def terminal_histories(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Terminal documents per execution id, in log order."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in docs:
        if d["terminal"]:
            out[d["id"]].append(d)
    return out


def stored(doc: dict[str, Any]) -> list[Coord]:
    """The records of a batch execution's file, as (topic, partition, offset)."""
    return [(r["topic"], r["partition"], r["offset"]) for r in read_records(doc["trigger"]["uri"])]


def successes_by_record(docs: list[dict[str, Any]]) -> dict[Coord, list[str]]:
    """Record -> the SUCCESS runs (execution id/run id) whose batch file holds it."""
    out: dict[Coord, list[str]] = defaultdict(list)
    for d in docs:
        if d["terminal"] and d["state"] == "SUCCESS":
            for coord in stored(d):
                out[coord].append(f"{d['id']}/{d['runId']}")
    return out


def batch_runners(bootstrap: str, log: str) -> set[str]:
    """The processes that ran a batch to SUCCESS so far (none while the new log topic has
    no leader yet)."""
    try:
        docs = log_documents(bootstrap, log)
    except KafkaException:
        return set()
    return {d["taskRuns"][0]["outputs"]["value"] for d in docs
            if d["terminal"] and d["state"] == "SUCCESS"}


def share_trigger_flow(tmp_path: Path, topic: str, group: str, tasks: str,
                       extra: str = "") -> Path:
    return write_flow(tmp_path, f"""\
id: batch-share
namespace: tests.share
triggers:
  - id: poll
    type: io.kestra.plugin.kafka.Trigger
    topic: {topic}
    groupId: {group}
    groupType: SHARE
{extra}tasks:
{tasks}""")


def test_06_each_record_in_exactly_one_success_batch(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    topic, group, log = new_topic(2), f"bs-{uuid.uuid4().hex[:8]}", log_topic(admin)
    values = [f"job-{i}" for i in range(40)]
    produce_batches(bootstrap, topic, values)
    text = (CORPUS / "06_plugin_trigger_share.yaml").read_text(encoding="utf-8")
    for old, new in {"localhost:9092": bootstrap, "topic: jobs": f"topic: {topic}",
                     "groupId: jobs-share": f"groupId: {group}"}.items():
        assert old in text
        text = text.replace(old, new)
    flow = write_flow(tmp_path, text, "06.yaml")

    res = run_flow(flow, flow_env(bootstrap, log, WAXFLOW_LOG_LEVEL="INFO"), idle=4)

    assert res.returncode == 0, res.stderr[-3000:]
    docs = log_documents(bootstrap, log)
    histories = terminal_histories(docs)
    assert histories and all([d["state"] for d in h] == ["SUCCESS"]
                             for h in histories.values()), histories
    assert {h[0]["trigger"]["type"] for h in histories.values()} == {"kafka.Trigger"}
    by_record = successes_by_record(docs)
    assert len(by_record) == 40 and all(len(v) == 1 for v in by_record.values())
    values_seen = sorted(r["value"] for h in histories.values()
                         for r in read_records(h[0]["trigger"]["uri"]))
    assert values_seen == sorted(values)
    for h in histories.values():  # the Log task wrote each batch's messagesCount
        assert f"] {h[0]['trigger']['messagesCount']}" in res.stderr
    acks = ack_summary(res.stderr)
    assert (acks["ACCEPT"], acks["RELEASE"], acks["REJECT"], acks["errors"]) == (40, 0, 0, 0)


def test_a_failed_batch_is_redelivered_under_the_same_id(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"bs-{uuid.uuid4().hex[:8]}", log_topic(admin)
    marks = tmp_path / "marks"
    marks.mkdir()
    flow = share_trigger_flow(tmp_path, topic, group, f"""\
  - id: work
    type: core.Python
    function: "tests.batch_share_funcs:fail_new_records"
    args: {{marks: "{marks}"}}
""")
    produce_batches(bootstrap, topic, [f"r{i}" for i in range(5)], per_batch=5)

    res = run_flow(flow, flow_env(bootstrap, log, PYTHONPATH=str(REPO),
                                  WAXFLOW_LOG_LEVEL="INFO"), idle=4, timeout=120)

    assert res.returncode == 0, res.stderr[-3000:]
    docs = log_documents(bootstrap, log)
    histories = terminal_histories(docs)
    # the five records were delivered together twice: one execution id, two runs
    assert len(histories) == 1, histories
    (exec_id, history), = histories.items()
    assert [d["state"] for d in history] == ["FAILED", "SUCCESS"], history
    assert "seen for the first time" in history[0]["error"]["message"]
    assert len(runs_by_id(docs)[exec_id]) == 2
    assert stored(history[1]) == [(topic, 0, o) for o in range(5)]
    assert history[1]["taskRuns"][0]["outputs"]["n"] == 5
    acks = ack_summary(res.stderr)
    assert (acks["ACCEPT"], acks["RELEASE"], acks["REJECT"], acks["errors"]) == (5, 5, 0, 0), \
        res.stderr[-3000:]


def test_a_batch_failing_at_every_delivery_is_rejected_at_max_deliveries(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"bs-{uuid.uuid4().hex[:8]}", log_topic(admin)
    flow = share_trigger_flow(tmp_path, topic, group, """\
  - {id: boom, type: core.Fail, errorMessage: "always fails"}
""", extra="    maxDeliveries: 3\n")
    produce_batches(bootstrap, topic, ["a", "b", "c"])

    # idle 6 s = six lock periods after the last delivery: a 4th delivery would show up
    res = run_flow(flow, flow_env(bootstrap, log, WAXFLOW_LOG_LEVEL="INFO"), idle=6,
                   timeout=120)

    assert res.returncode == 0, res.stderr[-3000:]
    histories = terminal_histories(log_documents(bootstrap, log))
    assert len(histories) == 1, histories
    (history,) = histories.values()
    assert [d["state"] for d in history] == ["FAILED"] * 3
    acks = ack_summary(res.stderr)
    assert (acks["ACCEPT"], acks["RELEASE"], acks["REJECT"], acks["errors"]) == (0, 6, 3, 0), \
        res.stderr[-3000:]


def test_two_processes_share_the_records_without_overlap(
        bootstrap: str, admin: AdminClient, new_topic: Callable[..., str],
        tmp_path: Path) -> None:
    topic, group, log = new_topic(1), f"bs-{uuid.uuid4().hex[:8]}", log_topic(admin)
    flow = share_trigger_flow(tmp_path, topic, group, """\
  - {id: who, type: core.Return, format: "{{ env.WAXFLOW_WORKER_NAME }}"}
  - {id: work, type: io.kestra.plugin.core.flow.Sleep, duration: PT0.1S}
""", extra="    maxRecords: 5\n")
    names = ("p0", "p1")
    procs = {name: start_flow(flow, flow_env(bootstrap, log, WAXFLOW_WORKER_NAME=name,
                                             WAXFLOW_LOG_LEVEL="INFO"), idle=8)
             for name in names}
    try:
        # trickle records until both processes ran a batch: both are in the group
        deadline = time.monotonic() + 90
        warm = 0
        while batch_runners(bootstrap, log) != set(names):
            assert time.monotonic() < deadline, "both processes never ran a batch"
            produce_batches(bootstrap, topic, [f"warm-{warm}"])
            warm += 1
            time.sleep(0.3)
        values = [f"job-{i}" for i in range(100)]
        produce_batches(bootstrap, topic, values)
        outs = {name: p.communicate(timeout=180) for name, p in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert {n: p.returncode for n, p in procs.items()} == dict.fromkeys(names, 0), \
        {n: o[1][-2000:] for n, o in outs.items()}

    docs = log_documents(bootstrap, log)
    by_record = successes_by_record(docs)
    twice = {c: v for c, v in by_record.items() if len(v) > 1}
    lock_warnings = sum(err.count("of the broker's record lock") for _, err in outs.values())
    assert not twice, f"records in two SUCCESS batches: {twice}; lock warnings {lock_warnings}"
    assert sorted(by_record) == [(topic, 0, o) for o in range(warm + 100)]
    work: Counter[str] = Counter()
    for d in docs:
        if d["terminal"] and d["state"] == "SUCCESS":
            values_in = [r["value"] for r in read_records(d["trigger"]["uri"])]
            work[d["taskRuns"][0]["outputs"]["value"]] += sum(
                1 for v in values_in if v.startswith("job-"))
            # maxRecords is max.poll.records: soft, the broker hands out whole producer
            # batches (of up to 5 here)
            assert d["trigger"]["messagesCount"] <= 10
    print(f"records per process: {dict(work)}")
    assert sum(work.values()) == 100 and set(work) == set(names), work
    acks = sum((ack_summary(err) for _, err in outs.values()), Counter())
    assert acks["ACCEPT"] == warm + 100 and acks["errors"] == 0, acks
