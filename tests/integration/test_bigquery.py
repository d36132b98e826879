"""bigquery.Load / bigquery.Query with the real google-cloud-bigquery client on bqemulator.

A batch of 1,000 Kafka records is stored as an ION file (internal storage), and the tasks
run through a FakeContext with ``from: {{ trigger.uri }}``. Counts are read with queries:
the emulator does not update ``Table.num_rows`` after DML, and it stores partitioning and
clustering as table metadata without physically partitioning (so those are asserted as
metadata plus query results, nothing more).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.cloud import bigquery
from pydantic import ValidationError

import waxflow.connectors.bigquery  # noqa: F401  (registers bigquery.*)
from tests import warehouse_fixtures
from tests.emulators import Emulator
from tests.task_helpers import FakeContext, parse_task
from tests.warehouse_fixtures import EXPECTED_KEYS, N, make_records
from waxflow.connectors.bigquery import make_client
from waxflow.connectors.storage import Storage
from waxflow.tasks import TaskFailure

pytestmark = pytest.mark.integration
BLUEPRINT = Path(__file__).parents[2] / "dataflows" / "flows" / "kafka_to_bigquery.yaml"

# the session fixtures (shared with any conftest that imports them too: one emulator)
bigquery_emulator = warehouse_fixtures.bigquery_emulator
bigquery_endpoint = warehouse_fixtures.bigquery_endpoint
bigquery_project = warehouse_fixtures.bigquery_project

@pytest.fixture
def batch_uri(tmp_path: Path) -> str:
    uri, count = Storage(str(tmp_path / "storage")).put_records("orders-0001.ion",
                                                                make_records())
    assert count == N
    return uri


@pytest.fixture(scope="module")
def client(bigquery_endpoint: str, bigquery_project: str) -> Iterator[bigquery.Client]:
    with make_client(bigquery_project, bigquery_endpoint) as bq:
        yield bq


@pytest.fixture
def dataset(client: bigquery.Client) -> Iterator[str]:
    name = f"wx_{uuid.uuid4().hex[:10]}"
    client.create_dataset(name)
    yield name
    client.delete_dataset(name, delete_contents=True, not_found_ok=True)


def run_task(props: dict[str, Any], uri: str = "") -> dict[str, Any]:
    task = parse_task(props)
    out: dict[str, Any] = task.run(FakeContext({"trigger": {"uri": uri}}))
    return out


def load(endpoint: str, uri: str, table: str, **props: Any) -> dict[str, Any]:
    return run_task({"id": "load", "type": "bigquery.Load", "from": "{{ trigger.uri }}",
                     "destinationTable": table, "endpoint": endpoint,
                     "projectId": "test-proj", **props}, uri)


def keys_of(client: bigquery.Client, table: str) -> tuple[int, set[tuple[str, int, int]]]:
    rows = list(client.query(f"SELECT _topic, _partition, _offset FROM `{table}`").result())
    return len(rows), {(r["_topic"], r["_partition"], r["_offset"]) for r in rows}


def test_parquet_load_twice_appends(bigquery_endpoint: str, client: bigquery.Client,
                                    dataset: str, batch_uri: str) -> None:
    table = f"{dataset}.orders"
    first = load(bigquery_endpoint, batch_uri, table)
    assert first["rows"] == N and first["jobId"]
    assert first["destinationTable"] == f"test-proj.{dataset}.orders"
    count, keys = keys_of(client, table)
    assert (count, keys) == (N, EXPECTED_KEYS)
    load(bigquery_endpoint, batch_uri, table)
    count, keys = keys_of(client, table)
    assert (count, keys) == (2 * N, EXPECTED_KEYS)


def test_ndjson_load_keeps_values(bigquery_endpoint: str, client: bigquery.Client,
                                  dataset: str, batch_uri: str) -> None:
    table = f"test-proj.{dataset}.orders_json"
    load(bigquery_endpoint, batch_uri, table, format="NEWLINE_DELIMITED_JSON")
    assert keys_of(client, table) == (N, EXPECTED_KEYS)
    row = next(iter(client.query(f"SELECT id, customer, amount, _key FROM `{table}` "
                                 "WHERE id = 7").result()))
    assert dict(row.items()) == {"id": 7, "customer": "c7", "amount": 8.75, "_key": "order-7"}


def test_merge_twice_keeps_one_copy(bigquery_endpoint: str, client: bigquery.Client,
                                    dataset: str, batch_uri: str) -> None:
    table = f"{dataset}.orders_merged"
    for _ in range(2):
        out = load(bigquery_endpoint, batch_uri, table, mode="MERGE")
        assert out["rows"] == N and out["affectedRows"] == N
        assert keys_of(client, table) == (N, EXPECTED_KEYS)
    leftovers = [t.table_id for t in client.list_tables(dataset) if "stage" in t.table_id]
    assert leftovers == []


def test_schema_partitioning_clustering_truncate(bigquery_endpoint: str,
                                                 client: bigquery.Client, dataset: str,
                                                 batch_uri: str) -> None:
    table = f"{dataset}.orders_typed"
    schema = [{"name": "id", "type": "INT64", "mode": "REQUIRED"},
              {"name": "customer", "type": "STRING"}, {"name": "amount", "type": "NUMERIC"},
              {"name": "created", "type": "TIMESTAMP"}, {"name": "_topic", "type": "STRING"},
              {"name": "_partition", "type": "INT64"}, {"name": "_offset", "type": "INT64"},
              {"name": "_timestamp", "type": "TIMESTAMP"}, {"name": "_key", "type": "STRING"},
              {"name": "note", "type": "STRING"}]
    props = {"schema": schema, "timePartitioningField": "created",
             "clusteringFields": ["customer"], "writeDisposition": "WRITE_TRUNCATE"}
    for _ in range(2):
        load(bigquery_endpoint, batch_uri, table, **props)
    assert keys_of(client, table) == (N, EXPECTED_KEYS)
    meta = client.get_table(table)
    assert meta.time_partitioning.field == "created"
    assert meta.time_partitioning.type_ == "DAY"
    assert meta.clustering_fields == ["customer"]
    assert [(f.name, f.field_type) for f in meta.schema][:4] == [
        ("id", "INTEGER"), ("customer", "STRING"), ("amount", "NUMERIC"),
        ("created", "TIMESTAMP")]
    row = next(iter(client.query(f"SELECT created, _timestamp, amount, note FROM `{table}` "
                                 "WHERE id = 5").result()))
    assert row["created"] == dt.datetime(2024, 5, 1, 5, tzinfo=dt.UTC)
    assert row["_timestamp"] == dt.datetime.fromtimestamp(1714521600.005, dt.UTC)
    assert float(row["amount"]) == 6.25 and row["note"] is None
    days = list(client.query(f"SELECT COUNT(DISTINCT DATE(created)) AS d FROM `{table}`")
                .result())
    assert days[0]["d"] == 3


def test_dispositions_and_bad_options(bigquery_endpoint: str, dataset: str,
                                      batch_uri: str) -> None:
    with pytest.raises(TaskFailure, match=r"does not exist .createDisposition is CREATE_NEVER"):
        load(bigquery_endpoint, batch_uri, f"{dataset}.missing", createDisposition="CREATE_NEVER")
    load(bigquery_endpoint, batch_uri, f"{dataset}.once", writeDisposition="WRITE_EMPTY")
    with pytest.raises(TaskFailure, match="not empty"):
        load(bigquery_endpoint, batch_uri, f"{dataset}.once", writeDisposition="WRITE_EMPTY")
    with pytest.raises(TaskFailure, match="must be TIMESTAMP, DATE or DATETIME"):
        load(bigquery_endpoint, batch_uri, f"{dataset}.p", timePartitioningField="customer")
    with pytest.raises(TaskFailure, match="not in the schema"):
        load(bigquery_endpoint, batch_uri, f"{dataset}.s",
             schema=[{"name": "id", "type": "INT64"}])
    with pytest.raises(ValidationError, match="writeDisposition must stay WRITE_APPEND"):
        load(bigquery_endpoint, batch_uri, f"{dataset}.m", mode="MERGE",
             writeDisposition="WRITE_TRUNCATE")


def test_empty_batch(bigquery_endpoint: str, dataset: str, tmp_path: Path) -> None:
    uri, _ = Storage(str(tmp_path)).put_records("empty.ion", [])
    with pytest.raises(TaskFailure, match="holds no records"):
        load(bigquery_endpoint, uri, f"{dataset}.e")
    out = load(bigquery_endpoint, uri, f"{dataset}.e", failOnEmpty=False)
    assert out["rows"] == 0 and out["jobId"] is None


def test_failed_load_is_retried_from_storage(bigquery_emulator: Emulator,
                                             bigquery_endpoint: str, client: bigquery.Client,
                                             dataset: str, batch_uri: str) -> None:
    """The emulator goes down: the load fails fast with a clear error; once it is back the
    same stored batch (not Kafka) is loaded again, and MERGE leaves exactly one copy."""
    if not bigquery_emulator.managed:
        pytest.skip("the BigQuery emulator at $WAXFLOW_BQ_ENDPOINT is not managed here")
    table = f"{dataset}.orders_retry"
    load(bigquery_endpoint, batch_uri, table, mode="MERGE")  # a first, partial success
    bigquery_emulator.stop()
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(TaskFailure, match=r"looking up .* failed: .*(refused|Timeout)"):
                load(bigquery_endpoint, batch_uri, table, mode="MERGE", apiTimeout="PT2S")
            assert time.monotonic() - started < 15
    finally:
        bigquery_emulator.start()
    assert Path(batch_uri.removeprefix("file://")).exists()
    out = load(bigquery_endpoint, batch_uri, table, mode="MERGE")
    assert out["rows"] == N
    assert keys_of(client, table) == (N, EXPECTED_KEYS)


def test_query_task(bigquery_endpoint: str, dataset: str, batch_uri: str) -> None:
    load(bigquery_endpoint, batch_uri, f"{dataset}.q")
    base = {"id": "q", "type": "bigquery.Query", "endpoint": bigquery_endpoint,
            "projectId": "test-proj"}
    sql = (f"SELECT customer, COUNT(*) AS n, SUM(amount) AS total FROM `{dataset}.q` "
           "WHERE customer IN ('c1', 'c2') GROUP BY customer ORDER BY customer")
    out = run_task({**base, "sql": sql, "fetch": "ALL"})
    assert out["size"] == 2 and out["jobId"]
    assert out["rows"][0] == {"customer": "c1", "n": 20,
                              "total": sum(i * 1.25 for i in range(1, N, 50))}
    one = run_task({**base, "sql": sql, "fetch": "ONE"})
    assert one["row"]["customer"] == "c1" and one["size"] == 1
    dml = run_task({**base, "sql": f"DELETE FROM `{dataset}.q` WHERE customer = 'c1'"})
    assert dml["affectedRows"] == 20 and "rows" not in dml
    with pytest.raises(TaskFailure, match=r"bigquery\.Query q: query failed"):
        run_task({**base, "sql": f"SELECT nope FROM `{dataset}.q`"})


def test_blueprint_load_task(bigquery_endpoint: str, client: bigquery.Client, batch_uri: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The load task of the "Kafka topic into BigQuery" blueprint, as written, twice."""
    flow = yaml.safe_load(BLUEPRINT.read_text())
    monkeypatch.setenv("WAXFLOW_BQ_ENDPOINT", bigquery_endpoint)
    client.create_dataset("raw", exists_ok=True)
    ctx_vars = {"trigger": {"uri": batch_uri}, "env": {"WAXFLOW_BQ_PROJECT": "test-proj"}}
    try:
        for _ in range(2):
            out = parse_task(flow["tasks"][0]).run(FakeContext(ctx_vars))
            assert out["rows"] == N and out["destinationTable"] == "test-proj.raw.orders"
        assert keys_of(client, "raw.orders") == (N, EXPECTED_KEYS)
        assert client.get_table("raw.orders").time_partitioning.field == "created"
    finally:
        client.delete_dataset("raw", delete_contents=True, not_found_ok=True)
