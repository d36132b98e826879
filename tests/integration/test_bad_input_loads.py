"""Bad input in a batch load on the real broker: kafka.Trigger → duckdb.Load with 10 JSON
records of which 3 are not objects (``[1,2]``, ``"text"``, ``42``).

``onReject: REJECTS_FILE`` (the default) loads the 7 objects, stores the 3 others with
their coordinates next to the batch file, ends the execution SUCCESS with ``rejected: 3``
and commits the batch. ``onReject: FAIL`` fails the execution and loads nothing; with
``onFailure: STOP`` the batch is not committed, and replays (same execution) once the flow
is changed back to the default.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.flow_helpers import (
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce,
    run_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets
from waxflow.connectors.storage import read_records

pytestmark = pytest.mark.integration

FLOW = """
id: bad-input
namespace: tests
triggers:
  - id: t
    type: kafka.Trigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    maxRecords: 10
    interval: PT10S
    onFailure: STOP
tasks:
  - id: load
    type: duckdb.Load
    from: "{{{{ trigger.uri }}}}"
    database: {db}
    table: orders
{extra}"""

#: record i → its value; 2, 5 and 7 are JSON but not objects
NOT_OBJECTS = {2: b"[1,2]", 5: b'"text"', 7: b"42"}
PARTITIONS = 2


def _produce_batch(bootstrap: str, topic: str) -> None:
    values = [NOT_OBJECTS.get(i, json.dumps({"id": i, "amount": i * 10}).encode())
              for i in range(10)]
    produce(bootstrap, topic, list(values), keys=[f"k{i}".encode() for i in range(10)],
            partitions=PARTITIONS)


def _coordinates(i: int) -> tuple[int, int]:
    """(partition, offset) of record i: produced round-robin over the partitions."""
    return i % PARTITIONS, i // PARTITIONS


def _setup(bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, extra: str = ""
           ) -> tuple[str, str, str, Path, Path, dict[str, str]]:
    topic, group, log = new_topic(PARTITIONS), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    db = tmp_path / "wh.duckdb"
    flow = write_flow(tmp_path, FLOW.format(topic=topic, group=group, db=db, extra=extra))
    _produce_batch(bootstrap, topic)
    env = flow_env(bootstrap, log, WAXFLOW_STORAGE=str(tmp_path / "storage"))
    return topic, group, log, db, flow, env


def _only_execution(bootstrap: str, log: str) -> dict[str, Any]:
    docs = list(latest_by_id(log_documents(bootstrap, log)).values())
    assert len(docs) == 1, [d["trigger"] for d in docs]
    return docs[0]


def _loaded(db: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("select id, _partition, _offset from orders order by id").fetchall()


def _assert_rejects_file(uri: str, batch_uri: str, topic: str) -> None:
    assert uri == batch_uri.removesuffix(".ion") + ".load.rejects.ion"  # next to the batch
    rejects = list(read_records(uri))  # in batch order: partitions interleave as consumed
    assert sorted((r["partition"], r["offset"], r["key"], r["value"]) for r in rejects) == [
        (*_coordinates(i), f"k{i}", json.loads(NOT_OBJECTS[i])) for i in (2, 5, 7)]
    assert {r["topic"] for r in rejects} == {topic}
    assert all("not an object" in r["reason"] for r in rejects)


def test_records_that_are_not_objects_go_to_the_rejects_file(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, group, log, db, flow, env = _setup(bootstrap, new_topic, tmp_path)

    res = run_flow(flow, env, idle=3, timeout=120)

    assert res.returncode == 0, res.stderr[-2000:]
    good = [i for i in range(10) if i not in NOT_OBJECTS]
    assert _loaded(db) == [(i, *_coordinates(i)) for i in good]
    doc = _only_execution(bootstrap, log)
    assert doc["state"] == "SUCCESS"
    assert doc["trigger"]["messagesCount"] == 10
    (load,) = [t for t in doc["taskRuns"] if t["taskId"] == "load"]
    assert load["state"] == "SUCCESS"
    assert (load["outputs"]["rows"], load["outputs"]["rejected"]) == (7, 3)
    _assert_rejects_file(load["outputs"]["rejectsUri"], doc["trigger"]["uri"], topic)
    assert committed(bootstrap, group, topic, PARTITIONS) == \
        end_offsets(bootstrap, topic, PARTITIONS) == {0: 5, 1: 5}


def test_on_reject_fail_fails_the_batch_and_loads_nothing(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, group, log, db, flow, env = _setup(bootstrap, new_topic, tmp_path,
                                              extra="    onReject: FAIL\n")

    res = run_flow(flow, env, idle=3, timeout=120)

    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "FAILED" in res.stderr and "Traceback" not in res.stderr
    doc = _only_execution(bootstrap, log)
    assert doc["state"] == "FAILED"
    assert doc["error"]["taskId"] == "load"
    message = doc["error"]["message"]
    assert "3 of 10 records do not fit the table" in message
    assert message.endswith("onReject is FAIL: nothing was loaded")
    rejects_uri = doc["trigger"]["uri"].removesuffix(".ion") + ".load.rejects.ion"
    assert rejects_uri in message  # written for the diagnosis, not loaded
    _assert_rejects_file(rejects_uri, doc["trigger"]["uri"], topic)
    if db.exists():
        with duckdb.connect(str(db), read_only=True) as con:
            assert con.execute("select count(*) from information_schema.tables "
                               "where table_name = 'orders'").fetchone() == (0,)
    before = committed(bootstrap, group, topic, PARTITIONS)
    assert all(o <= 0 for o in before.values()), before  # none, or the batch's start

    # back to the default: the uncommitted batch replays as the same execution and loads
    write_flow(tmp_path, flow.read_text().replace("    onReject: FAIL\n", ""))
    again = run_flow(flow, env, idle=3, timeout=120)

    assert again.returncode == 0, again.stderr[-2000:]
    assert len(_loaded(db)) == 7
    replayed = _only_execution(bootstrap, log)
    assert replayed["id"] == doc["id"] and replayed["state"] == "SUCCESS"
    (load,) = [t for t in replayed["taskRuns"] if t["taskId"] == "load"]
    assert load["outputs"]["rejected"] == 3 and load["outputs"]["rejectsUri"] == rejects_uri
    assert committed(bootstrap, group, topic, PARTITIONS) == {0: 5, 1: 5}
