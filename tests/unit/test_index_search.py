"""The key-substring search of the execution index answers exactly as a plain scan of every
row does (``contains(record_key, text) OR starts_with(id, text)``), whichever way the index
finds the rows (by ``key_id`` from the table of distinct keys, or by scanning the keys)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from waxflow.recovery import index as index_module
from waxflow.recovery.index import ExecutionIndex

LOG = "waxflow.executions"
TEXTS = ["cust-0", "cust-01", "cust-017", "cust", "-", '"', "7", "17", "order-9", "a1",
         "0a", "ab", "abc", "zz-no-such", "12", "true", "{", "null"]
#: the texts no key nor id holds (every other text matches some rows)
NO_MATCH = {"zz-no-such", "null"}


def _doc(eid: str, *, run: str, state: str, start_s: int, key: Any) -> bytes:
    terminal = state != "RUNNING"
    start = f"2026-11-25T10:{start_s // 60:02d}:{start_s % 60:02d}+00:00"
    return json.dumps({
        "id": eid, "namespace": "shop", "flowId": "orders" if start_s % 2 else "refunds",
        "state": state, "terminal": terminal, "runId": run, "startDate": start,
        "endDate": start if terminal else None, "durationMs": 1.0 if terminal else None,
        "trigger": {"type": "kafka.RealtimeTrigger", "topic": "orders", "partition": 0,
                    "offset": start_s, "key": key, "timestamp": None, "offsets": None,
                    "messagesCount": None, "deliveryCount": None},
        "taskRuns": [], "error": None, "upstreamExecutionId": None, "labels": {},
    }).encode()


def _key(rng: random.Random) -> Any:
    pick = rng.random()
    if pick < 0.6:
        return f"cust-{rng.randrange(40):03d}"  # keys repeat across executions
    if pick < 0.75:
        return f"order-{rng.randrange(100_000)}"  # nearly unique
    if pick < 0.85:
        return rng.randrange(1000)  # a number: its JSON text
    if pick < 0.9:
        return rng.choice([True, {"o": rng.randrange(50)}])  # JSON text too
    return None


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[ExecutionIndex]:
    """An index fed in several batches: new executions, later documents of known ones
    (some changing state, some replays under a new run, a few changing their key), so the
    table of distinct keys grows across batches and rows are replaced."""
    rng = random.Random(14)
    ids = [(f"{rng.getrandbits(128):032x}" if i % 7 else f"x{i:031d}") for i in range(600)]
    ids += ["0a" * 16, "ab" + "0" * 30, "abc" + "1" * 29]
    keys = {eid: _key(rng) for eid in ids}
    offset = 0
    with ExecutionIndex(tmp_path / "index.duckdb") as ix:
        for round_ in range(4):
            batch: list[tuple[int, int, bytes | None, bytes | None, int | None]] = []
            for n, eid in enumerate(ids):
                if rng.random() < 0.5 and round_:
                    continue
                if rng.random() < 0.05:
                    keys[eid] = _key(rng)
                run = f"r{round_}" if rng.random() < 0.1 else "r0"
                state = rng.choice(["RUNNING", "SUCCESS", "FAILED"])
                batch.append((0, offset, eid.encode(),
                               _doc(eid, run=run, state=state, start_s=n % 3600,
                                    key=keys[eid]), None))
                offset += 1
            assert ix.ingest_batch(LOG, batch) == len(batch)
        yield ix


def _scan(ix: ExecutionIndex, text: str) -> list[str]:
    return [r[0] for r in ix._db.execute(
        "SELECT id FROM executions WHERE coalesce(contains(record_key, ?), false)"
        " OR starts_with(id, ?) ORDER BY start_us DESC NULLS LAST, log_offset DESC",
        [text, text]).fetchall()]


def _scan_counts(ix: ExecutionIndex, text: str) -> dict[str, int]:
    return {str(s): int(n) for s, n in ix._db.execute(
        "SELECT coalesce(state, '?'), count(*) FROM executions"
        " WHERE coalesce(contains(record_key, ?), false) OR starts_with(id, ?) GROUP BY 1",
        [text, text]).fetchall()}


@pytest.mark.parametrize(("key_ids", "dense_rows"), [(256, 10**9), (3, 10**9), (0, 10**9),
                                                     (256, 0)])
def test_search_answers_as_a_plain_scan(filled: ExecutionIndex, key_ids: int, dense_rows: int,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # how the index selects the rows of the matching keys: by their key_id literals
    # (256: for every text here), by literals or a join with the keys (3), by a join (0),
    # or (dense_rows 0: a page of many rows is found sooner so) by scanning the keys
    monkeypatch.setattr(index_module, "_KEY_IDS", key_ids)
    monkeypatch.setattr(index_module, "_DENSE_ROWS", dense_rows)
    for text in TEXTS:
        want = _scan(filled, text)
        assert bool(want) == (text not in NO_MATCH), text  # not a vacuous comparison
        got = [r["id"] for r in filled.list(text=text, limit=10_000)]
        assert got == want, text
        assert filled.count(text=text) == _scan_counts(filled, text), text
        paged = [r["id"] for page in range(0, len(want) + 20, 20)
                 for r in filled.list(text=text, limit=20, offset=page)]
        assert paged == want, text
        assert [r["id"] for r in filled.list(text=text, flow="orders", limit=10_000)] == [
            r["id"] for r in filled.list(text=text, limit=10_000) if r["flowId"] == "orders"]


def test_every_row_with_a_key_has_its_key_id(filled: ExecutionIndex) -> None:
    db = filled._db
    assert db.execute("SELECT count(*) FROM executions e LEFT JOIN record_keys k"
                      " ON k.key_id = e.key_id WHERE e.record_key IS DISTINCT FROM k.\"key\""
                      ).fetchone() == (0,)
    assert db.execute('SELECT count(*) - count(DISTINCT "key"), count(*) - count(DISTINCT'
                      " key_id) FROM record_keys").fetchone() == (0, 0)
