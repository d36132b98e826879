"""duckdb.Load and duckdb.Query on a real DuckDB file, from batch files in real storage."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydantic import ValidationError

import waxflow.connectors.bigquery
import waxflow.connectors.duckdb
import waxflow.connectors.snowflake  # noqa: F401  (registers the warehouse tasks)
from tests.task_helpers import FakeContext, parse_task
from waxflow.connectors.storage import Storage
from waxflow.tasks import TaskFailure


def record(i: int, **value: Any) -> dict[str, Any]:
    return {"key": f"k{i}", "value": {"id": i, "name": f"n{i}", **value}, "topic": "events",
            "partition": i % 3, "offset": i, "timestamp": 1_700_000_000_000 + i,
            "headers": {}}


@pytest.fixture
def batch(tmp_path: Path) -> str:
    uri, count = Storage(str(tmp_path / "storage")).put_records(
        "exec-1.ion", [record(i) for i in range(50)])
    assert count == 50
    return uri


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "wh" / "warehouse.duckdb")


def load(uri: str, db: str, **props: Any) -> dict[str, Any]:
    task = parse_task({"id": "load", "type": "duckdb.Load", "from": "{{ trigger.uri }}",
                       "database": db, "table": "raw.events", **props})
    out: dict[str, Any] = task.run(FakeContext({"trigger": {"uri": uri}}))
    return out


def query(db: str, sql: str, fetch: str = "ALL") -> dict[str, Any]:
    task = parse_task({"id": "q", "type": "duckdb.Query", "database": db, "sql": sql,
                       "fetch": fetch})
    out: dict[str, Any] = task.run(FakeContext())
    return out


def count(db: str, table: str = "raw.events") -> int:
    return int(query(db, f"select count(*) as n from {table}", "ONE")["row"]["n"])


def test_append_twice_loads_twice(batch: str, db: str) -> None:
    assert load(batch, db)["rows"] == 50
    assert load(batch, db)["rows"] == 50
    assert count(db) == 100
    cols = query(db, "select column_name from information_schema.columns "
                     "where table_name = 'events' order by ordinal_position")["rows"]
    assert [c["column_name"] for c in cols] == ["id", "name", "_topic", "_partition", "_offset",
                                                "_timestamp", "_key"]


def test_merge_twice_loads_once(batch: str, db: str) -> None:
    first = load(batch, db, mode="MERGE")
    second = load(batch, db, mode="MERGE")
    assert (first["rows"], first["replaced"]) == (50, 0)
    assert (second["rows"], second["replaced"]) == (50, 50)
    assert count(db) == 50
    keys = query(db, "select count(distinct (_topic, _partition, _offset)) as n "
                     "from raw.events", "ONE")
    assert keys["row"]["n"] == 50


def test_merge_on_business_key_keeps_last_record(tmp_path: Path, db: str) -> None:
    store = Storage(str(tmp_path / "storage"))
    first, _ = store.put_records("a.ion", [record(i) for i in range(3)])
    updates = [record(10, status="x") | {"value": {"id": 1, "name": "old"}},
               record(11) | {"value": {"id": 1, "name": "new"}}]
    second, _ = store.put_records("b.ion", updates)
    load(first, db, mode="MERGE", mergeKeys=["id"])
    out = load(second, db, mode="MERGE", mergeKeys=["id"])
    assert (out["rows"], out["replaced"]) == (1, 1)
    rows = query(db, "select id, name from raw.events order by id")["rows"]
    assert rows == [{"id": 0, "name": "n0"}, {"id": 1, "name": "new"}, {"id": 2, "name": "n2"}]


def test_merge_key_missing_from_batch_fails(batch: str, db: str) -> None:
    with pytest.raises(TaskFailure, match=r"merge key.*nope"):
        load(batch, db, mode="MERGE", mergeKeys=["nope"])


def test_without_create_table_a_missing_table_fails_with_duckdb_message(batch: str,
                                                                        db: str) -> None:
    with pytest.raises(TaskFailure, match=r"duckdb.Load load: Catalog Error.*events"):
        load(batch, db, createTable=False)


def test_failed_load_leaves_nothing(tmp_path: Path, batch: str, db: str) -> None:
    query(db, "create schema raw; create table raw.events (id integer, name varchar, "
              "_topic varchar, _partition integer, _offset bigint not null, "
              "_timestamp bigint, _key varchar, check (_offset < 40))", "NONE")
    with pytest.raises(TaskFailure, match="Constraint Error"):
        load(batch, db)
    assert count(db) == 0


def test_empty_batch_loads_nothing(tmp_path: Path, db: str) -> None:
    uri, _ = Storage(str(tmp_path / "storage")).put_records("empty.ion", [])
    assert load(uri, db)["rows"] == 0


def test_missing_file_fails_naming_it(tmp_path: Path, db: str) -> None:
    uri = (tmp_path / "gone.ion").as_uri()
    with pytest.raises(TaskFailure, match=r"gone\.ion does not exist"):
        load(uri, db)


def test_concurrent_loads_in_one_process_are_serialized(batch: str, db: str) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            load(batch, db)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(db) == 300


def test_connection_is_closed_after_each_run(batch: str, db: str) -> None:
    load(batch, db)
    # another handle with a different configuration only opens when none is left open
    con = duckdb.connect(db, read_only=True)
    try:
        assert con.execute("select count(*) from raw.events").fetchone() == (50,)
    finally:
        con.close()


def test_default_database_comes_from_env(batch: str, db: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_DUCKDB", db)
    task = parse_task({"id": "load", "type": "duckdb.Load", "from": batch, "table": "t"})
    assert task.run(FakeContext())["database"] == db
    assert count(db, "t") == 50


def test_query_outputs(batch: str, db: str) -> None:
    load(batch, db)
    one = query(db, "select id, name, date '2024-01-02' as d, 1.5::decimal(4,2) as x "
                    "from raw.events where id = 7", "ONE")
    assert one == {"row": {"id": 7, "name": "n7", "d": "2024-01-02", "x": 1.5}, "size": 1}
    none = query(db, "select * from raw.events where id < 0", "ONE")
    assert none == {"row": None, "size": 0}
    many = query(db, "select id from raw.events where id < 3 order by id")
    assert many == {"rows": [{"id": 0}, {"id": 1}, {"id": 2}], "size": 3}
    assert query(db, "create table t2 as select 1 as a; insert into t2 values (2)", "NONE") == {}
    assert query(db, "select sum(a) as s from t2", "ONE")["row"] == {"s": 3}
    same = query(db, "select 2.00::decimal(4,2) as n, '\\x01\\x02'::blob as b", "ONE")
    assert same["row"] == {"n": 2, "b": "AQI="}  # as bigquery.Query and snowflake.Query give


def test_query_renders_sql(batch: str, db: str) -> None:
    load(batch, db)
    task = parse_task({"id": "q", "type": "duckdb.Query", "database": db, "fetch": "ONE",
                       "sql": "select count(*) as n from raw.events where id < {{ limit }}"})
    assert task.run(FakeContext({"limit": 5}))["row"] == {"n": 5}


def test_bad_sql_fails_with_duckdb_message(db: str) -> None:
    with pytest.raises(TaskFailure) as info:
        query(db, "selec 1")
    assert str(info.value).startswith("duckdb.Query q: Parser Error: syntax error")
    with pytest.raises(TaskFailure, match="Catalog Error: Table with name nowhere"):
        query(db, "select * from nowhere")


def test_table_names_are_quoted(batch: str, db: str) -> None:
    out = load(batch, db, table='raw."my events"')
    assert out["rows"] == 50
    assert count(db, 'raw."my events"') == 50
    with pytest.raises(TaskFailure, match="not a valid"):
        load(batch, db, table="a..b")


def test_new_fields_add_columns_and_all_null_fields_wait_for_a_type(tmp_path: Path,
                                                                     db: str) -> None:
    store = Storage(str(tmp_path / "storage"))
    first, _ = store.put_records("a.ion", [record(i, note=None) for i in range(3)])
    second, _ = store.put_records("b.ion", [record(i, note="hi", vip=True) for i in range(3, 5)])
    assert load(first, db)["rows"] == 3  # `note` is NULL everywhere: no column yet
    assert load(second, db)["rows"] == 2
    rows = query(db, "select id, note, vip from raw.events order by id")["rows"]
    assert rows[0] == {"id": 0, "note": None, "vip": None}
    assert rows[-1] == {"id": 4, "note": "hi", "vip": True}
    third, _ = store.put_records("c.ion", [record(9, extra=1)])
    with pytest.raises(TaskFailure, match=r"does not have a column.*extra"):
        load(third, db, addColumns=False)
    assert count(db) == 5


@pytest.mark.parametrize(("kind", "keys", "ok"), [
    ("duckdb.Load", ["id", "ID"], True),
    ("duckdb.Load", ["id", "id"], False),
    ("bigquery.Load", ["id", "id"], False),
    ("snowflake.Load", ["id", "ID"], False),  # Snowflake folds plain names to upper case
])
def test_merge_keys_must_be_distinct(kind: str, keys: list[str], ok: bool) -> None:
    props = {"id": "load", "type": kind, "from": "file:///b.ion", "mergeKeys": keys,
             "table": "t", "destinationTable": "d.t", "account": "a", "user": "u"}
    if kind != "snowflake.Load":
        del props["account"], props["user"]
    del props["destinationTable" if kind != "bigquery.Load" else "table"]
    if ok:
        assert parse_task(props).mergeKeys == keys
    else:
        with pytest.raises(ValidationError, match="merge keys must be distinct"):
            parse_task(props)
