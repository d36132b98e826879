"""Issue 13: the Kestra corpus (``tests/kestra_flows/``) runs on a real broker (and a real
schema registry), with its Kestra type names, properties and expressions unchanged.

Only the connection details of each file are replaced by the test's: bootstrap servers,
topics, group ids and the registry URL (every public example points at ``localhost:9092``).
Triggered flows run as jobs (``waxflow run``); manual flows (no enabled trigger) run in this
process through the engine, with the compiler's expressions, against the same broker, so
their outputs can be asserted (``waxflow run`` of a manual flow: test_manual_run.py). Each
test asserts what the flow does: the records it consumed, produced or stored, and its
executions' history.

03 writes to FerretDB (MongoDB's wire protocol, ``tests/ferretdb_server.py``), 13 produces
through the registry after a JavaScript FileTransform (V8), 22 reads through the AWS Glue
schema registry (moto's server). Not run here: 19 (BigQuery's JSON format, file purge); 10 (an
SSL cluster with Java keystores), 16 and 20 (public HTTP APIs) and 21 (Slack) need what this
machine lacks. 06 (kafka.Trigger with a share group) runs in
``tests/integration/test_batch_share.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from pymongo import MongoClient

from tests.ferretdb_server import FerretServer, ferretdb  # noqa: F401
from tests.flow_helpers import (
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce,
    produce_json,
    run_flow,
)
from tests.kafka_helpers import committed, read_all
from tests.moto_server import moto_endpoint
from waxflow.connectors.avro import avro_deserializer, avro_serializer
from waxflow.connectors.storage import local_path, read_records
from waxflow.dataflows.compiler import flow_expressions
from waxflow.dataflows.spec import parse_flow, parse_flow_text
from waxflow.execution import Execution, TriggerInfo
from waxflow.operators.engine import Engine

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "kestra_flows"
POST_SCHEMA = json.dumps({"type": "record", "name": "post", "namespace": "example", "fields": [
    {"name": "name", "type": "string"}, {"name": "n", "type": "int"}]})


@pytest.fixture(autouse=True)
def _storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Internal storage in the test's directory, for jobs and in-process runs alike."""
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "storage"))


def corpus(name: str, tmp_path: Path, subs: dict[str, str]) -> Path:
    """The corpus file ``name`` with only its connection details replaced (each must be
    there), written to ``tmp_path``."""
    text = (CORPUS / name).read_text(encoding="utf-8")
    for old, new in subs.items():
        assert old in text, f"{name} has no {old!r}"
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def job(path: Path, bootstrap: str, **env: str) -> tuple[dict[str, dict[str, Any]], str]:
    """Run a triggered flow until idle; its latest documents by execution id, and stderr."""
    log_topic = new_log_topic()
    res = run_flow(path, flow_env(bootstrap, log_topic, WAXFLOW_LOG_LEVEL="INFO", **env),
                   idle=4.0)
    assert res.returncode == 0, res.stderr[-3000:]
    return latest_by_id(log_documents(bootstrap, log_topic)), res.stderr


def manual(path: Path, exec_id: str = "manual-1") -> Execution:
    """A manual flow's execution, run in process (the engine and expressions of a job)."""
    flow = parse_flow(path)
    execution = Execution(id=exec_id, namespace=flow.namespace, flow_id=flow.id,
                          trigger=TriggerInfo(type="manual"))
    Engine(flow, flow_expressions(flow)).run(execution, {})
    assert execution.state.name == "SUCCESS", execution.document()
    return execution


def outputs_of(execution: Execution) -> dict[str, Any]:
    return {r.task_id: r.outputs for r in execution.task_runs}


def produce_avro(bootstrap: str, topic: str, registry: str, docs: list[dict[str, Any]]
                 ) -> None:
    ser = avro_serializer({"schema.registry.url": registry}, POST_SCHEMA, "value")
    produce(bootstrap, topic, [ser(d, topic) for d in docs],
            keys=[str(d["n"]).encode() for d in docs])


