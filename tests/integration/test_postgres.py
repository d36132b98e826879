"""PostgreSQL on a real server (tests/postgres_server.py): postgres.Load / Query / Upsert as
tasks, then flows on the real broker: batches loaded exactly once across SIGKILLs, per-record
upserts exactly once across SIGKILLs, a load that waits out a stopped server, and the
blueprint's email when a load fails."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import TypeAdapter

import waxflow.connectors.postgres as pg
from tests.flow_helpers import (
    LogWatcher,
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce_json,
    run_flow,
    start_flow,
    write_flow,
)
from tests.kafka_helpers import committed, end_offsets
from tests.postgres_server import PASSWORD, PostgresServer  # `postgres`: conftest.py
from tests.smtp_server import SmtpServer, self_signed, smtp_server  # noqa: F401  (fixture)
from tests.task_helpers import FakeContext, resolve_task_union
from waxflow.connectors.storage import Storage
from waxflow.tasks import TaskFailure

pytestmark = pytest.mark.integration


@functools.cache
def _tasks() -> TypeAdapter[Any]:
    return TypeAdapter(resolve_task_union())


def parse_task(data: dict[str, Any]) -> Any:
    """A task model from its YAML mapping (the task union is built once per module)."""
    return _tasks().validate_python(data)

FLOWS = Path(__file__).resolve().parents[2] / "dataflows" / "flows"
EVIL = "'); DROP TABLE x; --"


def record(i: int, **value: Any) -> dict[str, Any]:
    return {"key": f"k{i}", "value": {"id": i, "name": f"n{i}", **value}, "topic": "events",
            "partition": i % 3, "offset": i, "timestamp": 1_700_000_000_000 + i, "headers": {}}


def sql(server: PostgresServer, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(server.url, autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def ctx_for(uri: str = "", exec_id: str = "exec-1", **more: Any) -> FakeContext:
    return FakeContext({"trigger": {"uri": uri, **more}, "execution": {"id": exec_id},
                        "flow": {"namespace": "tests", "id": "pg"}})


def table_name() -> str:
    return f"t_{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ tasks on the server
@pytest.mark.parametrize("fmt", ["CSV", "BINARY"])
def test_load_merge_and_append_never_duplicate_on_replay(
        postgres: PostgresServer, tmp_path: Path, fmt: str) -> None:
    storage = Storage(str(tmp_path / "storage"))
    records = [record(i, tags={"n": i, "l": [1, 2]}, note="" if i % 2 else None,
                      blob=None) for i in range(200)]
    records.append({**record(7, name="last one wins"), "offset": 7})  # same key as 7
    uri, _ = storage.put_records("b1.ion", records)
    name = f"raw_{fmt.lower()}.{table_name()}"
    load = {"id": "load", "type": "postgres.Load", "from": "{{ trigger.uri }}",
            "url": postgres.url, "table": name, "format": fmt}
    first = parse_task({**load, "mode": "MERGE"}).run(ctx_for(uri))
    assert (first["rows"], first["inserted"], first["updated"]) == (200, 200, 0)
    again = parse_task({**load, "mode": "MERGE"}).run(ctx_for(uri))
    assert (again["inserted"], again["updated"]) == (0, 200)
    rows = sql(postgres, f"SELECT count(*), count(DISTINCT id), "
                         f"max(CASE WHEN id = 7 THEN name END), "
                         f"count(*) FILTER (WHERE note = ''), count(*) FILTER (WHERE note IS NULL),"
                         f" max((tags->>'n')::int) FROM {name}")
    assert rows == [(200, 200, "last one wins", 99, 101, 199)]  # the last 7 has no note
    types = dict(sql(postgres, "SELECT column_name, data_type FROM information_schema.columns "
                               "WHERE table_schema || '.' || table_name = %s", name))
    assert types["id"] == "bigint" and types["tags"] == "jsonb" and types["_topic"] == "text"
    # a batch with a new field extends the table
    uri2, _ = storage.put_records("b2.ion", [record(500, extra=1.5)])
    parse_task({**load, "mode": "MERGE"}).run(ctx_for(uri2, "exec-2"))
    assert sql(postgres, f"SELECT extra FROM {name} WHERE id = 500") == [(1.5,)]
    # APPEND: once per execution id (the ledger), whatever the replays
    appended = f"{name}_app"
    for exec_id in ("a", "a", "b"):
        out = parse_task({**load, "table": appended, "mode": "APPEND"}).run(
            ctx_for(uri, exec_id))
        assert out["skipped"] == (exec_id == "a" and out["rows"] == 0)
    assert sql(postgres, f"SELECT count(*) FROM {appended}") == [(2 * 201,)]


def test_merge_into_a_table_without_unique_index(
        postgres: PostgresServer, tmp_path: Path) -> None:
    name = table_name()
    sql(postgres, f"CREATE TABLE {name} (id BIGINT, name TEXT, _topic TEXT, _partition INT, "
                  f"_offset BIGINT, _timestamp BIGINT, _key TEXT)")
    uri, _ = Storage(str(tmp_path)).put_records("b.ion", [record(i) for i in range(50)])
    task = parse_task({"id": "load", "type": "postgres.Load", "from": "{{ trigger.uri }}",
                       "url": postgres.url, "table": name, "mergeKeys": ["id"]})
    task.run(ctx_for(uri))
    out = task.run(ctx_for(uri))
    assert (out["inserted"], out["updated"]) == (0, 50)
    assert sql(postgres, f"SELECT count(*), count(DISTINCT id) FROM {name}") == [(50, 50)]


def load_logs(ctx: FakeContext) -> list[str]:
    return [m for level, m in ctx.logs if " rows of " in m]


def test_merge_copies_unseen_keys_straight_in_and_merges_seen_ones(
        postgres: PostgresServer, tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "storage"))
    name = table_name()
    task = parse_task({"id": "load", "type": "postgres.Load", "from": "{{ trigger.uri }}",
                       "url": postgres.url, "table": name})

    def load(records: list[dict[str, Any]], exec_id: str) -> tuple[dict[str, Any], str]:
        uri, _ = storage.put_records(f"{exec_id}.ion", records)
        ctx = ctx_for(uri, exec_id)
        out = task.run(ctx)
        (logged,) = load_logs(ctx)
        return out, logged

    out, how = load([record(i) for i in range(200)], "e1")  # creates the table
    assert (out["inserted"], out["updated"]) == (200, 0) and "copied straight in" in how
    rows_before = dict(sql(postgres, f"SELECT id, xmin::text FROM {name}"))
    # offsets 100..299: 100..149 changed, 150..199 as they are, 200..299 new
    out, how = load([record(i, name=f"changed {i}" if i < 150 else f"n{i}")
                     for i in range(100, 300)], "e2")
    assert (out["inserted"], out["updated"]) == (100, 100) and "ON CONFLICT" in how
    assert sql(postgres, f"SELECT count(*), count(DISTINCT (_topic, _partition, _offset)), "
                         f"count(*) FILTER (WHERE name LIKE 'changed%') FROM {name}"
               ) == [(300, 300, 50)]
    rows_after = dict(sql(postgres, f"SELECT id, xmin::text FROM {name}"))
    # a row whose values are all unchanged is left as it was (not rewritten)
    assert [i for i in range(200) if rows_after[i] != rows_before[i]] == list(range(100, 150))
    # a replay of that batch: every key seen, nothing rewritten, nothing added
    out, how = load([record(i, name=f"changed {i}" if i < 150 else f"n{i}")
                     for i in range(100, 300)], "e2")
    assert (out["inserted"], out["updated"]) == (0, 200) and "ON CONFLICT" in how
    assert dict(sql(postgres, f"SELECT id, xmin::text FROM {name}")) == rows_after
    # later offsets again: straight in
    out, how = load([record(i) for i in range(300, 400)], "e3")
    assert (out["inserted"], out["updated"]) == (100, 0) and "copied straight in" in how
    assert sql(postgres, f"SELECT count(*), count(DISTINCT id) FROM {name}") == [(400, 400)]
    # the created table's unique constraint lists its integer keys first
    (index,) = sql(postgres, "SELECT pg_get_indexdef(indexrelid) FROM pg_index "
                             "WHERE indrelid = %s::regclass", name)
    assert "(_partition, _offset, _topic) NULLS NOT DISTINCT" in index[0]


def test_merge_rewrites_a_value_a_case_insensitive_collation_calls_equal(
        postgres: PostgresServer, tmp_path: Path) -> None:
    name = table_name()
    sql(postgres, "CREATE COLLATION IF NOT EXISTS ci (provider = icu, "
                  "locale = 'und-u-ks-level2', deterministic = false)")
    sql(postgres, f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, name TEXT COLLATE ci)")
    storage = Storage(str(tmp_path))
    task = parse_task({"id": "load", "type": "postgres.Load", "from": "{{ trigger.uri }}",
                       "url": postgres.url, "table": name, "mergeKeys": ["id"]})
    for i, text in enumerate(["abc", "ABC"]):
        uri, _ = storage.put_records(f"b{i}.ion", [{"value": {"id": 1, "name": text}}])
        task.run(ctx_for(uri, f"e{i}"))
    assert sql(postgres, f"SELECT name, name = 'abc' FROM {name}") == [("ABC", True)]


def test_merge_straight_in_falls_back_when_a_concurrent_load_commits_a_key(
        postgres: PostgresServer, tmp_path: Path) -> None:
    """The index probe cannot see another transaction's uncommitted rows: the straight COPY
    then meets the unique index, is undone alone (savepoint) and the batch is merged."""
    storage = Storage(str(tmp_path / "storage"))
    name = table_name()
    task = parse_task({"id": "load", "type": "postgres.Load", "from": "{{ trigger.uri }}",
                       "url": postgres.url, "table": name, "mergeKeys": ["id"]})
    uri, _ = storage.put_records("b1.ion", [record(i) for i in range(10)])
    task.run(ctx_for(uri, "e1"))
    uri, _ = storage.put_records("b2.ion", [record(i) for i in range(10, 20)])
    ctx = ctx_for(uri, "e2")
    result: dict[str, Any] = {}
    with psycopg.connect(postgres.url) as other:  # a transaction, not committed yet
        other.execute(f"INSERT INTO {name} (id, name) VALUES (15, 'other load')")
        loader = threading.Thread(target=lambda: result.update(task.run(ctx)))
        loader.start()
        deadline = time.monotonic() + 30
        while not sql(postgres, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = "
                                "'Lock' AND query LIKE %s", f"COPY \"{name}\"%"):
            assert time.monotonic() < deadline and loader.is_alive(), result
            time.sleep(0.05)  # the load's COPY waits on the uncommitted key 15
        other.commit()
        loader.join(timeout=30)
    assert (result["inserted"], result["updated"]) == (9, 1)
    (how,) = load_logs(ctx)
    assert "ON CONFLICT" in how
    assert sql(postgres, f"SELECT count(*), count(DISTINCT id), max(name) FILTER "
                         f"(WHERE id = 15) FROM {name}") == [(20, 20, "n15")]


def test_record_values_are_data_never_sql(postgres: PostgresServer, tmp_path: Path) -> None:
    sql(postgres, "CREATE TABLE IF NOT EXISTS x (a int)")
    name = table_name()
    uri, _ = Storage(str(tmp_path)).put_records("b.ion", [record(1, name=EVIL)])
    parse_task({"id": "load", "type": "postgres.Load", "from": "{{ trigger.uri }}",
                "url": postgres.url, "table": name}).run(ctx_for(uri))
    ctx = ctx_for(uri, evil=EVIL)
    parse_task({"id": "up", "type": "postgres.Upsert", "url": postgres.url,
                "table": f"{name}_up", "values": {"v": "{{ trigger.evil }}"}}).run(ctx)
    found = parse_task({"id": "q", "type": "postgres.Query", "url": postgres.url,
                        "sql": f"SELECT count(*) AS n FROM {name} WHERE name = "
                               "{{ trigger.evil }} AND name LIKE '%DROP%'",
                        "fetch": "ONE"}).run(ctx)
    assert found["row"] == {"n": 1}
    assert sql(postgres, f"SELECT name FROM {name}") == [(EVIL,)]
    assert sql(postgres, f"SELECT v FROM {name}_up") == [(EVIL,)]
    assert sql(postgres, "SELECT to_regclass('x') IS NOT NULL") == [(True,)]
    with pytest.raises(ValueError, match="statements"):
        parse_task({"id": "q", "type": "postgres.Query", "url": postgres.url,
                    "sql": "SELECT 1 {% if true %}{% endif %}"})


def test_query_fetch_modes_store_and_kestra_spellings(
        postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "storage"))
    name = table_name()
    url = postgres.url.replace("postgresql://", "jdbc:postgresql://")
    query = {"id": "q", "type": "io.kestra.plugin.jdbc.postgresql.Query", "url": url}
    ctx = ctx_for(n=3)
    created = parse_task({**query, "sql": f"CREATE TABLE {name} AS SELECT g AS n, "
                                          "now()::date AS d, 1.50::numeric AS x "
                                          "FROM generate_series(1, 5) g"}).run(ctx)
    assert created["rowCount"] == 5
    task = parse_task({**query, "sql": f"SELECT * FROM {name} WHERE n <= {{{{ trigger.n }}}}"
                                       " ORDER BY n", "fetch": "ALL"})
    assert task.type == "postgres.Query"
    out = task.run(ctx)
    assert out["size"] == 3 and out["rows"][0]["x"] == 1.5 and isinstance(out["rows"][0]["d"],
                                                                          str)
    stored = parse_task({**query, "sql": f"SELECT n FROM {name}", "fetch": "STORE"}).run(ctx)
    assert stored["size"] == 5 and stored["uri"].endswith("exec-1.q.rows.ion")
    from waxflow.connectors.storage import read_records
    assert [r["n"] for r in read_records(stored["uri"])] == [1, 2, 3, 4, 5]
    load = parse_task({"id": "l", "type": "io.kestra.plugin.jdbc.postgresql.CopyIn",
                       "url": postgres.url, "from": "x", "table": "y"})
    assert load.type == "postgres.Load"


def test_one_pool_per_flow_and_process_not_per_execution(
        postgres: PostgresServer) -> None:
    name = table_name()
    task = parse_task({"id": "up", "type": "postgres.Upsert", "url": postgres.url,
                       "table": name, "poolSize": 3, "values": {"i": "{{ trigger.i }}"}})
    threads = [threading.Thread(target=lambda k=k: [task.run(ctx_for(exec_id=f"e{k}-{j}", i=j))
                                                     for j in range(25)]) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sql(postgres, f"SELECT count(*) FROM {name}") == [(200,)]
    (pool,) = [p for key, p in pg._POOLS.items()
               if key[1] == ("tests", "pg") and key[3] == 3]
    assert 1 <= pool.opened <= 3  # 200 executions, at most poolSize connections


def test_tls_verifies_the_server_certificate(
        postgres: PostgresServer, tmp_path: Path) -> None:
    query = {"id": "q", "type": "postgres.Query", "fetch": "ONE", "url": postgres.url,
             "sql": "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"}
    out = parse_task({**query, "sslMode": "verify-full",
                      "sslRootCert": str(postgres.cafile)}).run(ctx_for())
    assert out["row"]["ssl"] is True and out["row"]["version"].startswith("TLS")
    other_ca, _ = self_signed(tmp_path)  # a CA that did not sign the server's certificate
    with pytest.raises(TaskFailure, match="certificate verify failed"):
        parse_task({**query, "sslMode": "verify-full",
                    "sslRootCert": str(other_ca)}).run(ctx_for())


def test_errors_are_clear_and_never_show_the_password(
        postgres: PostgresServer) -> None:
    wrong = postgres.url.replace(PASSWORD, "Wrong-Password-123")
    query = {"id": "q", "type": "postgres.Query", "sql": "SELECT 1"}
    with pytest.raises(TaskFailure) as info:
        parse_task({**query, "url": wrong}).run(ctx_for())
    assert "password authentication failed" in str(info.value)
    assert "Wrong-Password-123" not in str(info.value)
    with pytest.raises(TaskFailure) as info:
        parse_task({**query, "host": "127.0.0.1", "port": 1, "username": "u",
                    "password": PASSWORD, "database": "d"}).run(ctx_for())
    assert "PostgreSQL 127.0.0.1:1/d" in str(info.value)
    assert "Connection refused" in str(info.value) and PASSWORD not in str(info.value)
    with pytest.raises(TaskFailure, match='relation "nope" does not exist'):
        parse_task({**query, "url": postgres.url, "sql": "SELECT * FROM nope"}).run(ctx_for())


# ------------------------------------------------------------------ flows on the broker
def blueprint(topic: str, group: str, **replace: str) -> str:
    text = (FLOWS / "kafka_to_postgres.yaml").read_text()
    text = text.replace("topic: orders\n", f"topic: {topic}\n").replace(
        "groupId: kafka-to-postgres", f"groupId: {group}")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def pg_env(bootstrap: str, log_topic: str, server: PostgresServer, tmp_path: Path,
           **extra: str) -> dict[str, str]:
    settings = {"WAXFLOW_STORAGE": str(tmp_path / "storage"),
                "WAXFLOW_PG_URL": f"postgresql://waxflow@127.0.0.1:{server.port}/waxflow",
                "WAXFLOW_SECRET_PG_PASSWORD": PASSWORD,
                "WAXFLOW_SECRET_SMTP_PASSWORD": "unused", **extra}
    return flow_env(bootstrap, log_topic, **settings)


def kill_and_restart(flow: Path, env: dict[str, str], watcher: LogWatcher,
                     steps: tuple[int, ...]) -> None:
    """Start the job, SIGKILL it once ``more`` further executions are done, per step."""
    for more in steps:
        proc = start_flow(flow, env)
        try:
            watcher.wait_for(len(watcher.done) + more, timeout=180, proc=proc)
            time.sleep(0.5)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_batch_flow_loads_each_record_exactly_once_across_sigkills(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        postgres: PostgresServer) -> None:
    n = 100_000
    topic, group, log_topic = new_topic(3), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    sql(postgres, "DROP TABLE IF EXISTS raw.orders")
    flow = write_flow(tmp_path, blueprint(topic, group, **{"interval: PT10S": "interval: PT1S",
                                                           "maxRecords: 50000":
                                                               "maxRecords: 8000"}))
    env = pg_env(bootstrap, log_topic, postgres, tmp_path)

    def feed() -> None:
        for start in range(0, n, 5000):
            produce_json(bootstrap, topic, [{"id": i, "amount": i % 100, "note": EVIL}
                                            for i in range(start, start + 5000)], partitions=3)
            time.sleep(0.5)  # ~10 s of arrivals: every restart still has records to cut

    feeder = threading.Thread(target=feed)
    feeder.start()
    watcher = LogWatcher(bootstrap, log_topic)
    began = time.monotonic()
    try:
        kill_and_restart(flow, env, watcher, (2, 1, 1))
    finally:
        watcher.close()
        feeder.join()
    final = run_flow(flow, env, idle=3, timeout=300)
    elapsed = time.monotonic() - began
    assert final.returncode == 0, final.stderr[-2000:]
    assert committed(bootstrap, group, topic, 3) == end_offsets(bootstrap, topic, 3)
    assert sql(postgres, "SELECT count(*), count(DISTINCT id), "
                         "count(DISTINCT (_topic, _partition, _offset)), min(note), "
                         "max(note) FROM raw.orders") == [(n, n, n, EVIL, EVIL)]
    docs = list(latest_by_id(log_documents(bootstrap, log_topic)).values())
    odd = [(d["id"], d["state"], d["trigger"].get("offsets"), d["error"]) for d in docs
           if d["state"] != "SUCCESS"]
    # no batch failed, and a batch killed mid-load was replayed under the same cut (its cut
    # is in the commit metadata before it runs), so no history is left RUNNING (G2)
    assert not odd, odd
    print(f"{n} records, 3 SIGKILLs, {len(docs)} batches: {elapsed:.1f}s")


UPSERT_FLOW = """
id: pg-upsert
namespace: tests
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
tasks:
  - id: up
    type: postgres.Upsert
    url: "{{{{ env.WAXFLOW_PG_URL }}}}"
    password: "{{{{ secret('PG_PASSWORD') }}}}"
    table: {table}
    values:
      id: "{{{{ trigger.value.id }}}}"
      note: "{{{{ trigger.value.note }}}}"
      doc: "{{{{ trigger.value }}}}"
