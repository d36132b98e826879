"""Streaming ETL on the real broker with the embedded targets: kafka.Trigger → DuckDB
(MERGE, exactly once across kills) → dbt, and the Kafka → S3 bridge (moto server)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pytest
from moto.server import ThreadedMotoServer
from pytest_httpserver import HTTPServer

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
from waxflow.connectors.broker import free_port

pytestmark = pytest.mark.integration

FLOWS = Path(__file__).resolve().parents[2] / "dataflows" / "flows"

DUCK_FLOW = """
id: to-duckdb
namespace: tests
triggers:
  - id: t
    type: kafka.Trigger
    topic: {topic}
    groupId: {group}
    valueDeserializer: JSON
    interval: PT1S
tasks:
  - id: load
    type: duckdb.Load
    from: "{{{{ trigger.uri }}}}"
    database: {db}
    table: orders
    mode: MERGE
    mergeKeys: [id]
  - id: model
    type: dbt.Build
    projectDir: {project}
"""

DBT_PROJECT = {
    "dbt_project.yml": "name: shop\nversion: '1.0.0'\nprofile: shop\nmodel-paths: [models]\n",
    "profiles.yml": ("shop:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
                     "      path: {db}\n"),
    "models/order_totals.sql": "select count(*) as n, sum(amount) as total from orders\n",
}


def _dbt_project(root: Path, db: Path, broken: bool = False) -> Path:
    for name, text in DBT_PROJECT.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(db=db))
    if broken:
        (root / "models" / "order_totals.sql").write_text("select nope from orders\n")
    return root


def test_duckdb_exactly_once_across_kills_then_dbt(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    n = 10_000
    topic, group, log_topic = new_topic(3), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    db = tmp_path / "wh.duckdb"
    project = _dbt_project(tmp_path / "dbt", db)
    flow = write_flow(tmp_path, DUCK_FLOW.format(topic=topic, group=group, db=db,
                                                 project=project))
    env = flow_env(bootstrap, log_topic, WAXFLOW_STORAGE=str(tmp_path / "storage"))

    def feed() -> None:
        for start in range(0, n, 500):
            produce_json(bootstrap, topic, [{"id": i, "amount": i % 100}
                                            for i in range(start, start + 500)], partitions=3)
            # ~20 s of arrivals, so each start (a restart after SIGKILL first waits up to 6 s
            # for the dead instance's lock) still has records to cut batches from
            time.sleep(1.0)

    feeder = threading.Thread(target=feed)
    feeder.start()
    watcher = LogWatcher(bootstrap, log_topic)
    try:
        for more in (2, 1):
            proc = start_flow(flow, env)
            try:
                watcher.wait_for(len(watcher.done) + more, timeout=180, proc=proc)
                time.sleep(0.7)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    finally:
        watcher.close()
        feeder.join()
    final = run_flow(flow, env, idle=3, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert committed(bootstrap, group, topic, 3) == end_offsets(bootstrap, topic, 3)
    with duckdb.connect(str(db), read_only=True) as con:
        count, distinct = con.execute("select count(*), count(distinct id) from orders"
                                      ).fetchone()  # type: ignore[misc]
        assert (count, distinct) == (n, n)
        assert con.execute("select n from order_totals").fetchone() == (n,)
    docs = list(latest_by_id(log_documents(bootstrap, log_topic)).values())
    assert [d["error"] for d in docs if d["state"] != "SUCCESS"] == []
    assert all(d["trigger"]["uri"] and d["trigger"]["messagesCount"] > 0 for d in docs)


def test_dbt_failure_fails_the_task_with_dbts_message(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, group, log_topic = new_topic(1), f"g-{uuid.uuid4().hex[:8]}", new_log_topic()
    db = tmp_path / "wh.duckdb"
    project = _dbt_project(tmp_path / "dbt", db, broken=True)
    flow = write_flow(tmp_path, DUCK_FLOW.format(topic=topic, group=group, db=db,
                                                 project=project))
    produce_json(bootstrap, topic, [{"id": i, "amount": 1} for i in range(10)])
    env = flow_env(bootstrap, log_topic, WAXFLOW_STORAGE=str(tmp_path / "storage"))
    res = run_flow(flow, env, idle=2)
    assert res.returncode == 0, res.stderr[-2000:]
    (doc,) = latest_by_id(log_documents(bootstrap, log_topic)).values()
    assert doc["state"] == "FAILED"
    assert doc["error"]["taskId"] == "model"
    assert "order_totals" in doc["error"]["message"] and "nope" in doc["error"]["message"]
    load = next(t for t in doc["taskRuns"] if t["taskId"] == "load")
    assert load["state"] == "SUCCESS" and load["outputs"]["rows"] == 10


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def test_s3_bridge_one_object_per_batch_and_replay_overwrites(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, s3_endpoint: str,
    httpserver: HTTPServer
) -> None:
    topic = new_topic(1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    bucket = f"b-{uuid.uuid4().hex[:8]}"
    client = _s3(s3_endpoint)
    client.create_bucket(Bucket=bucket)
    text = (FLOWS / "kafka_to_s3.yaml").read_text()
    text = text.replace("topic: events\n", f"topic: {topic}\n").replace(
        "groupId: kafka-to-s3", f"groupId: {group}").replace(
        "maxRecords: 10000", "maxRecords: 300").replace("interval: PT1M", "interval: PT1S")
    flow = write_flow(tmp_path, text)
    httpserver.expect_request("/notify", method="POST").respond_with_data("ok")
    produce_json(bootstrap, topic, [{"id": i} for i in range(1000)])
    log_topic = new_log_topic()
    env = flow_env(bootstrap, log_topic, WAXFLOW_STORAGE=str(tmp_path / "storage"),
                   WAXFLOW_S3_ENDPOINT=s3_endpoint, WAXFLOW_DEMO_BUCKET=bucket,
                   WAXFLOW_DEMO_API=httpserver.url_for("").rstrip("/"),
                   AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                   AWS_DEFAULT_REGION="us-east-1")
    res = run_flow(flow, env, idle=2)
    assert res.returncode == 0, res.stderr[-2000:]
    docs = list(latest_by_id(log_documents(bootstrap, log_topic)).values())
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"events/{d['id']}.parquet" for d in docs}
    assert sorted(d["trigger"]["messagesCount"] for d in docs) == [100, 300, 300, 300]
    before = {k: client.head_object(Bucket=bucket, Key=k)["LastModified"] for k in keys}

    # replay: rewind the group; the same batches (same ids) overwrite the same keys
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    c.close()
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    res = run_flow(flow, env, idle=2)
    assert res.returncode == 0, res.stderr[-2000:]
    after = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert after == keys
    assert all(client.head_object(Bucket=bucket, Key=k)["LastModified"] > before[k]
               for k in keys)