# ------------------------------------------------------------------- realtime, batch, share
def test_01_realtime_log(bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
                         ) -> None:
    topic, group = new_topic(), f"g-{uuid.uuid4().hex[:8]}"
    values = [f"line {i} {uuid.uuid4().hex[:6]}" for i in range(3)]
    produce(bootstrap, topic, [v.encode() for v in values])
    path = corpus("01_howto_realtime_log.yaml", tmp_path, {
        "localhost:9092": bootstrap, "app_logs": topic, "demoConsumerGroup": group})
    docs, err = job(path, bootstrap)
    assert sorted(d["trigger"]["offset"] for d in docs.values()) == [0, 1, 2]
    assert {d["state"] for d in docs.values()} == {"SUCCESS"}
    assert {d["trigger"]["type"] for d in docs.values()} == {"kafka.RealtimeTrigger"}
    assert all([(r["taskId"], r["type"]) for r in d["taskRuns"]] == [("print", "core.Log")]
               for d in docs.values())
    for value in values:  # the Log task wrote each record's value
        assert f"] {value}" in err, err[-2000:]
    assert committed(bootstrap, group, topic, 1) == {0: 3}


def test_04_realtime_share_group(bootstrap: str, new_topic: Callable[..., str],
                                 tmp_path: Path) -> None:
    topic, group = new_topic(), f"sg-{uuid.uuid4().hex[:8]}"
    produce(bootstrap, topic, [f"job-{i}".encode() for i in range(5)])
    path = corpus("04_plugin_realtime_share.yaml", tmp_path, {
        "localhost:9092": bootstrap, "topic: jobs": f"topic: {topic}",
        "groupId: jobs-share": f"groupId: {group}"})
    docs, err = job(path, bootstrap)
    assert sorted(d["trigger"]["offset"] for d in docs.values()) == [0, 1, 2, 3, 4]
    assert {d["state"] for d in docs.values()} == {"SUCCESS"}
    for i in range(5):
        assert f"] job-{i}" in err


def test_07_batch_trigger_of_five_records(bootstrap: str, new_topic: Callable[..., str],
                                          tmp_path: Path) -> None:
    topic, group = new_topic(), f"g-{uuid.uuid4().hex[:8]}"
    produce(bootstrap, topic, [f"r{i}".encode() for i in range(10)])
    path = corpus("07_docs_trigger_five_records.yaml", tmp_path, {
        "localhost:9092": bootstrap, "sometopic_consumer": group,
        "topic: sometopic": f"topic: {topic}"})
    docs, err = job(path, bootstrap)
    assert len(docs) == 2 and {d["state"] for d in docs.values()} == {"SUCCESS"}
    stored = []
    for d in docs.values():
        assert d["trigger"]["messagesCount"] == 5
        stored += [r["value"] for r in read_records(d["trigger"]["uri"])]
    assert sorted(stored) == sorted(f"r{i}" for i in range(10))
    assert err.count("Started by Kafka records: 5 consumed.") == 2
    assert committed(bootstrap, group, topic, 1) == {0: 10}


