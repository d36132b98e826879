"""A batch of log records gives the execution index the same rows, runs and counts as the
same records ingested one at a time: the bulk path leaves out the documents a later record
of their key supersedes (same execution, same run) and must not change any answer by it."""

from __future__ import annotations

import itertools
import json
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from waxflow.recovery import index as index_module
from waxflow.recovery.index import ExecutionIndex

LOG = "waxflow.executions"
Record = tuple[int, int, bytes | None, bytes | None, int | None]


def _records(seed: int) -> list[Record]:
    """Several documents per execution in log order (offsets grow per partition): RUNNING
    then a terminal state, replays under a new run, a few records keyed otherwise than
    their document's id, documents without an id (the key stands for it), values that are
    JSON but no object, tombstones and keys without a value."""
    rng = random.Random(seed)
    per_execution: list[list[tuple[int, bytes | None, bytes | None]]] = []
    for n in range(36):
        docs: list[tuple[int, bytes | None, bytes | None]] = []
        per_execution.append(docs)
        eid = f"{rng.getrandbits(128):032x}"
        key: bytes | None = eid.encode()
        for step in range(rng.randrange(1, 6)):
            run = "r2" if step >= 3 and n % 3 == 0 else "r1"
            state = "RUNNING" if step % 3 == 0 else rng.choice(["SUCCESS", "FAILED"])
            doc: dict[str, Any] = {
                "id": eid, "namespace": "shop", "flowId": f"f{n % 3}", "state": state,
                "terminal": state != "RUNNING", "runId": run,
                "startDate": f"2026-11-25T10:{n % 60:02d}:{step:02d}+00:00",
                "endDate": None if state == "RUNNING" else "2026-11-25T11:00:00+00:00",
                "trigger": {"type": "kafka.RealtimeTrigger", "topic": "orders",
                            "partition": 0, "offset": n, "key": f"cust-{n % 7}",
                            "offsets": {"orders/0": [n, n + 3]} if n % 11 == 0 else None},
                "error": {"taskId": "t", "message": "boom"} if state == "FAILED" else None,
            }
            pick = rng.random()
            if pick < 0.05:
                del doc["id"]  # the key is the id
            elif pick < 0.08:
                doc["id"] = f"{rng.getrandbits(128):032x}"  # keyed otherwise than its id
            elif pick < 0.10:
                doc["runId"] = 7  # a number where text is expected
            value: bytes | None = json.dumps(doc).encode()
            if rng.random() < 0.04:
                value = rng.choice([b"[1, 2]", b"3", b'"text"', None])
            if rng.random() < 0.03:
                key = None
            docs.append((n % 2, key, value))  # an execution's documents in one partition
    # executions interleaved as in the log: each one's documents stay in order
    docs = []
    while any(per_execution):  # interleaved, each execution's documents in order
        docs.append(rng.choice([d for d in per_execution if d]).pop(0))
    records: list[Record] = []
    offsets = [0, 0]
    for i, (part, key, value) in enumerate(docs):
        records.append((part, offsets[part], key, value, 1_795_000_000_000 + i))
        offsets[part] += 1
    return records


