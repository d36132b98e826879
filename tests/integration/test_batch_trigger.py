"""kafka.Trigger on the real broker: batches stored as ION, cut by size and time, and a
commit rule that survives SIGKILL (the batch is cut in the source; only emitted batches'
offsets are ever committed)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.flow_helpers import (
    LogWatcher,
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce,
    produce_json,
    run_flow,
    runs_by_id,
    start_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets
from waxflow.connectors.storage import read_records

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

FLOW = """
id: batches
namespace: tests
triggers:
  - id: t
    type: kafka.Trigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    interval: {interval}
{extra}
tasks:
  - id: work
    type: core.Python
    function: "tests.flow_funcs:slow"
    args: {{ms: {ms}}}
  - id: info
    type: core.Set
    values: {{n: "{{{{ trigger.messagesCount }}}}"}}
"""


def _covered(docs: list[dict[str, Any]]) -> dict[int, set[int]]:
    """Offsets per partition inside SUCCESS batch executions (from their offset ranges)."""
    out: dict[int, set[int]] = {}
    for d in docs:
        if d["state"] != "SUCCESS":
            continue
        for key, (first, last) in d["trigger"]["offsets"].items():
            out.setdefault(int(key.rsplit("/", 1)[1]), set()).update(range(first, last + 1))
    return out


def _setup(bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, n: int,
           interval: str = "PT2S", extra: str = "", ms: int = 1
           ) -> tuple[str, str, str, Path, dict[str, str]]:
    topic, group, log_topic = new_topic(3), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    produce_json(bootstrap, topic, [{"id": i} for i in range(n)], partitions=3)
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group, interval=interval,
                                            extra=extra, ms=ms))
    env = flow_env(bootstrap, log_topic, PYTHONPATH=str(REPO),
                   WAXFLOW_STORAGE=str(tmp_path / "storage"))
    return topic, group, log_topic, flow, env


def test_batches_are_stored_as_ion_and_cut_by_max_records(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, group, log_topic, flow, env = _setup(bootstrap, new_topic, tmp_path, 1000,
                                                extra="    maxRecords: 300")
    res = run_flow(flow, env, idle=2)
    assert res.returncode == 0, res.stderr[-2000:]
    docs = list(latest_by_id(log_documents(bootstrap, log_topic)).values())
    assert all(d["state"] == "SUCCESS" for d in docs)
    counts = sorted(d["trigger"]["messagesCount"] for d in docs)
    assert max(counts) <= 300 and sum(counts) == 1000
    stored = [r for d in docs for r in read_records(d["trigger"]["uri"])]
    assert sorted(r["value"]["id"] for r in stored) == list(range(1000))
    assert {r["topic"] for r in stored} == {topic}
    assert committed(bootstrap, group, topic, 3) == end_offsets(bootstrap, topic, 3)
    info = [next(t for t in d["taskRuns"] if t["taskId"] == "info") for d in docs]
    assert sorted(t["outputs"]["n"] for t in info) == counts


def test_max_duration_cuts_a_batch(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """interval is long (1 h) and maxRecords absent: only maxDuration (or idle) can cut."""
    topic, _group, log_topic, flow, env = _setup(bootstrap, new_topic, tmp_path, 0,
                                                interval="PT1H",
                                                extra="    maxDuration: PT1S")
    proc = start_flow(flow, env)
    watcher = LogWatcher(bootstrap, log_topic)
    try:
        produce_json(bootstrap, topic, [{"id": -1}])  # warm-up: the job is up once it ran
        watcher.wait_for(1, timeout=120)
        for i in range(6):  # a record every 1.5 s: maxDuration 1 s closes each batch
            produce_json(bootstrap, topic, [{"id": i}], partitions=None)
            time.sleep(1.5)
        time.sleep(1.5)
    finally:
        watcher.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    docs = list(latest_by_id(log_documents(bootstrap, log_topic)).values())
    # interval is 1 h, no maxRecords, no idle stop: only maxDuration can cut these batches
    # (a stall of the loaded machine may merge two of them, never all six)
    assert len(docs) - 1 >= 2, "maxDuration did not cut the open batch"
    assert sum(d["trigger"]["messagesCount"] for d in docs) == 7


def test_kill_during_batches_loses_nothing(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Records arrive while batches are open, so every epoch ends with records buffered in
    the source: a scheme that committed read (not emitted) positions loses them here."""
    n = 10_000
    topic, group, log_topic, flow, env = _setup(bootstrap, new_topic, tmp_path, 0,
                                                interval="PT1S", ms=1200)

    def feed() -> None:
        for start in range(0, n, 250):
            produce_json(bootstrap, topic, [{"id": i} for i in range(start, start + 250)],
                         partitions=3)
            # ~32 s of arrivals: each restart after a SIGKILL first waits up to 6 s for the
            # dead instance's lock session to end, and must still see records come in
            time.sleep(0.8)

    feeder = threading.Thread(target=feed)
    feeder.start()
    watcher = LogWatcher(bootstrap, log_topic)
    try:
        # kill while records are buffered, then twice while a batch is executing (its
        # RUNNING document is out, its terminal one is not): that batch must replay
        for more, in_flight in ((1, False), (1, True), (1, True)):
            proc = start_flow(flow, env, "-w", "2")
            try:
                watcher.wait_for(len(watcher.done) + more, timeout=120, proc=proc)
                if in_flight:
                    watcher.wait_running(timeout=60)
                    time.sleep(0.2)
                else:
                    time.sleep(0.5)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            mid = committed(bootstrap, group, topic, 3)
            covered = _covered(log_documents(bootstrap, log_topic))
            for p, off in mid.items():
                missing = set(range(max(off, 0))) - covered.get(p, set())
                assert not missing, f"partition {p} committed {off}, {len(missing)} not done"
    finally:
        watcher.close()
        feeder.join()
    final = run_flow(flow, env, "-w", "2", idle=3, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    ends = end_offsets(bootstrap, topic, 3)
    assert sum(ends.values()) == n
    assert committed(bootstrap, group, topic, 3) == ends
    covered = _covered(log_documents(bootstrap, log_topic))
    for p, end in ends.items():
        assert covered.get(p, set()) >= set(range(end))
    # one history per batch: a batch killed mid-work was replayed under the same id, so no
    # execution is left RUNNING, and the killed runs show as earlier runs of it
    all_docs = log_documents(bootstrap, log_topic)
    latest = latest_by_id(all_docs)
    assert {d["state"] for d in latest.values()} == {"SUCCESS"}
    runs = runs_by_id(all_docs)
    assert any(len(r) > 1 for r in runs.values()), "no batch was replayed"
    # every record is in some stored batch file of a SUCCESS execution
    docs = list(latest.values())
    ids = {r["value"]["id"] for d in docs for r in read_records(d["trigger"]["uri"])}
    assert ids == set(range(n))


LOAD_FLOW = """
id: bulk
namespace: tests
triggers:
  - id: t
    type: kafka.Trigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    interval: PT1S
    maxRecords: 100000
tasks:
  - id: load
    type: duckdb.Load
    from: "{{{{ trigger.uri }}}}"
    database: {db}
    table: events
"""


def test_clean_json_batches_bulk_encoded_bad_ones_decoded_per_record(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """A batch of clean JSON objects is stored as Ion text (JSON lines) from the raw bytes;
    a batch holding a malformed record falls back to the per-record decode (binary ION,
    the record SKIPPED); both load the same rows and column types."""
    import duckdb

    from waxflow.connectors.storage import ION_BVM

    topic, group, log_topic = new_topic(3), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    db = tmp_path / "bulk.duckdb"
    flow = write_flow(tmp_path, LOAD_FLOW.format(topic=topic, group=group, db=db))
    env = flow_env(bootstrap, log_topic, WAXFLOW_STORAGE=str(tmp_path / "storage"))
    doc = {"day": "2024-05-01", "seen_at": "2024-05-01 10:00:00", "amount": 1.5, "tags": ["a"]}
    produce_json(bootstrap, topic, [{"id": i, **doc} for i in range(300)], partitions=3)
    res = run_flow(flow, env, idle=2)
    assert res.returncode == 0, res.stderr[-2000:]
    values: list[bytes | None] = [json.dumps({"id": i, **doc}).encode() for i in range(300, 600)]
    values[150] = b'{"id": 450, "broken'
    produce(bootstrap, topic, values, partitions=3)
    res = run_flow(flow, env, idle=2)
    assert res.returncode == 0, res.stderr[-2000:]

    docs = sorted(latest_by_id(log_documents(bootstrap, log_topic)).values(),
                  key=lambda d: d["startDate"])
    assert [d["state"] for d in docs] == ["SUCCESS", "SUCCESS"]
    assert [d["trigger"]["skippedCount"] for d in docs] == [0, 1]
    heads = [Path(d["trigger"]["uri"].removeprefix("file://")).read_bytes()[:4] for d in docs]
    assert heads[0].startswith(b"{") and heads[1] == ION_BVM
    stored = [r for d in docs for r in read_records(d["trigger"]["uri"])]
    assert sorted(r["value"]["id"] for r in stored) == sorted(set(range(600)) - {450})
    with duckdb.connect(str(db), read_only=True) as con:
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns"
                                 " WHERE table_name = 'events'").fetchall())
        rows = con.execute("SELECT count(*), count(DISTINCT id), min(day), max(seen_at) "
                           "FROM events").fetchone()
    assert types["day"] == "VARCHAR" and types["seen_at"] == "VARCHAR", types
    assert types["id"] == "BIGINT" and types["amount"] == "DOUBLE", types
    assert rows == (599, 599, "2024-05-01", "2024-05-01 10:00:00")