def test_18_per_record_flow_and_its_short_name_twin_give_the_same_history(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    topic = new_topic()
    orders = [{"id": f"o{i}", "status": "paid" if i % 2 else "new"} for i in range(4)]
    produce_json(bootstrap, topic, orders)
    subs = {"localhost:9092": bootstrap, "topic: orders": f"topic: {topic}"}
    kestra = corpus("18_blueprint_realtime_per_record.yaml", tmp_path,
                    {**subs, "groupId: per-record": "groupId: g-kestra"})
    docs, err = job(kestra, bootstrap)
    assert {d["state"] for d in docs.values()} == {"SUCCESS"}
    by_offset = {d["trigger"]["offset"]: d for d in docs.values()}
    for i, order in enumerate(orders):
        runs = by_offset[i]["taskRuns"]
        assert runs[1]["outputs"] == {"value": f"done handled {order['id']}"}
        assert f"{topic}/0@{i}: {order['status']}" in err

    # the same flow with waxflow's short type names: the same history but for timing
    short = kestra.read_text(encoding="utf-8").replace(
        "io.kestra.plugin.core.log.Log", "core.Log").replace(
        "io.kestra.plugin.core.debug.Return", "core.Return").replace(
        "io.kestra.plugin.kafka.RealtimeTrigger", "kafka.RealtimeTrigger").replace(
        "groupId: g-kestra", "groupId: g-short")
    assert "io.kestra" not in short.split("\nid:", 1)[1]
    twin = tmp_path / "short.yaml"
    twin.write_text(short, encoding="utf-8")
    twin_docs, _ = job(twin, bootstrap)
    assert _comparable(twin_docs) == _comparable(docs)


def test_17_realtime_jsonata_transform(bootstrap: str, new_topic: Callable[..., str],
                                       tmp_path: Path) -> None:
    topic = new_topic()
    orders = [{"order_id": i, "items": [{"quantity": i + 1, "price": 2.5},
                                        {"quantity": 1, "price": 10}]} for i in range(3)]
    produce_json(bootstrap, topic, orders)
    path = corpus("17_docs_benchmark_transform.yaml", tmp_path, {
        "localhost:9092": bootstrap, "topic: orders_in": f"topic: {topic}",
        "groupId: benchGroup": f"groupId: g-{uuid.uuid4().hex[:8]}"})
    docs, _ = job(path, bootstrap)
    assert {d["state"] for d in docs.values()} == {"SUCCESS"}
    by_offset = {d["trigger"]["offset"]: d["taskRuns"] for d in docs.values()}
    for i in range(3):  # JSONata's `items.(quantity * price)` is the list of products
        expected = {"order_id": i, "total": [(i + 1) * 2.5, 10]}
        assert by_offset[i][0]["outputs"] == {"value": expected}
        assert by_offset[i][1]["outputs"] == {"values": {"log": expected}}


def _comparable(docs: dict[str, dict[str, Any]]) -> list[Any]:
    """A history without what differs between runs (times, run ids, attempt times)."""
    out = []
    for d in docs.values():
        runs = [{k: v for k, v in r.items() if k not in ("attempts", "id")}
                for r in d["taskRuns"]]
        trig = {k: v for k, v in d["trigger"].items() if k != "timestamp"}
        out.append((d["id"], d["state"], trig, runs))
    return sorted(out, key=lambda item: str(item[0]))


def test_03_records_become_documents_once_across_a_replay(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        ferretdb: FerretServer) -> None:  # noqa: F811
    """03 as published, on FerretDB (MongoDB's wire protocol, password login): each record
    is one document. The same records run again (a second group: the same execution ids,
    as after a restart that lost its commits) insert nothing twice (G2, keyed insert)."""
    topic, database = new_topic(), f"shop{uuid.uuid4().hex[:8]}"
    items = [{"item_id": f"i{i}", "item_name": f"name é{i}"} for i in range(5)]
    produce_json(bootstrap, topic, items)
    subs = {"mongodb://user:pass@localhost:27017/?authSource=admin": ferretdb.uri,
            "localhost:9092": bootstrap, "topic: items": f"topic: {topic}",
            "database: shop": f"database: {database}"}
    client: MongoClient[dict[str, Any]] = MongoClient(ferretdb.uri)
    try:
        runs = []
        for group in ("g-first", "g-second"):
            (tmp_path / group).mkdir()
            path = corpus("03_plugin_realtime_mongodb.yaml", tmp_path / group,
                          {**subs, "itemsConsumer": f"{group}-{uuid.uuid4().hex[:6]}"})
            docs, _ = job(path, bootstrap)
            assert len(docs) == 5 and {d["state"] for d in docs.values()} == {"SUCCESS"}
            runs.append({d["trigger"]["offset"]: d["taskRuns"][0]["outputs"]
                         for d in docs.values()})
            stored = list(client[database]["items"].find())
            assert sorted((d["item_id"], d["item_name"]) for d in stored) == sorted(
                (i["item_id"], i["item_name"]) for i in items)
        first, second = runs
        assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4]
        for offset in first:
            assert first[offset]["alreadyInserted"] is False
            assert second[offset] == {**first[offset], "alreadyInserted": True}
    finally:
        client.drop_database(database)
        client.close()