def _dump(ix: ExecutionIndex) -> dict[str, Any]:
    db = ix._db
    return {
        "executions": db.execute("SELECT * EXCLUDE (key_id) FROM executions"
                                 " ORDER BY id").fetchall(),
        "keys": db.execute("SELECT e.id, k.\"key\" FROM executions e JOIN record_keys k"
                           " USING (key_id) ORDER BY e.id").fetchall(),
        "runs": db.execute("SELECT * FROM runs ORDER BY ALL").fetchall(),
        "ranges": db.execute("SELECT * FROM batch_ranges ORDER BY ALL").fetchall(),
        "flows": ix.flows(),
        "counts": ix.count(),
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_a_batch_indexes_as_its_records_one_by_one(tmp_path: Path, seed: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    records = _records(seed)
    with ExecutionIndex(tmp_path / "one.duckdb") as one:
        singly = sum(one.ingest(p, o, k, v, log_topic=LOG, timestamp_ms=t)
                     for p, o, k, v, t in records)
        want = _dump(one)
    with ExecutionIndex(tmp_path / "batch.duckdb") as ix:
        assert ix.ingest_batch(LOG, records) == singly
        got = _dump(ix)
        left_out = ix._db.execute("SELECT n FROM d_dropped").fetchone()
    assert left_out is not None and left_out[0] > 10  # superseded documents were left out
    # the comparison is not vacuous: executions with several runs, superseded documents
    assert len(records) - singly < len(records) // 4
    assert want["runs"] and len(want["executions"]) < singly // 2
    with ExecutionIndex(tmp_path / "batch.duckdb") as ix:
        assert _dump(ix) == want
    # every document decoded (none left out as superseded): the very same index
    whole = index_module._Batch.table
    monkeypatch.setattr(index_module._Batch, "table",
                        lambda self: whole(self).drop_columns(["sup"]))
    with ExecutionIndex(tmp_path / "every.duckdb") as ix:
        assert ix.ingest_batch(LOG, records) == singly
        assert _dump(ix) == got
    # and in two batches split anywhere
    monkeypatch.undo()
    cut = len(records) // 3
    with ExecutionIndex(tmp_path / "two.duckdb") as ix:
        assert ix.ingest_batch(LOG, records[:cut]) + ix.ingest_batch(LOG, records[cut:]) \
            == singly
        assert _dump(ix) == want


@pytest.mark.parametrize("seed", [3, 4])
def test_batches_decoded_elsewhere_index_as_records_one_by_one(tmp_path: Path,
                                                               seed: int) -> None:
    """The reader processes' path: batches decoded on another DuckDB connection (as a
    reader process does, :func:`_decode_into`) and handed over as Arrow through an IPC
    file give the same index as the records ingested one at a time."""
    records = _records(seed)
    with ExecutionIndex(tmp_path / "one.duckdb") as one:
        singly = sum(one.ingest(p, o, k, v, log_topic=LOG, timestamp_ms=t)
                     for p, o, k, v, t in records)
        want = _dump(one)
    reader = duckdb.connect()
    cuts = [0, len(records) // 4, len(records) // 2, len(records)]
    with ExecutionIndex(tmp_path / "handed.duckdb") as ix:
        read = 0
        for lo, hi in itertools.pairwise(cuts):
            batch = index_module._Batch()
            for part, off, key, value, ts in records[lo:hi]:
                if value is not None:
                    batch.add(part, off, key, value, ts)
            decoded = index_module._decode_into(reader, batch.table())
            path = tmp_path / f"batch-{lo}.arrow"
            with pa.OSFile(str(path), "wb") as sink, \
                    pa.ipc.new_file(sink, decoded.schema) as writer:
                writer.write_table(decoded)
            read += ix._write(LOG, index_module._load(str(path)), {0: hi, 1: hi})
        assert read == singly
        assert not path.exists()  # the index removed the handed-over file
        assert ix.positions(LOG) == {0: len(records), 1: len(records)}
        assert _dump(ix) == want


def test_a_run_keeps_where_it_began_however_it_is_synced(tmp_path: Path) -> None:
    """Synced one document at a time (a small sync), in batches that split a run, or in
    one batch (its superseded documents left out), an execution's earlier runs keep where
    they began: their first document's offset (the order of ``show()["runs"]``) and start
    date, not those of the run's last document."""
    eid = "e" * 32

    def rec(off: int, state: str, run: str, start: str | None) -> Record:
        doc = {"id": eid, "namespace": "shop", "flowId": "f", "state": state,
               "terminal": state != "RUNNING", "runId": run, "startDate": start}
        return (0, off, eid.encode(), json.dumps(doc).encode(), 1_795_000_000_000 + off)

    t1, t2, t3 = ("2026-11-25T16:00:00+00:00", "2026-11-25T16:05:00+00:00",
                  "2026-11-25T16:09:00+00:00")
    records = [rec(0, "RUNNING", "r1", t1), rec(1, "RETRYING", "r1", t2),
               rec(2, "FAILED", "r1", t2), rec(3, "RUNNING", "r2", None),
               rec(4, "SUCCESS", "r2", t2), rec(5, "RUNNING", "r3", t3)]
    us = {t: int(datetime.fromisoformat(t).timestamp()) * 1_000_000 for t in (t1, t2)}
    # (run, first start, last state, first offset, last offset)
    expected = [("r1", us[t1], "FAILED", 0, 2), ("r2", us[t2], "SUCCESS", 3, 4)]
    splits: dict[str, list[list[Record]]] = {
        "one at a time": [[r] for r in records], "one batch": [records],
        "split runs": [records[:2], records[2:4], records[4:]],
    }
    for how, batches in splits.items():
        with ExecutionIndex(tmp_path / f"{how}.duckdb") as ix:
            for batch in batches:
                ix.ingest_batch(LOG, batch)
            got = [(r[1], r[2], r[3], r[5], r[6]) for r in ix._db.execute(
                "SELECT * FROM runs ORDER BY first_offset").fetchall()]
            assert got == expected, how
            [row] = ix.list()
            assert row["runs"] == 3 and row["runId"] == "r3", how
