"""A batch of log records gives the execution index the same rows, runs and counts as the
same records ingested one at a time: the bulk path leaves out the documents a later record
of their key supersedes (same execution, same run) and must not change any answer by it."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

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


def _dump(ix: ExecutionIndex, *, first_of_runs: bool = True) -> dict[str, Any]:
    db = ix._db
    runs = ("*" if first_of_runs
            else "execution_id, run_id, last_state, last_us, last_offset")
    return {
        "executions": db.execute("SELECT * EXCLUDE (key_id) FROM executions"
                                 " ORDER BY id").fetchall(),
        "keys": db.execute("SELECT e.id, k.\"key\" FROM executions e JOIN record_keys k"
                           " USING (key_id) ORDER BY e.id").fetchall(),
        "runs": db.execute(f"SELECT {runs} FROM runs ORDER BY ALL").fetchall(),
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
        # one at a time, a run's first document is forgotten once a later one replaced it
        want = _dump(one, first_of_runs=False)
    with ExecutionIndex(tmp_path / "batch.duckdb") as ix:
        assert ix.ingest_batch(LOG, records) == singly
        got = _dump(ix)
        left_out = ix._db.execute("SELECT n FROM d_dropped").fetchone()
    assert left_out is not None and left_out[0] > 10  # superseded documents were left out
    # the comparison is not vacuous: executions with several runs, superseded documents
    assert len(records) - singly < len(records) // 4
    assert want["runs"] and len(want["executions"]) < singly // 2
    with ExecutionIndex(tmp_path / "batch.duckdb") as ix:
        assert _dump(ix, first_of_runs=False) == want
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
        assert _dump(ix, first_of_runs=False) == want