# ------------------------------------------------------------------- AVRO through a registry
def test_02_and_05_avro_triggers_through_the_registry(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        schema_registry_url: str) -> None:
    topic = new_topic()
    posts = [{"name": f"p{i}", "n": i} for i in range(5)]
    produce_avro(bootstrap, topic, schema_registry_url, posts)
    realtime = corpus("02_plugin_realtime_avro.yaml", tmp_path, {
        "localhost:9092": bootstrap, "http://localhost:8085": schema_registry_url,
        "avro_topic": topic, "avroGroup": f"g-{uuid.uuid4().hex[:8]}"})
    docs, err = job(realtime, bootstrap)
    assert len(docs) == 5 and {d["state"] for d in docs.values()} == {"SUCCESS"}
    for post in posts:  # the Log task printed the decoded record
        assert f"] {post}" in err or f"] {json.dumps(post)}" in err, err[-2000:]

    batch = corpus("05_plugin_trigger_avro.yaml", tmp_path, {
        "localhost:9092": bootstrap, "http://localhost:8085": schema_registry_url,
        "avro_topic": topic, "batchGroup": f"g-{uuid.uuid4().hex[:8]}"})
    docs, _ = job(batch, bootstrap)
    assert len(docs) == 1
    (doc,) = docs.values()
    assert doc["state"] == "SUCCESS" and doc["trigger"]["messagesCount"] == 5
    assert sorted((r["key"], r["value"]) for r in read_records(doc["trigger"]["uri"])) == \
        sorted((str(p["n"]), p) for p in posts)


def test_08_and_09_consume_avro_through_the_registry(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        schema_registry_url: str) -> None:
    topic = new_topic()
    posts = [{"name": f"q{i}", "n": i} for i in range(7)]
    produce_avro(bootstrap, topic, schema_registry_url, posts)
    for name in ("08_plugin_consume_avro_registry.yaml", "09_plugin_consume_avro.yaml"):
        path = corpus(name, tmp_path, {"localhost:9092": bootstrap,
                                       "http://localhost:8085": schema_registry_url,
                                       "avro_topic": topic})
        out = outputs_of(manual(path, exec_id=f"m-{name[:2]}"))["read"]
        assert out["messagesCount"] == 7 and out["skippedCount"] == 0
        assert [(r["key"], r["value"]) for r in read_records(out["uri"])] == \
            [(str(p["n"]), p) for p in posts]


