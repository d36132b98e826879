"""``kafka.Produce`` on the real broker, run by ``waxflow run`` like a user would.

Each flow consumes a small trigger topic and produces to output topics; the tests read those
topics back with a plain confluent-kafka consumer (``read_committed``: the transaction
committed) and decode them with the matching deserializer. Checked: every serializer
round-trips; each record carries ``waxflow.execution.id`` = the producing execution's id;
``partition``, ``timestamp`` (epoch ms and ISO) and headers are honoured; ``from`` as a list,
a map, an NDJSON file and an ION file, with ``messagesCount`` in the execution log; a value that
does not fit its serializer fails the task naming the record and the field, and nothing
reaches the topic; AVRO through a real schema registry (Apicurio, Confluent API) from one flow
process into a second flow's trigger.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient

from tests.flow_helpers import (
    flow_env,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce,
    run_flow,
    write_flow,
)
from tests.kafka_helpers import create_topic, end_offsets, read_all
from waxflow.connectors.avro import avro_deserializer
from waxflow.connectors.execution_log import LOG_HEADER
from waxflow.connectors.ion import write_stream
from waxflow.connectors.serdes import DESERIALIZERS

pytestmark = pytest.mark.integration


def trigger(topic: str, **extra: Any) -> dict[str, Any]:
    return {"id": "in", "type": "kafka.RealtimeTrigger", "topic": topic,
            "groupId": f"g-{uuid.uuid4().hex[:8]}", **extra}


def flow_yaml(flow_id: str, trig: dict[str, Any], tasks: list[dict[str, Any]]) -> str:
    """The flow file text: JSON, which is YAML (no quoting surprises for odd values)."""
    return json.dumps({"id": flow_id, "namespace": "tests.produce", "triggers": [trig],
                       "tasks": tasks}, ensure_ascii=False, indent=1)


def terminal_docs(bootstrap: str, log: str) -> list[dict[str, Any]]:
    docs = list(latest_by_id(log_documents(bootstrap, log)).values())
    assert all(d["terminal"] for d in docs), docs
    return sorted(docs, key=lambda d: (d["trigger"]["partition"], d["trigger"]["offset"]))


def headers_of(msg: Message) -> list[tuple[str, bytes]]:
    return cast(list[tuple[str, bytes]], list(msg.headers() or []))


def outputs(doc: dict[str, Any]) -> dict[str, Any]:
    return {r["taskId"]: r["outputs"] for r in doc["taskRuns"]}


def run_ok(path: Path, bootstrap: str, log: str) -> None:
    result = run_flow(path, flow_env(bootstrap, log), idle=2, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


# ------------------------------------------------------------------ every serializer

# serde -> [(value given in the flow, value the matching deserializer must return)]; each
# value is produced as key and value, then a tombstone (value null) follows
MATRIX: dict[str, list[tuple[Any, Any]]] = {
    "STRING": [("hello", "hello"), ("héllo ✓ 𝄞", "héllo ✓ 𝄞"), ("", ""),
               ("{{ trigger.value }}", "go")],
    "INTEGER": [(1, 1), (-1, -1), (2**31 - 1, 2**31 - 1), (-(2**31), -(2**31)), ("42", 42),
                ("{{ trigger.offset }}", 0)],
    "LONG": [(2**63 - 1, 2**63 - 1), (-(2**63), -(2**63)), (1_700_000_000_123, 1_700_000_000_123)],
    "SHORT": [(2**15 - 1, 2**15 - 1), (-(2**15), -(2**15)), (0, 0)],
    "FLOAT": [(1.5, 1.5), (-0.25, -0.25), ("3", 3.0)],
    "DOUBLE": [(3.141592653589793, 3.141592653589793), (-1e300, -1e300), (7, 7.0)],
    "BYTES": [("text é", "text é".encode()), ({"$base64": "AAH+/w=="}, b"\x00\x01\xfe\xff")],
    "UUID": [("123e4567-e89b-12d3-a456-426614174000", "123e4567-e89b-12d3-a456-426614174000"),
             ("123E4567-E89B-12D3-A456-42661417400A", "123e4567-e89b-12d3-a456-42661417400a")],
    "JSON": [({"a": 1, "b": [True, None, "é"], "c": {"d": 2.5}},
              {"a": 1, "b": [True, None, "é"], "c": {"d": 2.5}}),
             ([1, 2], [1, 2]), ("s", "s"), (3, 3)],
    "ION": [({"a": 1, "b": [True, False, None, 1.5, "s"], "c": {"d": -3}},
             {"a": 1, "b": [True, False, None, 1.5, "s"], "c": {"d": -3}}),
            (2**70, 2**70), ("text", "text")],
    "VOID": [(None, None)],
}


# `from` items that are not records are record values
BARE: list[Any] = [1, "two", {"three": 3}, [4], None]


@dataclass
class MatrixRun:
    bootstrap: str
    topics: dict[str, str]
    doc: dict[str, Any]
    seconds: float


@pytest.fixture(scope="module")
def matrix(bootstrap: str, admin: AdminClient,
           tmp_path_factory: pytest.TempPathFactory) -> MatrixRun:
    """One flow, one trigger record, one transactional Produce per serializer."""
    tag = uuid.uuid4().hex[:8]
    src = f"t-produce-src-{tag}"
    create_topic(admin, src, 1)
    topics = {name: f"t-produce-{name.lower()}-{tag}" for name in MATRIX}
    topics["bare"] = f"t-produce-bare-{tag}"
    for topic in topics.values():
        create_topic(admin, topic, 1)
    produce(bootstrap, src, [b"go"])
    tasks = []
    for name, pairs in MATRIX.items():
        records: list[dict[str, Any]] = [{"key": given, "value": given} for given, _ in pairs]
        if name != "VOID":
            records.append({"key": pairs[0][0], "value": None})
        tasks.append({"id": f"p_{name.lower()}", "type": "kafka.Produce",
                      "topic": topics[name], "keySerializer": name, "valueSerializer": name,
                      "from": records})
    tasks.append({"id": "p_bare", "type": "kafka.Produce", "topic": topics["bare"],
                  "valueSerializer": "JSON", "from": BARE})
    path = write_flow(tmp_path_factory.mktemp("matrix"), flow_yaml("matrix", trigger(src), tasks))
    log = new_log_topic()
    t0 = time.monotonic()
    run_ok(path, bootstrap, log)
    (doc,) = terminal_docs(bootstrap, log)
    return MatrixRun(bootstrap, topics, doc, time.monotonic() - t0)


@pytest.mark.parametrize("name", list(MATRIX))
def test_serializer_round_trips_through_the_broker(matrix: MatrixRun, name: str) -> None:
    assert matrix.doc["state"] == "SUCCESS", matrix.doc["error"]
    pairs = MATRIX[name]
    expected = [(exp, exp) for _, exp in pairs]
    if name != "VOID":
        expected.append((pairs[0][1], None))
    assert outputs(matrix.doc)[f"p_{name.lower()}"] == {"messagesCount": len(expected)}

    msgs = read_all(matrix.bootstrap, matrix.topics[name], isolation="read_committed")
    de = DESERIALIZERS[name]
    got = [(de(m.key()), de(m.value())) for m in msgs]
    assert got == expected
    for (key, value), m in zip(expected, msgs, strict=True):
        assert type(de(m.key())) is type(key) and type(de(m.value())) is type(value)
        if value is None:
            assert m.value() is None, "a null value is a tombstone, not an empty payload"
        assert headers_of(m) == [(LOG_HEADER, matrix.doc["id"].encode())]


def test_bare_values_in_from_are_record_values(matrix: MatrixRun) -> None:
    assert outputs(matrix.doc)["p_bare"] == {"messagesCount": len(BARE)}
    msgs = read_all(matrix.bootstrap, matrix.topics["bare"], isolation="read_committed")
    assert [DESERIALIZERS["JSON"](m.value()) for m in msgs] == BARE
    assert [m.key() for m in msgs] == [None] * len(BARE)


def test_integer_is_java_big_endian_on_the_wire(matrix: MatrixRun) -> None:
    msgs = read_all(matrix.bootstrap, matrix.topics["INTEGER"], isolation="read_committed")
    assert msgs[0].value() == b"\x00\x00\x00\x01"
    assert msgs[1].value() == b"\xff\xff\xff\xff"
    longs = read_all(matrix.bootstrap, matrix.topics["LONG"], isolation="read_committed")
    assert longs[2].value() == (1_700_000_000_123).to_bytes(8, "big")


# ------------------------------------------------------- partition, timestamp, headers

def test_partition_timestamp_and_headers_are_honoured(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    src, dst, plain = new_topic(1), new_topic(3), new_topic(3)
    produce(bootstrap, src, [b"go"])
    records = [
        {"key": "a", "value": "v0", "partition": 2, "timestamp": 1_700_000_000_123,
         "headers": {"rec": "zero"}},
        {"key": "b", "value": "v1", "partition": 0, "timestamp": "2024-01-02T03:04:05.678Z"},
        {"key": "c", "value": "v2", "timestamp": "2024-01-02T04:04:05.678+01:00"},
        {"key": "d", "value": "v3", "timestamp": "{{ trigger.timestamp }}"},
        {"key": "e", "value": "v4"},
    ]
    tasks = [
        {"id": "txn", "type": "kafka.Produce", "topic": dst, "partition": 1,
         "headers": {"source": "{{ flow.id }}", "trigger-value": "{{ trigger.value }}"},
         "from": records},
        {"id": "plain", "type": "kafka.Produce", "topic": plain, "transactional": False,
         "partition": 2, "from": {"key": "k", "value": "single map",
                                  "timestamp": "2024-06-30T23:59:59.999+00:00"}},
    ]
    path = write_flow(tmp_path, flow_yaml("placement", trigger(src), tasks))
    log = new_log_topic()
    before = int(time.time() * 1000)
    run_ok(path, bootstrap, log)
    after = int(time.time() * 1000)
    (doc,) = terminal_docs(bootstrap, log)
    assert doc["state"] == "SUCCESS", doc["error"]
    assert outputs(doc) == {"txn": {"messagesCount": 5}, "plain": {"messagesCount": 1}}
    exec_header = (LOG_HEADER, doc["id"].encode())

    by_key = {m.key() or b"": m for m in read_all(bootstrap, dst, isolation="read_committed")}
    assert sorted(by_key) == [b"a", b"b", b"c", b"d", b"e"]
    iso = int(dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC).timestamp() * 1000)
    expected = {  # key -> (partition, CreateTime)
        b"a": (2, 1_700_000_000_123),  # the record's own partition and epoch ms
        b"b": (0, iso),                 # ISO with Z
        b"c": (1, iso),                 # the task's partition; ISO with an offset, same instant
        b"d": (1, doc["trigger"]["timestamp"]),
    }
    for key, (partition, ts) in expected.items():
        m = by_key[key]
        assert (m.partition(), m.timestamp()) == (partition, (1, ts)), key
    e = by_key[b"e"]
    assert e.partition() == 1
    assert e.timestamp()[0] == 1 and before - 5000 <= e.timestamp()[1] <= after + 5000
    task_headers = [("source", b"placement"), ("trigger-value", b"go")]
    assert headers_of(by_key[b"a"]) == [exec_header, *task_headers, ("rec", b"zero")]
    for key in (b"b", b"c", b"d", b"e"):
        assert headers_of(by_key[key]) == [exec_header, *task_headers]

    (single,) = read_all(bootstrap, plain, isolation="read_committed")
    assert (single.key(), single.value(), single.partition()) == (b"k", b"single map", 2)
    stamp = dt.datetime(2024, 6, 30, 23, 59, 59, 999000, tzinfo=dt.UTC).timestamp()
    assert single.timestamp() == (1, int(stamp * 1000))
    assert headers_of(single) == [exec_header]


# ---------------------------------------------------------------- from files

def test_from_ndjson_and_ion_files(bootstrap: str, new_topic: Callable[..., str],
                                   tmp_path: Path) -> None:
    src, nd_topic, ion_topic = new_topic(1), new_topic(2), new_topic(2)
    produce(bootstrap, src, [b"go"])
    nd_records: list[dict[str, Any]] = [
        {"key": f"n{i}", "value": {"i": i, "name": f"row {i}", "ok": i % 2 == 0}}
        for i in range(25)]
    nd_records[3]["partition"] = 1
    nd_records[4]["timestamp"] = 1_600_000_000_000
    nd_records[5]["headers"] = {"line": "6"}
    ndjson = tmp_path / "records.ndjson"
    lines = [json.dumps(r) for r in nd_records]
    lines.insert(10, "")  # blank lines are not records
    ndjson.write_text("\n".join(lines) + "\n")

    stamp = dt.datetime(2023, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)
    ion_records: list[dict[str, Any]] = [
        {"key": f"i{i}", "value": {"i": i, "nested": {"list": [1, "two", None, 3.5]}},
         "partition": i % 2}
        for i in range(7)
    ]
    ion_records[0]["timestamp"] = stamp  # an ION timestamp
    ion_records[1]["value"] = {"blob": b"\x00\x01\xff"}
    ion_file = tmp_path / "records.ion"
    with ion_file.open("wb") as fp:
        assert write_stream(fp, ion_records) == 7

    tasks = [
        {"id": "nd", "type": "kafka.Produce", "topic": nd_topic, "valueSerializer": "JSON",
         "from": ndjson.as_uri()},
        {"id": "ion", "type": "kafka.Produce", "topic": ion_topic, "valueSerializer": "ION",
         "from": ion_file.as_uri()},
    ]
    path = write_flow(tmp_path, flow_yaml("files", trigger(src), tasks))
    log = new_log_topic()
    run_ok(path, bootstrap, log)
    (doc,) = terminal_docs(bootstrap, log)
    assert doc["state"] == "SUCCESS", doc["error"]
    assert outputs(doc) == {"nd": {"messagesCount": 25}, "ion": {"messagesCount": 7}}

    got = {(m.key() or b"").decode(): m
           for m in read_all(bootstrap, nd_topic, isolation="read_committed")}
    assert len(got) == 25
    for r in nd_records:
        m = got[str(r["key"])]
        assert DESERIALIZERS["JSON"](m.value()) == r["value"]
        assert (LOG_HEADER, doc["id"].encode()) in headers_of(m)
    assert got["n3"].partition() == 1
    assert got["n4"].timestamp() == (1, 1_600_000_000_000)
    assert ("line", b"6") in headers_of(got["n5"])

    got = {(m.key() or b"").decode(): m
           for m in read_all(bootstrap, ion_topic, isolation="read_committed")}
    assert sorted(got) == [f"i{i}" for i in range(7)]
    for r in ion_records:
        m = got[str(r["key"])]
        assert DESERIALIZERS["ION"](m.value()) == r["value"]
        assert m.partition() == r["partition"]
    assert got["i0"].timestamp() == (1, int(stamp.timestamp() * 1000))


def test_missing_from_file_fails_the_task(bootstrap: str, new_topic: Callable[..., str],
                                          tmp_path: Path) -> None:
    src, dst = new_topic(1), new_topic(1)
    produce(bootstrap, src, [b"go"])
    missing = tmp_path / "nope.ndjson"
    tasks = [{"id": "out", "type": "kafka.Produce", "topic": dst, "from": missing.as_uri()}]
    path = write_flow(tmp_path, flow_yaml("nofile", trigger(src), tasks))
    log = new_log_topic()
    run_ok(path, bootstrap, log)
    (doc,) = terminal_docs(bootstrap, log)
    assert doc["state"] == "FAILED"
    assert doc["error"]["taskId"] == "out"
    assert "does not exist" in doc["error"]["message"] and "nope.ndjson" in doc["error"]["message"]
    assert end_offsets(bootstrap, dst, 1) == {0: 0}


# ------------------------------------------------------- values that do not fit

# trigger record (JSON: the `from` of one execution) -> what the task's error must say
BAD: list[tuple[list[dict[str, Any]], list[str]]] = [
    ([{"key": 1, "value": 2}, {"key": "x", "value": 3}],
     ["record 1", "field `key`", "does not fit INTEGER", "'x'"]),
    ([{"key": 1, "value": 2}, {"key": 4, "value": "abc"}],
     ["record 1", "field `value`", "does not fit INTEGER", "'abc'"]),
    ([{"key": 1, "value": 2}, {"key": 5, "value": 2**31}, {"key": 6, "value": 7}],
     ["record 1", "field `value`", "does not fit INTEGER", str(2**31)]),
    ([{"key": 1, "value": 2, "timestamp": "yesterday"}],
     ["timestamp 'yesterday' is neither epoch milliseconds nor ISO-8601"]),
    # a map without record keys is a bare value (like any non-map item)
    ([{"key": 1, "value": 2}, {"nothing": "here"}],
     ["record 1", "field `value`", "INTEGER expects a number, got dict"]),
]


def test_value_that_does_not_fit_fails_the_task_and_sends_nothing(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    src, dst = new_topic(1), new_topic(1)
    produce(bootstrap, src, [json.dumps(records).encode() for records, _ in BAD])
    tasks: list[dict[str, Any]] = [
             {"id": "out", "type": "kafka.Produce", "topic": dst, "keySerializer": "INTEGER",
              "valueSerializer": "INTEGER", "from": "{{ trigger.value }}"},
             {"id": "after", "type": "core.Set", "values": {"reached": True}}]
    path = write_flow(tmp_path, flow_yaml("misfit", trigger(src, valueDeserializer="JSON"),
                                          tasks))
    log = new_log_topic()
    run_ok(path, bootstrap, log)
    docs = terminal_docs(bootstrap, log)
    assert [d["trigger"]["offset"] for d in docs] == list(range(len(BAD)))
    for doc, (_records, says) in zip(docs, BAD, strict=True):
        assert doc["state"] == "FAILED", doc
        assert doc["error"]["taskId"] == "out"
        for text in says:
            assert text in doc["error"]["message"], (text, doc["error"])
        (run,) = doc["taskRuns"]  # the task after it did not run
        assert run["taskId"] == "out" and run["state"] == "FAILED"
        assert run["attempts"][-1]["error"] == doc["error"]["message"]
        assert run["outputs"] is None
    # all records are serialized before the first is sent: not even record 0 got out
    assert end_offsets(bootstrap, dst, 1) == {0: 0}


def test_float_overflow_names_record_and_field(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    src, dst = new_topic(1), new_topic(1)
    produce(bootstrap, src, [b"go"])
    tasks = [{"id": "out", "type": "kafka.Produce", "topic": dst, "valueSerializer": "FLOAT",
              "from": [{"value": 1.0}, {"value": 1e39}]}]
    path = write_flow(tmp_path, flow_yaml("overflow", trigger(src), tasks))
    log = new_log_topic()
    run_ok(path, bootstrap, log)
    (doc,) = terminal_docs(bootstrap, log)
    assert end_offsets(bootstrap, dst, 1) == {0: 0}
    assert doc["state"] == "FAILED" and doc["error"]["taskId"] == "out"
    assert "record 1" in doc["error"]["message"]
    assert "field `value`" in doc["error"]["message"]


def test_delivery_failure_fails_the_task_not_the_job(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    src, dst = new_topic(1), new_topic(1)
    produce(bootstrap, src, [json.dumps(r).encode() for r in
                             ([{"value": "ok-1"}], [{"value": "bad", "partition": 5}],
                              [{"value": "ok-2"}])])
    tasks = [{"id": "out", "type": "kafka.Produce", "topic": dst, "from": "{{ trigger.value }}"}]
    path = write_flow(tmp_path, flow_yaml("badpart", trigger(src, valueDeserializer="JSON"),
                                          tasks))
    log = new_log_topic()
    result = run_flow(path, flow_env(bootstrap, log), idle=2, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    docs = terminal_docs(bootstrap, log)
    assert [d["state"] for d in docs] == ["SUCCESS", "FAILED", "SUCCESS"]
    assert "Unknown partition" in docs[1]["error"]["message"]
    values = sorted(m.value() or b"" for m in read_all(bootstrap, dst, isolation="read_committed"))
    assert values == [b"ok-1", b"ok-2"]


# ------------------------------------------------------------------------- AVRO

ORDER_SCHEMA = json.dumps({
    "type": "record", "name": "Order", "namespace": "tests.waxflow",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "item", "type": "string"},
        {"name": "price", "type": "double"},
        {"name": "qty", "type": ["null", "int"], "default": None},
        {"name": "addr", "type": {"type": "record", "name": "Addr",
                                  "fields": [{"name": "zip", "type": "string"}]}},
    ],
})
ORDERS: list[dict[str, Any]] = [
    {"id": 1, "item": "book", "price": 12.5, "qty": 2, "addr": {"zip": "75001"}},
    {"id": 2, "item": "pen", "price": 1.25, "qty": None, "addr": {"zip": "10115"}},
    {"id": 2**40, "item": "ink ✓", "price": 0.0, "qty": -1, "addr": {"zip": ""}},
]


def test_avro_from_one_flow_into_another_through_the_registry(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, schema_registry_url: str
) -> None:
    src, mid = new_topic(1), new_topic(1)
    serde = {"schema.registry.url": schema_registry_url}
    good = [{"key": f"order-{o['id']}", "value": o} for o in ORDERS]
    bad = [{"key": "order-x", "value": {**ORDERS[0], "addr": {"zip": 75001}}}]
    produce(bootstrap, src, [json.dumps(good).encode(), json.dumps(bad).encode()])
    producer = flow_yaml("avro-out", trigger(src, valueDeserializer="JSON"), [
        {"id": "emit", "type": "kafka.Produce", "topic": mid, "from": "{{ trigger.value }}",
         "keySerializer": "AVRO", "keyAvroSchema": '"string"',
         "valueSerializer": "AVRO", "valueAvroSchema": ORDER_SCHEMA,
         "serdeProperties": serde},
    ])
    consumer = flow_yaml("avro-in", trigger(mid, keyDeserializer="AVRO",
                                            valueDeserializer="AVRO", serdeProperties=serde), [
        {"id": "got", "type": "core.Set",
         "values": {"order": "{{ trigger.value }}", "key": "{{ trigger.key }}",
                    "zip": "{{ trigger.value.addr.zip }}"}},
    ])
    log1, log2 = new_log_topic(), new_log_topic()
    run_ok(write_flow(tmp_path, producer, "producer.yaml"), bootstrap, log1)

    ok, failed = terminal_docs(bootstrap, log1)
    assert ok["state"] == "SUCCESS", ok["error"]
    assert outputs(ok) == {"emit": {"messagesCount": 3}}
    # a value that does not fit the schema: the task fails naming the record and the field
    assert failed["state"] == "FAILED"
    assert failed["error"]["taskId"] == "emit"
    message = failed["error"]["message"]
    assert "record 0 field `value` does not fit AVRO" in message, message
    assert "on field zip on field addr" in message, message

    # the topic holds Confluent-framed AVRO that the registry resolves, from this process too
    msgs = read_all(bootstrap, mid, isolation="read_committed")
    assert len(msgs) == 3
    de = avro_deserializer(serde)
    assert [de(m.value()) for m in msgs] == ORDERS
    assert [de(m.key()) for m in msgs] == [g["key"] for g in good]
    assert all((m.value() or b"")[:1] == b"\x00" for m in msgs)
    with urllib.request.urlopen(f"{schema_registry_url}/subjects", timeout=10) as resp:
        subjects = json.load(resp)
    assert {f"{mid}-key", f"{mid}-value"} <= set(subjects)

    # a second flow process triggers on the topic and decodes through the registry
    run_ok(write_flow(tmp_path, consumer, "consumer.yaml"), bootstrap, log2)
    docs = terminal_docs(bootstrap, log2)
    assert [d["state"] for d in docs] == ["SUCCESS"] * 3, [d["error"] for d in docs]
    assert [outputs(d)["got"] for d in docs] == [
        {"order": o, "key": f"order-{o['id']}", "zip": o["addr"]["zip"]} for o in ORDERS]
    # produced records carry the upstream execution: flow 2 records where it came from
    assert {d["upstreamExecutionId"] for d in docs} == {ok["id"]}
