"""Run a flow's executions outside Bytewax: ``waxflow test`` (no broker) and ``replay``.

``waxflow test FLOW --records FILE.jsonl`` runs one execution per line with the same engine,
templates and task code as ``waxflow run``, but reads records from a file and keeps the
documents in memory: nothing touches Kafka (tasks that call HTTP still do). Each line is
either ``{"value": ..., "key": ..., "topic": ..., "partition": ..., "offset": ...,
"headers": {...}}`` or any other JSON value (then it is the record value).

``waxflow executions replay ID --flow FLOW`` re-reads the execution's record from Kafka and
runs it again under the same id (a new runId), writing its documents to the execution log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from waxflow.connectors.kafka_config import client_conf
from waxflow.connectors.kafka_output import KafkaOutput
from waxflow.connectors.kafka_source import record_fields
from waxflow.connectors.storage import Storage
from waxflow.dataflows.compiler import build_runner, trigger_deserializer
from waxflow.errors import FlowError, Problem
from waxflow.execution import Execution, TriggerInfo, execution_id
from waxflow.expressions import Expressions
from waxflow.flow import BatchTrigger, FlowBase, ScheduleTrigger
from waxflow.operators.deserialize import decode
from waxflow.operators.engine import Engine
from waxflow.records import Decoded, RawRecord


@dataclass
class MemoryBatch:
    """Stands in for the execution log in ``waxflow test``: keeps documents in memory."""

    documents: list[bytes] = field(default_factory=list)
    produced: list[tuple[str, bytes | None]] = field(default_factory=list)

    def write(self, execution_id: str, document: bytes) -> None:
        self.documents.append(document)

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        self.produced.append((topic, value))

    def wait(self, timeout: float = 0) -> None:
        return


def _line_record(flow: FlowBase, line_no: int, item: Any) -> Decoded:
    trig = flow.kafka_trigger
    topics = trig.topic_list() or ["test"]
    if isinstance(item, dict) and "value" in item:
        headers = {str(k): str(v) for k, v in (item.get("headers") or {}).items()}
        raw = RawRecord(str(item.get("topic", topics[0])), int(item.get("partition", 0)),
                        int(item.get("offset", line_no - 1)), None, None,
                        item.get("timestamp"),
                        tuple((k, v.encode()) for k, v in headers.items()))
        return Decoded(raw, item.get("key"), item["value"])
    raw = RawRecord(topics[0], 0, line_no - 1, None, None, None, ())
    return Decoded(raw, None, item)


def _read_jsonl(records_file: Path) -> list[tuple[int, Any]]:
    try:
        lines = records_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise FlowError([Problem(str(records_file), None, None, "", str(exc))]) from None
    items = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            items.append((no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise FlowError([Problem(str(records_file), no, exc.colno, "",
                                     f"not a JSON line: {exc.msg}")]) from None
    return items


def run_jsonl(flow: FlowBase, records_file: Path) -> list[dict[str, Any]]:
    """Run the flow on the file's records; return the terminal documents.

    Realtime flows: one execution per line. Batched flows (``kafka.Trigger``): the lines
    are one batch, stored as an ION file in internal storage, one execution. Schedules:
    one tick per line, the line's object merged into ``trigger``.
    """
    items = _read_jsonl(records_file)
    trig = flow.trigger
    if isinstance(trig, BatchTrigger | ScheduleTrigger):
        return _run_without_records(flow, trig, items)
    runner = build_runner(flow, standalone=True)
    batch = MemoryBatch()
    out: list[dict[str, Any]] = []
    for no, item in items:
        job = runner.job(_line_record(flow, no, item), batch)  # type: ignore[arg-type]
        if job is not None:
            out.append(runner.executor.run_job(job, batch).document())  # type: ignore[arg-type]
    return out


def _run_without_records(flow: FlowBase, trig: BatchTrigger | ScheduleTrigger,
                         items: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    exprs = Expressions()
    engine = Engine(flow, exprs)
    scope = KafkaOutput(f"{flow.namespace}.{flow.id}", None).scope()
    now = datetime.now(UTC).isoformat()
    runs: list[tuple[str, dict[str, Any], TriggerInfo]]
    if isinstance(trig, ScheduleTrigger):
        runs = []
        for no, item in items:
            variables = {"date": now, **(item if isinstance(item, dict) else {})}
            runs.append((f"test-{no}", variables,
                         TriggerInfo(type=trig.type, date=str(variables["date"]))))
    else:
        records = []
        for no, item in items:
            rec = _line_record(flow, no, item)
            records.append({"key": rec.key, "value": rec.value, "topic": rec.raw.topic,
                            "partition": rec.raw.partition, "offset": rec.raw.offset,
                            "timestamp": rec.raw.timestamp,
                            "headers": {k: (v or b"").decode() for k, v in rec.raw.headers}})
        uri, count = Storage().put_records(f"{flow.namespace}/{flow.id}/test-batch.ion",
                                           records)
        runs = [("test-batch", {"uri": uri, "messagesCount": count, "offsets": {}},
                 TriggerInfo(type=trig.type, uri=uri, messages_count=count, offsets={}))]
    out = []
    for exec_id, trigger_vars, info in runs:
        execution = Execution(id=exec_id, namespace=flow.namespace, flow_id=flow.id,
                              trigger=info)
        engine.run(execution, trigger_vars, scope)
        out.append(execution.document())
    return out


def fetch_record(flow: FlowBase, topic: str, partition: int, offset: int,
                 *, timeout: float = 15.0) -> RawRecord:
    """Read one record from Kafka by its coordinates (no group, nothing committed)."""
    conf = client_conf(flow.kafka_trigger.properties)
    conf.update({"group.id": "waxflow-replay", "enable.auto.commit": False,
                 "enable.partition.eof": True})
    consumer = Consumer(conf)
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        msg = consumer.poll(timeout)
        err = msg.error() if msg is not None else None
        if msg is None or err is not None or msg.offset() != offset:
            why = err.str() if err is not None else "not found"
            raise LookupError(f"record {topic}/{partition}@{offset} cannot be read ({why}); "
                              "it may have been deleted by retention")
        return RawRecord(*record_fields(msg))
    finally:
        consumer.close()


def replay(flow: FlowBase, exec_id: str, *, topic: str, partition: int,
           offset: int) -> Execution:
    """Run the record behind ``exec_id`` again under the same id; wait for the log."""
    if execution_id(flow.namespace, flow.id, topic, partition, offset) != exec_id:
        raise LookupError(f"execution {exec_id} is not an execution of flow "
                          f"{flow.namespace}.{flow.id}")
    runner = build_runner(flow, standalone=True)
    trig = flow.kafka_trigger
    raw = fetch_record(flow, topic, partition, offset)
    rec = decode(raw, trigger_deserializer(trig, "key"), trigger_deserializer(trig, "value"),
                 fail=False, filters={})
    log, _pool = runner.executor.resources()
    batch = log.batch()
    job = runner.job(rec, batch)
    assert job is not None  # replay decodes without header filters
    execution = runner.executor.run_job(job, batch)
    batch.wait()
    log.close()
    return execution