def test_13_csv_file_input_js_transform_and_avro_produce(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        schema_registry_url: str) -> None:
    """13 as published: a FILE input read by CsvToIon, reshaped row by row by the GraalVM
    JavaScript FileTransform (V8 here), produced as AVRO through the registry: the records
    on the topic decode, through the registry, to the CSV's rows."""
    topic = new_topic()
    csv_file = tmp_path / "posts.csv"
    csv_file.write_text("id,name,text,timestamp\n"
                        "1,ann,hello,2026-01-02T03:04:05Z\n"
                        '2,bo,"hi, there",2026-01-02T03:04:06Z\n'
                        "3,cy,é,2026-01-02T03:04:07Z\n", encoding="utf-8")
    path = corpus("13_plugin_produce_csv_avro.yaml", tmp_path, {
        "localhost:9092": bootstrap, "http://localhost:8085": schema_registry_url,
        "topic: posts": f"topic: {topic}"})
    flow = parse_flow(path)
    execution = Execution(id="csv-1", namespace=flow.namespace, flow_id=flow.id,
                          trigger=TriggerInfo(type="manual"))
    Engine(flow, flow_expressions(flow, {"file": str(csv_file)})).run(execution, {})
    assert execution.state.name == "SUCCESS", execution.document()
    out = outputs_of(execution)
    assert [r["key"] for r in read_records(out["reshape"]["uri"])] == ["1", "2", "3"]
    assert out["to_kafka"]["messagesCount"] == 3

    msgs = read_all(bootstrap, topic)
    decode = avro_deserializer({"schema.registry.url": schema_registry_url})
    assert [(m.key(), decode(m.value())) for m in msgs] == [
        (b"1", {"name": "ann", "text": "hello"}), (b"2", {"name": "bo", "text": "hi, there"}),
        (b"3", {"name": "cy", "text": "é"})]
    assert [(m.value() or b"?")[:1] for m in msgs] == [b"\x00"] * 3  # Confluent framing
    assert [m.timestamp()[1] for m in msgs] == [1767323045000 + i * 1000 for i in range(3)]
    assert all(("source", b"csv") in (m.headers() or []) for m in msgs)


@pytest.fixture(scope="module")
def glue_endpoint() -> Iterator[str]:
    """A real AWS Glue API (moto's server, its schema registry) on a loopback port."""
    with moto_endpoint() as endpoint:
        yield endpoint


