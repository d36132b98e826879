"""duckdb.Load and duckdb.Query on a real DuckDB file, from batch files in real storage; the
split of a batch into the rows that fit one table and the rejects, which every loader shares."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from pydantic import ValidationError

import waxflow.connectors.bigquery
import waxflow.connectors.duckdb
import waxflow.connectors.snowflake  # (registers the warehouse tasks)
from tests.task_helpers import FakeContext, parse_task
from waxflow.connectors.bigquery import shape_rows
from waxflow.connectors.storage import Storage, read_records
from waxflow.connectors.tabular import META_COLUMNS, split_rows, split_table
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


@pytest.mark.parametrize("threads", [1, 2])
def test_connect_runs_duckdb_on_the_threads_asked(db: str, threads: int) -> None:
    with waxflow.connectors.duckdb.connect(db, threads=threads) as con:
        assert con.execute("select current_setting('threads')").fetchone() == (threads,)


def test_a_load_keeps_the_batch_order(tmp_path: Path, db: str) -> None:
    uri, _ = Storage(str(tmp_path / "storage")).put_records(
        "exec-2.ion", [record(i) for i in range(5000)])
    assert load(uri, db)["rows"] == 5000
    rows = query(db, "select _offset from raw.events order by rowid")["rows"]
    assert [r["_offset"] for r in rows] == list(range(5000))


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


# --- records that do not fit the table (onReject) ---------------------------------------------

def odd(i: int, value: Any) -> dict[str, Any]:
    """Record ``i`` of the batch with ``value`` as its value."""
    return {**record(i), "value": value}


NOT_OBJECTS = {2: [1, 2], 5: "text", 7: 42}


def mixed_batch(tmp_path: Path, name: str = "exec-mixed.ion") -> str:
    """10 records, 3 of which (offsets 2, 5, 7) are JSON but not objects."""
    records = [odd(i, NOT_OBJECTS[i]) if i in NOT_OBJECTS else record(i) for i in range(10)]
    uri, _ = Storage(str(tmp_path / "storage")).put_records(name, records)
    return uri


def test_split_sets_aside_values_that_are_not_objects() -> None:
    records = [odd(i, NOT_OBJECTS[i]) if i in NOT_OBJECTS else record(i) for i in range(10)]
    split = split_rows(records)
    assert split.table.column("_offset").to_pylist() == [0, 1, 3, 4, 6, 8, 9]
    assert split.table.column_names == ["id", "name", *META_COLUMNS]  # no `value` column
    assert [(r.position, r.reason.split(",")[0]) for r in split.rejects] == [
        (2, "value is a JSON array"), (5, "value is a JSON string"),
        (7, "value is a JSON number")]
    assert split.total == 10
    assert [split.position(i) for i in range(7)] == [0, 1, 3, 4, 6, 8, 9]
    entries = split.rejected_records("file:///unused")  # the decoded records are kept
    assert [(e["offset"], e["value"]) for e in entries] == [(2, [1, 2]), (5, "text"), (7, 42)]
    assert all(e["topic"] == "events" and "not an object" in e["reason"] for e in entries)


def test_split_of_mostly_scalars_keeps_the_value_column_and_sets_objects_aside() -> None:
    records = [odd(i, f"s{i}") for i in range(4)] + [record(4)] + [odd(5, None)]
    split = split_rows(records)
    assert split.table.column("value").to_pylist() == ["s0", "s1", "s2", "s3", None]
    assert [(r.position, "most of the batch's values are not objects" in r.reason)
            for r in split.rejects] == [(4, True)]
    # only scalars (or tombstones): nothing is set aside
    assert split_rows([odd(i, i) for i in range(3)] + [odd(3, None)]).rejects == []


def test_split_sets_aside_fields_whose_type_differs_from_most_records() -> None:
    records = [record(i, amount=i) for i in range(7)]
    records += [record(7, amount="lots"), record(8, amount=2 ** 70), record(9, amount=1.5)]
    split = split_rows(records)
    assert split.table.column("amount").to_pylist() == [0, 1, 2, 3, 4, 5, 6, 1.5]
    assert [(r.position, r.reason) for r in split.rejects] == [
        (7, "field 'amount': string does not fit the column's type double (from the batch's "
            "other records)"),
        (8, "field 'amount': an integer beyond 64 bits")]
    # nested values: the struct type of most records wins; a tie goes to the earliest record
    nested = [record(i, at={"n": i}) for i in range(3)] + [record(3, at={"n": "x"})]
    assert [r.position for r in split_rows(nested).rejects] == [3]
    tie = [record(0, v="a"), record(1, v=1)]
    assert [r.position for r in split_rows(tie).rejects] == [1]
    # both at once: positions stay those of the batch file
    both = [record(0, v=1), odd(1, "x"), record(2, v=2), record(3, v="y"), record(4, v=3)]
    split = split_rows(both)
    assert [r.position for r in split.rejects] == [1, 3]
    assert split.table.column("_offset").to_pylist() == [0, 2, 4]


def test_a_bulk_stored_batch_is_not_checked_record_by_record(tmp_path: Path) -> None:
    from waxflow.connectors import jsonbatch, storage

    raws = [("events", 0, i, b"k", json.dumps({"id": i}).encode(), None, ())
            for i in range(5)]
    bulk = jsonbatch.encode(raws)
    assert bulk is not None
    uri = Storage(str(tmp_path / "storage")).put_data("bulk.ion", bulk.data, bulk.table)
    split = split_table(uri)
    assert split.table is bulk.table and split.rejects == [] and split.positions is None
    storage._RECENT.clear()  # another process: one pyarrow parse of the file, still no rows()
    assert split_table(uri).table.equals(bulk.table)


def test_load_sets_aside_records_that_are_not_objects(tmp_path: Path, db: str) -> None:
    uri = mixed_batch(tmp_path)
    task = parse_task({"id": "load", "type": "duckdb.Load", "from": uri, "database": db,
                       "table": "raw.events"})
    ctx = FakeContext()
    out = task.run(ctx)
    assert (out["rows"], out["rejected"]) == (7, 3)
    assert out["rejectsUri"] == uri.removesuffix(".ion") + ".load.rejects.ion"
    assert [r["_offset"] for r in query(db, "select _offset from raw.events "
                                            "order by _offset")["rows"]] == [0, 1, 3, 4, 6, 8, 9]
    rejects = list(read_records(out["rejectsUri"]))
    assert [(r["topic"], r["partition"], r["offset"], r["value"]) for r in rejects] == [
        ("events", 2, 2, [1, 2]), ("events", 2, 5, "text"), ("events", 1, 7, 42)]
    assert all("not an object" in r["reason"] for r in rejects)
    assert [level for level, text in ctx.logs if "3 of 10 records" in text] == ["WARN"]
    # a replay writes the same rejects file again (MERGE: the 7 rows once)
    again = load(uri, db, mode="MERGE")
    assert (again["rows"], again["replaced"], again["rejected"]) == (7, 7, 3)
    assert again["rejectsUri"] == out["rejectsUri"]
    assert count(db) == 7


def test_on_reject_fail_loads_nothing(tmp_path: Path, db: str) -> None:
    uri = mixed_batch(tmp_path)
    with pytest.raises(TaskFailure) as info:
        load(uri, db, onReject="FAIL")
    message = str(info.value)
    assert message.startswith("duckdb.Load load: 3 of 10 records do not fit the table "
                              "(events/2@2: value is a JSON array, not an object")
    assert message.endswith("onReject is FAIL: nothing was loaded")
    assert (uri.removesuffix(".ion") + ".load.rejects.ion") in message
    assert query(db, "select count(*) as n from information_schema.tables "
                     "where table_name = 'events'", "ONE")["row"]["n"] == 0


def test_values_the_existing_column_cannot_take_are_set_aside(tmp_path: Path,
                                                               db: str) -> None:
    query(db, "create schema raw; create table raw.events (id integer, name varchar, "
              "seen timestamp)", "NONE")
    store = Storage(str(tmp_path / "storage"))
    # `id` is a string in every record (one Arrow type): DuckDB casts "7", not "seven"
    values = [{"id": "7", "name": "a", "seen": "2024-05-01 10:00:00"},
              {"id": "seven", "name": "b"},
              {"id": "8", "name": "c", "seen": "not a time"},
              {"id": "99999999999", "name": "d"},
              {"id": None, "name": "e"}]
    uri, _ = store.put_records("typed.ion", [odd(i, v) for i, v in enumerate(values)])
    out = load(uri, db)
    assert (out["rows"], out["rejected"]) == (2, 3)
    assert query(db, "select id, name from raw.events order by name")["rows"] == [
        {"id": 7, "name": "a"}, {"id": None, "name": "e"}]
    rejects = list(read_records(out["rejectsUri"]))
    assert [(r["offset"], r["reason"]) for r in rejects] == [
        (1, "field 'id': a VARCHAR value that the table's INTEGER column cannot take"),
        (2, "field 'seen': a VARCHAR value that the table's TIMESTAMP column cannot take"),
        (3, "field 'id': a VARCHAR value that the table's INTEGER column cannot take")]
    with pytest.raises(TaskFailure, match="3 of 5 records do not fit"):
        load(uri, db, onReject="FAIL")
    assert count(db) == 2  # rolled back


def test_a_bulk_batch_the_existing_table_cannot_take_is_split_in_sql(tmp_path: Path,
                                                                       db: str) -> None:
    from waxflow.connectors import jsonbatch

    query(db, "create table t (id integer, name varchar)", "NONE")
    ids = ["1", "two", "3"]  # one Arrow type (string): the batch is stored in bulk
    raws = [("events", 0, 40 + i, b"k", json.dumps({"id": v, "name": "x"}).encode(), None, ())
            for i, v in enumerate(ids)]
    bulk = jsonbatch.encode(raws)
    assert bulk is not None
    uri = Storage(str(tmp_path / "storage")).put_data("bulk.ion", bulk.data, bulk.table)
    out = load(uri, db, table="t")
    assert (out["rows"], out["rejected"]) == (2, 1)
    assert query(db, "select id from t order by id")["rows"] == [{"id": 1}, {"id": 3}]
    (reject,) = read_records(out["rejectsUri"])  # read back from the batch file
    assert (reject["offset"], reject["value"]) == (41, {"id": "two", "name": "x"})


def test_snowflake_fail_is_decided_before_connecting(tmp_path: Path) -> None:
    task = parse_task({"id": "sf", "type": "snowflake.Load", "from": mixed_batch(tmp_path),
                       "table": "t", "account": "a", "user": "u", "host": "127.0.0.1",
                       "port": 9, "onReject": "FAIL"})
    with pytest.raises(TaskFailure, match=r"^snowflake.Load sf: 3 of 10 records do not fit"):
        task.run(FakeContext())


def test_bigquery_schema_casts_set_aside_the_rows_that_cannot_be_cast() -> None:
    from google.cloud.bigquery import SchemaField

    table = pa.table({"id": ["1", "x", "3"], "at": ["2024-05-01T00:00:00Z", None, "never"],
                      "n": [1, 2, 3]})
    schema = [SchemaField("id", "INTEGER"), SchemaField("at", "TIMESTAMP"),
              SchemaField("n", "INTEGER")]
    shaped, bad = shape_rows(table, schema, drop_unknown=False)
    assert shaped.column("id").to_pylist() == [1]
    assert bad == {1: "field 'id': its value cannot be read as INTEGER",
                   2: "field 'at': its value cannot be read as TIMESTAMP"}
    assert shape_rows(table.select(["n"]), schema, drop_unknown=False)[1] == {}
    with pytest.raises(TaskFailure, match="not in the schema"):  # not about values: raised
        shape_rows(table, schema[:1], drop_unknown=False)
