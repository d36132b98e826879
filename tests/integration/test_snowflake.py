"""snowflake.Load / snowflake.Query with the real snowflake-connector-python on fakesnow.

A batch of 1,000 Kafka records is stored as an ION file and loaded through a temporary
stage (PUT + COPY INTO ... MATCH_BY_COLUMN_NAME). fakesnow's server keeps its data in
memory, so after the emulator restarts the test recreates the database before the retry
(what an operator restoring a warehouse would do); the load itself recreates the table.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

import waxflow.connectors.snowflake  # noqa: F401  (registers snowflake.*)
from tests import warehouse_fixtures
from tests.emulators import Emulator
from tests.task_helpers import FakeContext, parse_task
from tests.warehouse_fixtures import EXPECTED_KEYS, N, make_records
from waxflow.connectors.storage import Storage
from waxflow.tasks import TaskFailure

pytestmark = pytest.mark.integration

BLUEPRINT = Path(__file__).parents[2] / "dataflows" / "flows" / "kafka_to_snowflake.yaml"

# the session fixtures (shared with any conftest that imports them too: one emulator)
snowflake_emulator = warehouse_fixtures.snowflake_emulator
snowflake_conn_params = warehouse_fixtures.snowflake_conn_params


@pytest.fixture
def batch_uri(tmp_path: Path) -> str:
    uri, count = Storage(str(tmp_path / "storage")).put_records("orders-0001.ion",
                                                                make_records())
    assert count == N
    return uri


def run_task(props: dict[str, Any], uri: str = "") -> dict[str, Any]:
    out: dict[str, Any] = parse_task(props).run(FakeContext({"trigger": {"uri": uri}}))
    return out


def create_database(conn: dict[str, Any], name: str) -> None:
    for sql in (f"CREATE DATABASE IF NOT EXISTS {name}",
                f"CREATE SCHEMA IF NOT EXISTS {name}.PUBLIC"):
        run_task({"id": "ddl", "type": "snowflake.Query", "sql": sql, **conn})


@pytest.fixture
def conn(snowflake_conn_params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Connection properties on a fresh database (schema PUBLIC). Not dropped afterwards:
    fakesnow cannot parse DROP DATABASE, and its data lives in memory anyway."""
    name = f"WX_{uuid.uuid4().hex[:10].upper()}"
    create_database(snowflake_conn_params, name)
    yield {**snowflake_conn_params, "database": name, "schema": "PUBLIC"}


def load(conn: dict[str, Any], uri: str, table: str, **props: Any) -> dict[str, Any]:
    return run_task({"id": "load", "type": "snowflake.Load", "from": "{{ trigger.uri }}",
                     "table": table, **conn, **props}, uri)


def query(conn: dict[str, Any], sql: str, fetch: str = "ALL") -> dict[str, Any]:
    return run_task({"id": "q", "type": "snowflake.Query", "sql": sql, "fetch": fetch, **conn})


def keys_of(conn: dict[str, Any], table: str) -> tuple[int, set[tuple[str, int, int]]]:
    rows = query(conn, f"SELECT _topic, _partition, _offset FROM {table}")["rows"]
    return len(rows), {(r["_TOPIC"], r["_PARTITION"], r["_OFFSET"]) for r in rows}


def test_append_twice_appends(conn: dict[str, Any], batch_uri: str) -> None:
    assert load(conn, batch_uri, "ORDERS") == {"rows": N, "table": "ORDERS", "rejected": 0,
                                               "rejectsUri": None}
    assert keys_of(conn, "ORDERS") == (N, EXPECTED_KEYS)
    load(conn, batch_uri, "ORDERS")
    count, keys = keys_of(conn, "ORDERS")
    assert (count, keys) == (2 * N, EXPECTED_KEYS)
    row = query(conn, "SELECT id, customer, amount, _key FROM ORDERS WHERE id = 7", "ONE")
    assert row["row"] == {"ID": 7, "CUSTOMER": "c7", "AMOUNT": 8.75, "_KEY": "order-7"}


def test_merge_twice_keeps_one_copy(conn: dict[str, Any], batch_uri: str) -> None:
    table = f"{conn['database']}.PUBLIC.ORDERS_MERGED"
    first = load(conn, batch_uri, table, mode="MERGE")
    assert (first["rows"], first["inserted"], first["updated"]) == (N, N, 0)
    second = load(conn, batch_uri, table, mode="MERGE")
    assert (second["rows"], second["inserted"], second["updated"]) == (N, 0, N)
    assert keys_of(conn, table) == (N, EXPECTED_KEYS)
    tables = query(conn, "SELECT table_name FROM information_schema.tables "
                         "WHERE table_name LIKE 'WAXFLOW_STAGE%'")["rows"]
    assert tables == []