def test_22_consume_through_the_aws_glue_registry_then_foreach(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, glue_endpoint: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """22 as published (a region only): AWS's own variables point boto3 at the Glue API.
    Records written in AWS Glue's wire format (schema registered in the registry) are read
    back as the posts; ForEach runs its Log once per value."""
    glue = boto3.client("glue", endpoint_url=glue_endpoint, region_name="eu-west-1",
                        aws_access_key_id="test", aws_secret_access_key="test")
    registry = f"r-{uuid.uuid4().hex[:8]}"
    glue.create_registry(RegistryName=registry)
    topic = new_topic()
    posts = [{"name": f"g{i}", "n": i} for i in range(4)]
    ser = avro_serializer({"schema.registry.url": "aws-glue://eu-west-1",
                           "aws.glue.endpoint": glue_endpoint, "aws.access.key.id": "test",
                           "aws.secret.access.key": "test", "registry.name": registry},
                          POST_SCHEMA, "value")
    values = [ser(p, topic) for p in posts]
    assert all(v is not None and v[:2] == b"\x03\x00" for v in values)  # AWS's header
    produce(bootstrap, topic, values, keys=[str(p["n"]).encode() for p in posts])
    for name, value in (("AWS_ENDPOINT_URL_GLUE", glue_endpoint), ("AWS_ACCESS_KEY_ID", "test"),
                        ("AWS_SECRET_ACCESS_KEY", "test")):
        monkeypatch.setenv(name, value)
    path = corpus("22_consume_glue_foreach.yaml", tmp_path, {
        "localhost:9092": bootstrap, "glue_topic": topic})
    execution = manual(path, exec_id="glue-1")
    out = outputs_of(execution)["read"]
    assert (out["messagesCount"], out["skippedCount"]) == (4, 0), out
    assert [(r["key"], r["value"]) for r in read_records(out["uri"])] == \
        [(str(p["n"]), p) for p in posts]
    said = [line["message"] for line in execution.logs or [] if line["taskId"] == "say"]
    assert said == ["a of 4", "b of 4"]

    # the same vendor on a realtime trigger (a job): one execution per decoded post
    trig = tmp_path / "glue_realtime.yaml"
    trig.write_text(f"""# Kestra-style flow: 22's vendor on a RealtimeTrigger
id: glue_realtime
namespace: company.team
tasks:
  - {{id: say, type: io.kestra.plugin.core.log.Log, message: "post {{{{ trigger.value.name }}}}"}}
triggers:
  - id: posts
    type: io.kestra.plugin.kafka.RealtimeTrigger
    topic: {topic}
    groupId: g-{uuid.uuid4().hex[:8]}
    properties: {{bootstrap.servers: "{bootstrap}"}}
    valueDeserializer: AVRO
    schemaRegistryVendor:
      type: io.kestra.plugin.kafka.registry.AwsGlueSchemaRegistry
      region: eu-west-1
      endpoint: {glue_endpoint}
      accessKey: test
      secretKey: "{{{{ secret('GLUE_SECRET') }}}}"
""", encoding="utf-8")
    docs, err = job(trig, bootstrap, WAXFLOW_SECRET_GLUE_SECRET="test")
    assert len(docs) == 4 and {d["state"] for d in docs.values()} == {"SUCCESS"}
    for post in posts:
        assert f"] post {post['name']}" in err, err[-2000:]


# ------------------------------------------------------------------- Consume, Produce, Subflow
def test_11_consume_then_ion_to_json(bootstrap: str, new_topic: Callable[..., str],
                                     tmp_path: Path) -> None:
    topic = new_topic()
    docs = [{"id": i, "label": f"é{i}"} for i in range(60)]
    produce_json(bootstrap, topic, docs)
    path = corpus("11_plugin_consume_to_jsonl.yaml", tmp_path, {
        "localhost:9093": bootstrap, "topic_json": topic})
    out = outputs_of(manual(path))
    assert out["read"]["messagesCount"] >= 50  # maxRecords 50 is a soft limit (a poll's)
    lines = local_path(out["to_json"]["uri"]).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == out["read"]["messagesCount"]
    assert [r["value"] for r in records] == docs[:len(records)]
    assert {r["topic"] for r in records} == {topic}


def test_12_produce_a_string(bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
                             ) -> None:
    topic = new_topic()
    path = corpus("12_plugin_produce_string.yaml", tmp_path, {
        "localhost:9092": bootstrap, "topic: greetings": f"topic: {topic}"})
    execution = manual(path, exec_id="produce-1")
    assert outputs_of(execution)["send"]["messagesCount"] == 1
    (msg,) = read_all(bootstrap, topic)
    assert (msg.key(), msg.value()) == (b"produce-1", b"Hello there")
    assert ("x-origin", b"example") in (msg.headers() or [])
    assert msg.timestamp()[1] == int(execution.start.timestamp() * 1000)


def test_14_subflow_runs_the_child_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """14's trigger is disabled (as published): a manual execution, whose Subflow runs the
    child flow it names, found under $WAXFLOW_FLOWS_PATH."""
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "log_record.yaml").write_text(
        "id: log_record\nnamespace: streams.consumer\n"
        "inputs:\n  - {id: record, type: JSON}\n"
        "tasks:\n  - id: show\n    type: io.kestra.plugin.core.debug.Return\n"
        "    format: \"record {{ inputs.record | tojson }} from {{ trigger.flowId }}\"\n",
        encoding="utf-8")
    monkeypatch.setenv("WAXFLOW_FLOWS_PATH", str(flows))
    out = outputs_of(manual(CORPUS / "14_blog_realtime_subflow.yaml", exec_id="s-1"))
    assert out["handle"]["state"] == "SUCCESS"
    assert out["handle"]["executionId"].startswith("s-1.")
    assert out["handle"]["outputs"]["show"] == {"value": "record {} from realtime_consumer"}


LOG_RECORD = """\
id: log_record
namespace: streams.consumer
inputs:
  - {id: record, type: JSON}
tasks:
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.record.topic }}@{{ inputs.record.offset }}: {{ inputs.record.value.n }}"
"""