"""


def test_per_record_upserts_exactly_once_across_sigkills(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        postgres: PostgresServer) -> None:
    n = 5_000
    topic, group, log_topic = new_topic(2), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    name = table_name()
    flow = write_flow(tmp_path, UPSERT_FLOW.format(topic=topic, group=group, table=name))
    env = pg_env(bootstrap, log_topic, postgres, tmp_path)

    def feed() -> None:
        for start in range(0, n, 250):
            produce_json(bootstrap, topic, [{"id": i, "note": EVIL}
                                            for i in range(start, start + 250)], partitions=2)
            time.sleep(0.4)

    feeder = threading.Thread(target=feed)
    feeder.start()
    watcher = LogWatcher(bootstrap, log_topic)
    try:
        kill_and_restart(flow, env, watcher, (300, 300))
    finally:
        watcher.close()
        feeder.join()
    final = run_flow(flow, env, idle=3, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert committed(bootstrap, group, topic, 2) == end_offsets(bootstrap, topic, 2)
    assert sql(postgres, f"SELECT count(*), count(DISTINCT id), count(DISTINCT execution_id), "
                         f"min(note), max((doc->>'id')::int) FROM {name}"
               ) == [(n, n, n, EVIL, n - 1)]
    docs = latest_by_id(log_documents(bootstrap, log_topic))
    assert len(docs) == n and {d["state"] for d in docs.values()} == {"SUCCESS"}


def test_load_waits_out_a_stopped_server_offsets_unchanged_until_it_succeeds(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        postgres: PostgresServer) -> None:
    topic, group, log_topic = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    sql(postgres, "DROP TABLE IF EXISTS raw.orders")
    flow = write_flow(tmp_path, blueprint(topic, group, **{
        "interval: PT10S": "interval: PT1S", "interval: PT2S": "interval: PT1S",
        "maxInterval: PT1M": "maxInterval: PT1S", "maxAttempts: 12": "maxAttempts: 30"}))
    produce_json(bootstrap, topic, [{"id": i} for i in range(1000)])
    env = pg_env(bootstrap, log_topic, postgres, tmp_path)
    postgres.stop()
    proc = start_flow(flow, env)
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "storage").rglob("*.ion")):  # the batch is stored
            assert time.monotonic() < deadline and proc.poll() is None, proc.captured()
            time.sleep(0.2)
        time.sleep(3)  # some failing attempts
        # nothing past the batch is committed (the batch source may commit its start, 0)
        assert committed(bootstrap, group, topic, 1)[0] in (-1001, 0)
        postgres.start()
        watcher = LogWatcher(bootstrap, log_topic)
        try:
            watcher.wait_for(1, timeout=60, proc=proc)
        finally:
            watcher.close()
        deadline = time.monotonic() + 30
        while committed(bootstrap, group, topic, 1) != {0: 1000}:
            assert time.monotonic() < deadline
            time.sleep(0.3)
    finally:
        if postgres_stopped(postgres):
            postgres.start()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)
    (doc,) = latest_by_id(log_documents(bootstrap, log_topic)).values()
    assert doc["state"] == "SUCCESS"
    (load,) = [t for t in doc["taskRuns"] if t["taskId"] == "load"]
    assert len(load["attempts"]) >= 2
    assert "Connection refused" in str(load["attempts"][0]["error"])
    assert sql(postgres, "SELECT count(*) FROM raw.orders") == [(1000,)]


def postgres_stopped(server: PostgresServer) -> bool:
    try:
        sql(server, "SELECT 1")
        return False
    except psycopg.OperationalError:
        return True


def test_failed_load_emails_oncall_and_stops_without_committing(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        postgres: PostgresServer, smtp_server: SmtpServer) -> None:  # noqa: F811
    topic, group, log_topic = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    flow = write_flow(tmp_path, blueprint(topic, group, **{
        "interval: PT10S": "interval: PT1S", "interval: PT2S": "interval: PT1S",
        "maxAttempts: 12": "maxAttempts: 2", "port: 587": f"port: {smtp_server.port}"}))
    produce_json(bootstrap, topic, [{"id": i} for i in range(10)])
    env = pg_env(bootstrap, log_topic, postgres, tmp_path,
                 WAXFLOW_SECRET_PG_PASSWORD="Wrong-Password-123",
                 WAXFLOW_SMTP_HOST="127.0.0.1", WAXFLOW_SMTP_USER=smtp_server.user,
                 WAXFLOW_SECRET_SMTP_PASSWORD=smtp_server.password,
                 WAXFLOW_SMTP_CA=str(smtp_server.cafile),
                 WAXFLOW_ONCALL_EMAIL="oncall@example.org")
    res = run_flow(flow, env, idle=3, timeout=120)
    (got,) = smtp_server.wait_for(1, timeout=10)
    assert res.returncode == 1, res.stdout + res.stderr  # onFailure: STOP halts the job
    assert got.rcpt == ["oncall@example.org"]
    assert got.message["Subject"] == "kafka-to-postgres: batch of 10 orders failed to load"
    (attached,) = list(got.message.iter_attachments())
    batch_files = list((tmp_path / "storage").rglob("*.ion"))
    assert attached.get_content() == batch_files[0].read_bytes()
    assert committed(bootstrap, group, topic, 1)[0] in (-1001, 0)
    (doc,) = latest_by_id(log_documents(bootstrap, log_topic)).values()
    assert doc["state"] == "FAILED" and "password authentication failed" in str(doc["error"])
    text = res.stdout + res.stderr + str(doc)
    assert "Wrong-Password-123" not in text and smtp_server.password not in text