def test_existing_table_matches_columns_by_name(conn: dict[str, Any], batch_uri: str) -> None:
    query(conn, "CREATE TABLE SLIM (_offset NUMBER, _partition NUMBER, _topic VARCHAR, "
                "customer VARCHAR, note VARCHAR)", "NONE")
    assert load(conn, batch_uri, "SLIM", createTable=False)["rows"] == N
    assert keys_of(conn, "SLIM") == (N, EXPECTED_KEYS)
    nulls = query(conn, "SELECT COUNT(*) AS n FROM SLIM WHERE note IS NULL", "ONE")
    assert nulls["row"] == {"N": N}
    query(conn, "UPDATE SLIM SET note = 'kept'", "NONE")
    merged = load(conn, batch_uri, "SLIM", createTable=False, mode="MERGE")
    assert (merged["inserted"], merged["updated"]) == (0, N)
    kept = query(conn, "SELECT COUNT(*) AS n FROM SLIM WHERE note = 'kept'", "ONE")
    assert kept["row"] == {"N": N}
    with pytest.raises(TaskFailure, match=r"snowflake\.Load load: .*MISSING"):
        load(conn, batch_uri, "MISSING", createTable=False)


def test_empty_batch_and_bad_options(conn: dict[str, Any], tmp_path: Path) -> None:
    uri, _ = Storage(str(tmp_path)).put_records("empty.ion", [])
    assert load(conn, uri, "E") == {"rows": 0, "table": "E", "rejected": 0, "rejectsUri": None}
    with pytest.raises(TaskFailure, match="holds no records"):
        load(conn, uri, "E", failOnEmpty=True)
    with pytest.raises(ValidationError, match="merge keys must be distinct"):
        load(conn, uri, "E", mode="MERGE", mergeKeys=["_offset", "_OFFSET"])


def test_failed_load_is_retried_from_storage(snowflake_emulator: Emulator,
                                             conn: dict[str, Any], batch_uri: str) -> None:
    """The emulator goes down: the load fails fast with a clear error that never shows the
    password; once it is back the same stored batch is loaded (exactly once with MERGE)."""
    if not snowflake_emulator.managed:
        pytest.skip("the Snowflake emulator at $WAXFLOW_SF_PORT is not managed here")
    secret_conn = {**conn, "password": "pw-Very-Secret-42", "loginTimeout": "PT3S"}
    snowflake_emulator.stop()
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(TaskFailure, match="cannot connect to Snowflake") as failure:
                load(secret_conn, batch_uri, "ORDERS_RETRY", mode="MERGE")
            assert "pw-Very-Secret-42" not in str(failure.value)
            assert time.monotonic() - started < 15
    finally:
        snowflake_emulator.start()
    create_database({k: v for k, v in conn.items() if k not in ("database", "schema")},
                    conn["database"])
    assert Path(batch_uri.removeprefix("file://")).exists()
    assert load(secret_conn, batch_uri, "ORDERS_RETRY", mode="MERGE")["rows"] == N
    assert keys_of(conn, "ORDERS_RETRY") == (N, EXPECTED_KEYS)


def test_query_task(conn: dict[str, Any], batch_uri: str) -> None:
    load(conn, batch_uri, "Q")
    sql = ("SELECT customer, COUNT(*) AS n, SUM(amount) AS total FROM Q "
           "WHERE customer IN ('c1', 'c2') GROUP BY customer ORDER BY customer")
    out = query(conn, sql)
    assert out["size"] == 2 and out["queryId"]
    assert out["rows"][0] == {"CUSTOMER": "c1", "N": 20,
                              "TOTAL": sum(i * 1.25 for i in range(1, N, 50))}
    assert query(conn, sql, "ONE")["row"]["CUSTOMER"] == "c1"
    deleted = query(conn, "DELETE FROM Q WHERE customer = 'c1'", "NONE")
    assert deleted["rowCount"] == 20 and "rows" not in deleted
    with pytest.raises(TaskFailure, match=r"snowflake\.Query q: .*NOPE"):
        query(conn, "SELECT nope FROM Q")


def test_blueprint_load_task(snowflake_conn_params: dict[str, Any], batch_uri: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The load task of the "Kafka topic into Snowflake" blueprint, as written, twice."""
    flow = yaml.safe_load(BLUEPRINT.read_text())
    monkeypatch.setenv("WAXFLOW_SF_HOST", snowflake_conn_params["host"])
    monkeypatch.setenv("WAXFLOW_SF_PORT", str(snowflake_conn_params["port"]))
    secrets = {"SNOWFLAKE_ACCOUNT": "fakesnow", "SNOWFLAKE_USER": "fake",
               "SNOWFLAKE_PASSWORD": "snow"}
    run_task({"id": "ddl", "type": "snowflake.Query", "sql": "CREATE DATABASE IF NOT EXISTS SHOP",
              **snowflake_conn_params})
    run_task({"id": "ddl", "type": "snowflake.Query", "sql": "CREATE SCHEMA IF NOT EXISTS "
              "SHOP.RAW", **snowflake_conn_params})
    ctx_vars = {"trigger": {"uri": batch_uri}, "secret": secrets.__getitem__}
    for _ in range(2):
        out = parse_task(flow["tasks"][0]).run(FakeContext(ctx_vars))
        assert out["rows"] == N
    assert keys_of({**snowflake_conn_params, "database": "SHOP", "schema": "RAW"},
                   "ORDERS") == (N, EXPECTED_KEYS)