def test_15_polling_trigger_runs_a_subflow_per_record(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """15 with its trigger enabled (published disabled): each batch becomes JSON lines, and
    ForEachItem runs the log_record child (under $WAXFLOW_FLOWS_PATH) once per record, its
    input read from the batch file; a batch of no good record skips ForEachItem (runIf)."""
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "log_record.yaml").write_text(LOG_RECORD, encoding="utf-8")
    topic, group = new_topic(), f"g-{uuid.uuid4().hex[:8]}"
    path = corpus("15_blog_polling_foreachitem.yaml", tmp_path, {
        "disabled: true": "disabled: false", "kafka:29092": bootstrap,
        "topic: generated": f"topic: {topic}", '"polling-consumer"': group})
    env = {"WAXFLOW_FLOWS_PATH": str(flows)}

    # a batch whose only record is not JSON (onSerdeError SKIPPED): messagesCount 0
    produce(bootstrap, topic, [b"{not json"])
    docs, _ = job(path, bootstrap, **env)
    (doc,) = docs.values()
    assert doc["state"] == "SUCCESS" and doc["trigger"]["messagesCount"] == 0
    assert [(r["taskId"], r["state"]) for r in doc["taskRuns"]] == [
        ("ion_to_jsonl", "SUCCESS"), ("each", "SKIPPED")]

    produce_json(bootstrap, topic, [{"n": i} for i in range(3)])
    docs, _ = job(path, bootstrap, **env)
    (doc,) = docs.values()
    assert doc["state"] == "SUCCESS", doc
    each = {r["taskId"]: r for r in doc["taskRuns"]}["each"]
    assert each["state"] == "SUCCESS"
    out = each["outputs"]
    assert out["numberOfBatches"] == 3 and out["iterations"] == {"SUCCESS": 3}
    merged = [json.loads(line) for line in
              local_path(out["uri"]).read_text(encoding="utf-8").splitlines()]
    assert [(m["iteration"], m["state"], m["outputs"]["show"]["value"]) for m in merged] == [
        (i + 1, "SUCCESS", f"{topic}@{i + 1}: {i}") for i in range(3)]
    # child ids: <parent id>.<taskrun id>.<iteration>
    assert {m["executionId"].rsplit(".", 1)[0] for m in merged} == {
        merged[0]["executionId"].rsplit(".", 1)[0]}
    assert [m["executionId"] for m in merged] == [
        f"{merged[0]['executionId'].rsplit('.', 1)[0]}.{i + 1}" for i in range(3)]
    assert merged[0]["executionId"].startswith(f"{doc['id']}.")


def test_plugin_defaults_fill_the_connection_of_every_kafka_task(
        bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """Kestra users set the cluster once with pluginDefaults; a variable names the topic."""
    topic = new_topic()
    flow = parse_flow_text(f"""
id: defaults
namespace: tests
variables: {{topic: {topic}}}
pluginDefaults:
  - type: io.kestra.plugin.kafka
    values:
      properties: {{bootstrap.servers: "{bootstrap}"}}
      valueSerializer: JSON
      valueDeserializer: JSON
tasks:
  - id: send
    type: io.kestra.plugin.kafka.Produce
    topic: "{{{{ vars.topic }}}}"
    from: [{{key: a, value: {{n: 1}}}}, {{key: b, value: {{n: 2}}}}]
  - id: read
    type: io.kestra.plugin.kafka.Consume
    topic: "{{{{ vars.topic }}}}"
  - id: to_json
    type: io.kestra.plugin.serdes.json.IonToJson
    from: "{{{{ outputs.read.uri }}}}"
""", "defaults.yaml")
    execution = Execution(id="d-1", namespace="tests", flow_id="defaults",
                          trigger=TriggerInfo(type="manual"))
    Engine(flow, flow_expressions(flow)).run(execution, {})
    assert execution.state.name == "SUCCESS", execution.document()
    out = outputs_of(execution)
    lines = local_path(out["to_json"]["uri"]).read_text(encoding="utf-8").splitlines()
    assert [(r["key"], r["value"]) for r in map(json.loads, lines)] == [
        ("a", {"n": 1}), ("b", {"n": 2})]
