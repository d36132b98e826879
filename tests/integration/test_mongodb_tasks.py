"""``mongodb.InsertOne`` and ``mongodb.Find`` (Kestra's ``io.kestra.plugin.mongodb``) against a
real MongoDB-wire server: FerretDB with its SQLite backend and password authentication
(``tests/ferretdb_server.py``), read back with pymongo."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient

import waxflow.connectors.mongodb  # noqa: F401  (registers mongodb.*)
from tests.ferretdb_server import PASSWORD, FerretServer, ferretdb  # noqa: F401
from tests.task_helpers import FakeContext, parse_task
from waxflow.connectors.storage import read_records
from waxflow.tasks import TaskFailure

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "storage"))


@pytest.fixture
def db(ferretdb: FerretServer) -> Iterator[tuple[str, Any]]:  # noqa: F811
    """A fresh database name and a pymongo handle on it."""
    client: MongoClient[dict[str, Any]] = MongoClient(ferretdb.uri)
    name = f"d{uuid.uuid4().hex[:8]}"
    try:
        yield name, client[name]
    finally:
        client.drop_database(name)
        client.close()


def _ctx(exec_id: str = "e1", **extra: Any) -> FakeContext:
    return FakeContext({"flow": {"namespace": "n", "id": "f"}, "execution": {"id": exec_id},
                        **extra})


def _insert(uri: str, database: str, document: Any, **extra: Any) -> Any:
    return parse_task({"id": "ins", "type": "io.kestra.plugin.mongodb.InsertOne",
                       "connection": {"uri": uri}, "database": database,
                       "collection": "items", "document": document, **extra})


def test_insert_a_map_and_extended_json(ferretdb: FerretServer,  # noqa: F811
                                        db: tuple[str, Any]) -> None:
    name, handle = db
    out = _insert(ferretdb.uri, name, {"item_id": "a1", "n": 1}).run(_ctx())
    assert out["wasAcknowledged"] is True and out["alreadyInserted"] is False
    oid = "60930c39a982931c20ef6cd6"
    text = '{"_id": {"$oid": "%s"}, "name": "John", "at": {"$date": "2026-01-02T03:04:05Z"}}'
    out2 = _insert(ferretdb.uri, name, text % oid).run(_ctx("e2"))
    assert out2["insertedId"] == oid
    docs = {str(d["_id"]): d for d in handle.items.find()}
    assert docs[out["insertedId"]]["item_id"] == "a1"
    assert isinstance(docs[oid]["_id"], ObjectId)
    assert docs[oid]["at"].isoformat().startswith("2026-01-02T03:04:05")


def test_a_replay_inserts_nothing_twice(ferretdb: FerretServer,  # noqa: F811
                                        db: tuple[str, Any]) -> None:
    """The same execution (a replayed record) inserts the same derived _id once; another
    execution, or another iteration value, inserts its own."""
    name, handle = db
    task = _insert(ferretdb.uri, name, {"v": "{{ trigger.value }}"})
    trigger = {"value": "x", "timestamp": 1_767_323_045_000}
    first = task.run(_ctx("rec-1", trigger=trigger))
    again = task.run(_ctx("rec-1", trigger=trigger))
    assert again == {**first, "alreadyInserted": True}
    other = task.run(_ctx("rec-2", trigger=trigger))
    looped = task.run(_ctx("rec-2", trigger=trigger, taskrun={"value": "b"}))
    assert len({first["insertedId"], other["insertedId"], looped["insertedId"]}) == 3
    assert handle.items.count_documents({}) == 3
    # the ObjectId's time is the record's (seconds), as a server-made one's is its insert time
    assert ObjectId(first["insertedId"]).generation_time.timestamp() == 1_767_323_045

    # Kestra's behaviour, on request: a new _id each time
    plain = _insert(ferretdb.uri, name, {"v": 1}, idempotent=False)
    plain.run(_ctx("rec-9"))
    plain.run(_ctx("rec-9"))
    assert handle.items.count_documents({"v": 1}) == 2


def test_an_own_id_is_idempotent_only_for_the_same_document(
        ferretdb: FerretServer, db: tuple[str, Any]) -> None:  # noqa: F811
    name, _ = db
    _insert(ferretdb.uri, name, {"_id": "k1", "a": 1}).run(_ctx())
    assert _insert(ferretdb.uri, name, {"_id": "k1", "a": 1}).run(_ctx())["alreadyInserted"]
    with pytest.raises(TaskFailure, match=r"a different document with _id 'k1' is already"):
        _insert(ferretdb.uri, name, {"_id": "k1", "a": 2}).run(_ctx())


def test_errors_are_one_line_without_the_password(ferretdb: FerretServer,  # noqa: F811
                                                  db: tuple[str, Any]) -> None:
    name, _ = db
    wrong = ferretdb.uri.replace(PASSWORD, "not-the-password")
    with pytest.raises(TaskFailure) as err:
        _insert(wrong, name, {"a": 1}).run(_ctx())
    message = str(err.value)
    assert "\n" not in message and "Authentication failed" in message, message
    assert "not-the-password" not in message and PASSWORD not in message
    with pytest.raises(TaskFailure, match=r"^`document` is not \(Extended\) JSON"):
        _insert(ferretdb.uri, name, "{not json").run(_ctx())
    with pytest.raises(TaskFailure, match=r"^`document` must be a document \(a map\), got list"):
        _insert(ferretdb.uri, name, "[1, 2]").run(_ctx())


def test_find_rows_and_stored(ferretdb: FerretServer, db: tuple[str, Any]) -> None:  # noqa: F811
    name, handle = db
    handle.items.insert_many([{"n": i, "even": i % 2 == 0} for i in range(6)])
    find = parse_task({"id": "find", "type": "io.kestra.plugin.mongodb.Find",
                       "connection": {"uri": ferretdb.uri}, "database": name,
                       "collection": "items", "filter": {"even": True},
                       "projection": {"_id": 0, "n": 1}, "sort": '{"n": -1}', "limit": 2})
    assert find.run(_ctx()) == {"rows": [{"n": 4}, {"n": 2}], "size": 2}
    stored = parse_task({"id": "find", "type": "mongodb.Find", "store": True,
                         "connection": {"uri": ferretdb.uri}, "database": name,
                         "collection": "items", "filter": {"n": {"$gte": 4}}}).run(_ctx())
    rows = list(read_records(stored["uri"]))
    assert stored["size"] == 2 and sorted(r["n"] for r in rows) == [4, 5]
    assert all(isinstance(r["_id"], str) and len(r["_id"]) == 24 for r in rows)
