"""sql.Load and sql.Query (SQLAlchemy 2) on real engines: MariaDB (Debian's mariadb-server,
PyMySQL; tests/mariadb_server.py), PostgreSQL through SQLAlchemy (psycopg) and SQLite."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import TypeAdapter

import waxflow.connectors.sql as sqlmod
from tests.mariadb_server import PASSWORD as MARIA_PASSWORD
from tests.mariadb_server import MariaDBServer, mariadb  # noqa: F401  (fixture)
from tests.postgres_server import PostgresServer  # `postgres`: conftest.py
from tests.task_helpers import FakeContext, resolve_task_union
from waxflow.connectors.storage import Storage, read_records
from waxflow.tasks import TaskFailure

pytestmark = pytest.mark.integration


@functools.cache
def _tasks() -> TypeAdapter[Any]:
    return TypeAdapter(resolve_task_union())


def parse_task(data: dict[str, Any]) -> Any:
    """A task model from its YAML mapping (the task union is built once per module)."""
    return _tasks().validate_python(data)

EVIL = "'); DROP TABLE x; --"


@pytest.fixture(params=["mariadb", "postgresql", "sqlite"])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "mariadb":
        server: MariaDBServer = request.getfixturevalue("mariadb")
        return server.url
    if request.param == "postgresql":
        pg: PostgresServer = request.getfixturevalue("postgres")
        return pg.url.replace("postgresql://", "postgresql+psycopg://")
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


def record(i: int, **value: Any) -> dict[str, Any]:
    return {"key": f"k{i}", "value": {"id": i, "name": f"n{i}", "tags": {"i": i}, **value},
            "topic": "events", "partition": i % 2, "offset": i,
            "timestamp": 1_700_000_000_000 + i, "headers": {}}


def ctx_for(uri: str = "", exec_id: str = "exec-1", **more: Any) -> FakeContext:
    return FakeContext({"trigger": {"uri": uri, **more}, "execution": {"id": exec_id},
                        "flow": {"namespace": "tests", "id": "sql"}})


def scalar(url: str, statement: str) -> Any:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(statement).scalar()
    finally:
        engine.dispose()


def test_load_merge_append_and_replay(engine_url: str, tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "storage"))
    uri, _ = storage.put_records("b.ion", [record(i, note=EVIL) for i in range(300)]
                                 + [{**record(5, name="last"), "offset": 5}])
    table = f"t_{uuid.uuid4().hex[:8]}"
    load = {"id": "load", "type": "sql.Load", "url": engine_url, "from": "{{ trigger.uri }}",
            "table": table}
    first = parse_task(load).run(ctx_for(uri))
    assert (first["rows"], first["replaced"]) == (300, 0)
    again = parse_task(load).run(ctx_for(uri))
    assert (again["rows"], again["replaced"]) == (300, 300)
    assert scalar(engine_url, f"SELECT count(*) FROM {table}") == 300
    assert scalar(engine_url, f"SELECT name FROM {table} WHERE id = 5") == "last"
    quoted = EVIL.replace("'", "''")
    assert scalar(engine_url, f"SELECT count(*) FROM {table} WHERE note = '{quoted}'") == 299
    # a new field becomes a new column
    uri2, _ = storage.put_records("b2.ion", [record(900, extra=2.5)])
    parse_task(load).run(ctx_for(uri2, "exec-2"))
    assert scalar(engine_url, f"SELECT extra FROM {table} WHERE id = 900") == 2.5
    appended = {**load, "table": f"{table}_app", "mode": "APPEND"}
    outs = [parse_task(appended).run(ctx_for(uri, exec_id)) for exec_id in ("a", "a", "b")]
    assert [o["skipped"] for o in outs] == [False, True, False]
    assert scalar(engine_url, f"SELECT count(*) FROM {table}_app") == 2 * 301


def test_query_binds_expressions_fetches_and_stores(
        engine_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "storage"))
    table = f"q_{uuid.uuid4().hex[:8]}"
    query = {"id": "q", "type": "sql.Query", "url": engine_url}
    ctx = ctx_for(evil=EVIL, n=2)
    parse_task({**query, "sql": f"CREATE TABLE {table} (n INTEGER, s VARCHAR(100))"}).run(ctx)
    for i in range(3):
        parse_task({**query, "sql": f"INSERT INTO {table} (n, s) VALUES ({i}, "
                                    "{{ trigger.evil }})"}).run(ctx)
    out = parse_task({**query, "fetch": "ALL",
                      "sql": f"SELECT n, s FROM {table} WHERE n < {{{{ trigger.n }}}} AND s "
                             "LIKE '%DROP%' ORDER BY n"}).run(ctx)
    assert out["rows"] == [{"n": 0, "s": EVIL}, {"n": 1, "s": EVIL}] and out["size"] == 2
    one = parse_task({**query, "fetch": "ONE",
                      "sql": f"SELECT count(*) AS c FROM {table}"}).run(ctx)
    assert one["row"] == {"c": 3}
    stored = parse_task({**query, "fetch": "STORE",
                         "sql": f"SELECT n FROM {table} ORDER BY n"}).run(ctx)
    assert [r["n"] for r in read_records(stored["uri"])] == [0, 1, 2]
    assert scalar(engine_url, f"SELECT count(*) FROM {table}") == 3


def test_engine_is_shared_per_flow_and_errors_hide_the_password(
        mariadb: MariaDBServer) -> None:  # noqa: F811
    query = {"id": "q", "type": "sql.Query", "url": mariadb.url, "sql": "SELECT 1",
             "fetch": "ONE"}
    for i in range(20):
        parse_task(query).run(ctx_for(exec_id=f"e{i}"))
    engines = [k for k in sqlmod._ENGINES if k[1] == ("tests", "sql") and "127.0.0.1:"
               f"{mariadb.port}" in k[2]]
    assert len(engines) == 1
    wrong = mariadb.url.replace(MARIA_PASSWORD, "Wrong-Password-123")
    with pytest.raises(TaskFailure) as info:
        parse_task({**query, "url": wrong}).run(ctx_for())
    assert "Access denied" in str(info.value) and "Wrong-Password-123" not in str(info.value)
    with pytest.raises(TaskFailure) as info:
        parse_task({**query, "url": mariadb.url.replace(MARIA_PASSWORD, ""),
                    "password": MARIA_PASSWORD, "sql": "SELECT * FROM nope"}).run(ctx_for())
    assert "nope" in str(info.value) and MARIA_PASSWORD not in str(info.value)
