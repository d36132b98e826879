"""The ``mongodb.*`` tasks (Kestra's ``io.kestra.plugin.mongodb``) against a
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

import waxflow.connectors.mongodb  # registers mongodb.*; its client cache is cleared below
from tests.ferretdb_server import PASSWORD, FerretServer, ferretdb  # noqa: F401
from tests.task_helpers import FakeContext, parse_task
from waxflow.connectors.storage import Storage, read_records
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


# ------------------------------------------------------------ Update, Delete, Bulk
def _task(uri: str, database: str, kind: str, **props: Any) -> Any:
    return parse_task({"id": kind.lower(), "type": f"io.kestra.plugin.mongodb.{kind}",
                       "connection": {"uri": uri}, "database": database,
                       "collection": "items", **props})


def test_update_one_many_and_replace(ferretdb: FerretServer,  # noqa: F811
                                     db: tuple[str, Any]) -> None:
    name, handle = db
    oid = ObjectId("60930c39a982931c20ef6cd6")
    handle.items.insert_many([{"_id": oid, "k": "a", "tags": []},
                              {"k": "b", "n": 1}, {"k": "b", "n": 2}])
    one = _task(ferretdb.uri, name, "Update", filter={"k": "{{ trigger.value }}"},
                document={"$set": {"tags": ["blue", "green"]}})
    out = one.run(_ctx(trigger={"value": "a"}))
    assert out == {"upsertedId": None, "wasAcknowledged": True, "matchedCount": 1,
                   "modifiedCount": 1}
    # a $set replayed leaves the same document: matched, not modified
    assert one.run(_ctx(trigger={"value": "a"}))["modifiedCount"] == 0
    assert handle.items.find_one({"_id": oid})["tags"] == ["blue", "green"]

    many = _task(ferretdb.uri, name, "Update", operation="UPDATE_MANY",
                 filter='{"k": "b"}', document='{"$set": {"seen": true}}')
    assert many.run(_ctx())["modifiedCount"] == 2
    assert handle.items.count_documents({"seen": True}) == 2

    replace = _task(ferretdb.uri, name, "Update", operation="REPLACE_ONE",
                    filter='{"_id": {"$oid": "60930c39a982931c20ef6cd6"}}',
                    document={"name": "John Doe", "city": "Paris"})
    assert replace.run(_ctx())["modifiedCount"] == 1
    assert handle.items.find_one({"_id": oid}) == {"_id": oid, "name": "John Doe",
                                                   "city": "Paris"}


def test_an_increment_replays_unless_the_filter_guards_it(
        ferretdb: FerretServer, db: tuple[str, Any]) -> None:  # noqa: F811
    """$inc is not idempotent (documented, not hidden): run twice for one execution it
    counts twice; the documented guard (the execution id recorded by the same update and
    refused by the filter) makes the replay match nothing."""
    name, handle = db
    handle.items.insert_many([{"_id": "plain", "n": 0}, {"_id": "guarded", "n": 0}])
    plain = _task(ferretdb.uri, name, "Update", filter={"_id": "plain"},
                  document={"$inc": {"n": 1}})
    plain.run(_ctx("rec-1"))
    plain.run(_ctx("rec-1"))
    assert handle.items.find_one({"_id": "plain"})["n"] == 2
    guarded = _task(ferretdb.uri, name, "Update",
                    filter={"_id": "guarded", "applied": {"$ne": "{{ execution.id }}"}},
                    document={"$inc": {"n": 1}, "$addToSet": {"applied": "{{ execution.id }}"}})
    assert guarded.run(_ctx("rec-1"))["modifiedCount"] == 1
    assert guarded.run(_ctx("rec-1"))["matchedCount"] == 0  # the replay
    assert guarded.run(_ctx("rec-2"))["modifiedCount"] == 1
    assert handle.items.find_one({"_id": "guarded"})["n"] == 2


def test_an_update_document_of_the_wrong_kind_is_refused(
        ferretdb: FerretServer, db: tuple[str, Any]) -> None:  # noqa: F811
    name, handle = db
    with pytest.raises(ValueError, match=r"an update holds update operators such as `\$set"):
        _task(ferretdb.uri, name, "Update", filter={"k": 1}, document={"k": 2})
    with pytest.raises(ValueError, match=r"a replacement is the new document: .*\(\$set\)"):
        _task(ferretdb.uri, name, "Update", operation="REPLACE_ONE", filter={"k": 1},
              document={"$set": {"k": 2}})
    handle.items.insert_one({"k": 1})
    text = _task(ferretdb.uri, name, "Update", filter={"k": 1}, document='{"k": 2}')
    with pytest.raises(TaskFailure, match=r"^`document`: an update holds update operators"):
        text.run(_ctx())
    assert handle.items.find_one({"k": 1}) is not None


def test_delete_one_and_many(ferretdb: FerretServer, db: tuple[str, Any]) -> None:  # noqa: F811
    name, handle = db
    handle.items.insert_many([{"city": "Paris"}, {"city": "Paris"}, {"city": "Lyon"},
                              {"_id": "x", "city": "Nice"}])
    by_id = _task(ferretdb.uri, name, "Delete", filter={"_id": "x"})
    assert by_id.run(_ctx()) == {"deletedCount": 1, "wasAcknowledged": True}
    assert by_id.run(_ctx())["deletedCount"] == 0  # a replay deletes nothing more
    many = _task(ferretdb.uri, name, "Delete", operation="DELETE_MANY",
                 filter='{"city": "Paris"}')
    assert many.run(_ctx())["deletedCount"] == 2
    assert [d["city"] for d in handle.items.find()] == ["Lyon"]


def _bulk_file(name: str, lines: list[str]) -> str:
    return Storage().put_data(name, ("\n".join(lines) + "\n").encode())


def test_bulk_runs_every_kind_in_order_and_a_replay_inserts_nothing_twice(
        ferretdb: FerretServer, db: tuple[str, Any]) -> None:  # noqa: F811
    name, handle = db
    handle.items.insert_many([{"city": "Bengaluru"}, {"city": "Bengaluru"},
                              {"_id": "r", "v": 0}])
    uri = _bulk_file("ops.ion", [
        '{"insertOne": {"document": {"firstName": "John", "city": "Paris"}}}',
        '{"insertOne": {"firstName": "Ravi", "city": "Mumbai"}}',
        '{"insertOne": {"document": {"_id": {"$oid": "60930c39a982931c20ef6cd6"}, "n": 1}}}',
        '{"updateOne": {"filter": {"firstName": "John"}, "update": {"$set": {"vip": true}}}}',
        '{"updateMany": {"filter": {"city": {"$in": ["Paris", "Mumbai"]}}, '
        '"update": {"$set": {"country": "x"}}}}',
        '{"replaceOne": {"filter": {"_id": "r"}, "replacement": {"v": 1}}}',
        '{"replaceOne": {"filter": {"_id": "new"}, "replacement": {"v": 2}, "upsert": true}}',
        '{"deleteMany": {"filter": {"city": "Bengaluru"}}}',
        '{"deleteOne": {"filter": {"_id": "missing"}}}',
    ])
    bulk = _task(ferretdb.uri, name, "Bulk", **{"from": "{{ outputs.w.uri }}", "chunk": 4})
    ctx = _ctx("rec-1", outputs={"w": {"uri": uri}})
    out = bulk.run(ctx)
    assert out == {"size": 9, "insertedCount": 3, "matchedCount": 4, "modifiedCount": 4,
                   "deletedCount": 2, "upsertedCount": 1, "alreadyInserted": 0}
    docs = list(handle.items.find())
    assert len(docs) == 5 and not any(d.get("city") == "Bengaluru" for d in docs)
    john = handle.items.find_one({"firstName": "John"})
    assert john["vip"] is True and john["country"] == "x"
    assert handle.items.find_one({"_id": "new"}) == {"_id": "new", "v": 2}

    again = bulk.run(_ctx("rec-1", outputs={"w": {"uri": uri}}))
    assert again["alreadyInserted"] == 3 and again["insertedCount"] == 0
    assert handle.items.count_documents({}) == 5
    # another execution is another set of documents
    assert bulk.run(_ctx("rec-2", outputs={"w": {"uri": uri}}))["insertedCount"] == 2
    assert handle.items.count_documents({"firstName": "Ravi"}) == 2


def test_bulk_refuses_a_bad_record_before_writing_and_names_a_refused_one(
        ferretdb: FerretServer, db: tuple[str, Any]) -> None:  # noqa: F811
    name, handle = db
    bad = _bulk_file("bad.ion", ['{"insertOne": {"a": 1}}',
                                 '{"updateOne": {"filter": {"a": 1}, "update": {"a": 2}}}'])
    with pytest.raises(TaskFailure, match=r"^`from` record 1\.updateOne: an update holds"):
        _task(ferretdb.uri, name, "Bulk", **{"from": bad}).run(_ctx())
    odd = _bulk_file("odd.ion", ['{"insertOne": {"a": 1}, "deleteOne": {"filter": {}}}'])
    with pytest.raises(TaskFailure, match=r"^`from` record 0: expected one of insertOne, "):
        _task(ferretdb.uri, name, "Bulk", **{"from": odd}).run(_ctx())
    assert handle.items.count_documents({}) == 0

    handle.items.insert_one({"_id": "k", "a": "stored"})
    half = _bulk_file("half.ion", ['{"insertOne": {"a": 1}}',
                                   '{"insertOne": {"_id": "k", "a": "other"}}',
                                   '{"insertOne": {"a": 3}}'])
    task = _task(ferretdb.uri, name, "Bulk", **{"from": half, "chunk": 1})
    for _ in range(2):  # the retry skips the first insert, fails at the same record
        with pytest.raises(TaskFailure) as err:
            task.run(_ctx("rec-1"))
        assert str(err.value) == (f"bulk write to {name}.items: `from` record 1 (insertOne): "
                                  "a different document with _id 'k' is already there")
    assert handle.items.count_documents({"a": 1}) == 1
    assert handle.items.count_documents({"a": 3}) == 0


def test_load_inserts_every_record_once_across_replays(
        ferretdb: FerretServer, db: tuple[str, Any]) -> None:  # noqa: F811
    name, handle = db
    uri = _bulk_file("load.ion", ['{"sku": "a", "n": 1}', '{"sku": "b", "n": 2}',
                                  '{"sku": "c", "n": 3}'])
    load = _task(ferretdb.uri, name, "Load", **{"from": "{{ outputs.w.uri }}", "chunk": 2})
    out = load.run(_ctx("rec-1", outputs={"w": {"uri": uri}}))
    assert out == {"size": 3, "insertedCount": 3, "matchedCount": 0, "modifiedCount": 0,
                   "deletedCount": 0, "upsertedCount": 0, "alreadyInserted": 0}
    assert sorted(d["n"] for d in handle.items.find()) == [1, 2, 3]
    again = load.run(_ctx("rec-1", outputs={"w": {"uri": uri}}))  # a replay
    assert again["insertedCount"] == 0 and again["alreadyInserted"] == 3
    assert handle.items.count_documents({}) == 3


def test_load_id_key_becomes_the_id_and_a_bad_record_writes_nothing(
        ferretdb: FerretServer, db: tuple[str, Any]) -> None:  # noqa: F811
    name, handle = db
    uri = _bulk_file("ids.ion", ['{"oid": "60930c39a982931c20ef6cd6", "v": 1}',
                                 '{"oid": "order-7", "v": 2}'])
    _task(ferretdb.uri, name, "Load", **{"from": uri, "idKey": "oid"}).run(_ctx())
    assert handle.items.find_one({"_id": ObjectId("60930c39a982931c20ef6cd6")}) == {
        "_id": ObjectId("60930c39a982931c20ef6cd6"), "v": 1}
    assert handle.items.find_one({"_id": "order-7"}) == {"_id": "order-7", "v": 2}
    kept = _bulk_file("kept.ion", ['{"oid": "k-1", "v": 3}'])
    _task(ferretdb.uri, name, "Load", **{"from": kept, "idKey": "oid",
                                         "removeIdKey": False}).run(_ctx())
    assert handle.items.find_one({"_id": "k-1"}) == {"_id": "k-1", "oid": "k-1", "v": 3}

    missing = _bulk_file("missing.ion", ['{"oid": "x-1"}', '{"other": 1}'])
    with pytest.raises(TaskFailure, match=r"^`from` record 1 has no field 'oid' \(`idKey`\)$"):
        _task(ferretdb.uri, name, "Load", **{"from": missing, "idKey": "oid"}).run(_ctx())
    assert handle.items.count_documents({"_id": "x-1"}) == 0  # checked before writing
    clash = _bulk_file("clash.ion", ['{"oid": "order-7", "v": 99}'])
    with pytest.raises(TaskFailure, match="a different document with _id 'order-7'"):
        _task(ferretdb.uri, name, "Load", **{"from": clash, "idKey": "oid"}).run(_ctx())


def test_aggregate_rows_and_stored(ferretdb: FerretServer,  # noqa: F811
                                   db: tuple[str, Any]) -> None:
    name, handle = db
    handle.items.insert_many([{"cat": "a", "amount": 5, "status": "active"},
                              {"cat": "a", "amount": 7, "status": "active"},
                              {"cat": "b", "amount": 1, "status": "active"},
                              {"cat": "b", "amount": 100, "status": "gone"}])
    pipeline = [{"$match": {"status": "{{ inputs.status }}"}},
                {"$group": {"_id": "$cat", "total": {"$sum": "$amount"}}},
                {"$sort": {"total": -1}}]
    ctx = _ctx(inputs={"status": "active"})
    out = _task(ferretdb.uri, name, "Aggregate", pipeline=pipeline).run(ctx)
    assert out == {"rows": [{"_id": "a", "total": 12}, {"_id": "b", "total": 1}], "size": 2}
    stored = _task(ferretdb.uri, name, "Aggregate", pipeline=pipeline, store="STORE").run(ctx)
    assert stored["size"] == 2
    assert list(read_records(stored["uri"])) == out["rows"]
    as_text = _task(ferretdb.uri, name, "Aggregate",
                    pipeline='[{"$match": {"cat": "b"}}, {"$count": "n"}]').run(ctx)
    assert as_text["rows"] == [{"n": 2}]
    with pytest.raises(TaskFailure, match=r"^`pipeline` must be a list of stages, got dict$"):
        _task(ferretdb.uri, name, "Aggregate", pipeline={"$match": {}}).run(ctx)
    with pytest.raises(TaskFailure, match=r"^aggregate on d\w+\.items: OperationFailure"):
        _task(ferretdb.uri, name, "Aggregate", pipeline=[{"$nope": 1}]).run(ctx)


def test_a_replayed_load_finds_what_it_inserted_in_a_few_requests(
        ferretdb: FerretServer, db: tuple[str, Any]) -> None:  # noqa: F811
    """Each insert already there used to cost a bulkWrite request of its own."""
    from pymongo import monitoring

    class Commands(monitoring.CommandListener):
        def __init__(self) -> None:
            self.names: list[str] = []

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.database_name == name:
                self.names.append(event.command_name)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    name, handle = db
    uri = _bulk_file("many.ion", [f'{{"n": {i}}}' for i in range(300)])
    load = _task(ferretdb.uri, name, "Load", **{"from": uri})
    assert load.run(_ctx("rec-1"))["insertedCount"] == 300
    seen = Commands()
    monitoring.register(seen)
    waxflow.connectors.mongodb._client.cache_clear()  # a client that reports to `seen`
    again = load.run(_ctx("rec-1"))
    assert again["alreadyInserted"] == 300 and again["insertedCount"] == 0
    assert seen.names.count("insert") == 1 and seen.names.count("find") <= 2, seen.names
    assert handle.items.count_documents({}) == 300
