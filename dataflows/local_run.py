"""Run a flow's executions outside Bytewax: ``waxflow test`` (a dry run) and ``replay``.

``waxflow test FLOW --records FILE.jsonl`` runs the flow's executions with the same engine,
deserializers, ``onSerdeError``, ``headerFilters``, templates and task code as ``waxflow run``,
but reads the trigger's records from a file and keeps the documents in memory. Nothing
touches Kafka: what ``kafka.Produce`` (and a DLQ) would send is captured
(:class:`DryRunScope`), ``kafka.Consume`` reads ``--consume TOPIC=FILE.jsonl`` files
instead of a broker (and refuses to run without one for its topic). Tasks that call HTTP,
warehouses or S3 still do. ``core.Log`` messages go to the log (stderr).

Each line of a records file is either ``{"value": ..., "key": ..., "topic": ...,
"partition": ..., "offset": ..., "timestamp": ..., "headers": {...}}`` or any other JSON
value (then it is the record value). A key or value is turned into the bytes a producer would
have written for the deserializer that reads it (text as is for STRING and JSON, other JSON
values as JSON text; numbers big-endian for INTEGER, LONG, ...), then deserialized: so a JSON
line read with ``valueDeserializer: STRING`` arrives as text, and ``"not json"`` read with
JSON goes through ``onSerdeError``. AVRO values are taken as already decoded (no schema
registry is called).

A flow without trigger (a manual flow) runs once; ``--records`` is then not needed.

``waxflow executions replay ID --flow FLOW`` re-reads the execution's record from Kafka and
runs it again under the same id (a new runId), writing its documents to the execution log.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from confluent_kafka import Consumer, TopicPartition

from waxflow.connectors.kafka_config import client_conf
from waxflow.connectors.kafka_consume import Consume
from waxflow.connectors.kafka_source import record_fields
from waxflow.connectors.serdes import SerdeError, serializer
from waxflow.connectors.storage import Storage
from waxflow.dataflows.compiler import (
    build_executor,
    build_runner,
    flow_expressions,
    trigger_deserializer,
)
from waxflow.errors import FlowError, Problem
from waxflow.execution import Execution, TriggerInfo, execution_id
from waxflow.flow import BatchTrigger, FlowBase, KafkaTrigger, ScheduleTrigger
from waxflow.operators.deserialize import decode
from waxflow.operators.engine import Engine
from waxflow.operators.executor import Job
from waxflow.records import Decoded, HeaderPairs, RawRecord, RecordFields
from waxflow.tasks import RunContext, TaskFailure


@dataclass
class Produced:
    """One record a dry run did not send."""

    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp: int | None = None

    def document(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "key": _shown(self.key),
                "value": _shown(self.value), "timestamp": self.timestamp,
                "headers": {k: _shown(v) for k, v in self.headers}}


def _shown(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"$base64": base64.b64encode(data).decode("ascii")}


class _Capture:
    """A ``Deliveries`` that keeps records instead of producing them."""

    def __init__(self, scope: DryRunScope) -> None:
        self._scope = scope

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, Any]] | None = None, *, partition: int | None = None,
                timestamp: int | None = None) -> None:
        self._scope.produced.append(Produced(topic, partition, key, value,
                                             [(k, _bytes(v)) for k, v in headers or []],
                                             timestamp))

    def wait(self, timeout: float | None = None) -> None:
        return


def _bytes(value: Any) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


@dataclass
class DryRunScope:
    """Stands in for the execute step's per-batch scope and for the execution log in a dry
    run: ``kafka.Produce`` gets a :class:`_Capture` instead of a producer, a DLQ record and
    every execution document are kept in memory."""

    DRY_RUN: ClassVar[bool] = True  # kafka.Produce: no reachability check
    deferring: ClassVar[bool] = False  # captures are complete when the task returns
    produced: list[Produced] = field(default_factory=list)
    documents: list[bytes] = field(default_factory=list)
    deferred: list[Any] = field(default_factory=list)  # always empty (see `deferring`)

    def deliveries(self, conf: Mapping[str, Any], transactional: bool) -> _Capture:
        return _Capture(self)

    def settle(self) -> dict[str, tuple[str, str]]:
        return {}

    # the execution log's batch (operators.executor.LogBatch)
    def write(self, execution_id: str, document: bytes) -> None:
        self.documents.append(document)

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        _Capture(self).produce(topic, key, value, headers)

    def wait(self, timeout: float = 0) -> None:
        return



def encode(value: Any, serde: str) -> bytes | None:
    """The bytes a producer writes for ``value`` read back with the ``serde`` deserializer
    (see the module doc)."""
    if value is None:
        return None
    if serde in ("STRING", "JSON", "AVRO", "ION", "VOID", "UUID", "BYTES", "BYTE_ARRAY"):
        if isinstance(value, str):
            return value.encode()
        if serde in ("ION", "BYTES", "BYTE_ARRAY") and isinstance(value, dict):
            return serializer(serde)(value)
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        return serializer(serde)(value)
    except SerdeError:  # not a number: the bytes of its text (the deserializer refuses them)
        return str(value).encode()


def _line_parts(flow: FlowBase, line_no: int, item: Any) -> tuple[RawRecord, Any, Any]:
    """The raw record of one line (bytes as a producer wrote them) and the line's key and
    value as given."""
    trig = flow.kafka_trigger
    topics = trig.topic_list() or ["test"]
    if isinstance(item, dict) and "value" in item:
        headers = {str(k): str(v) for k, v in (item.get("headers") or {}).items()}
        key, value = item.get("key"), item["value"]
        raw = RawRecord(str(item.get("topic", topics[0])), int(item.get("partition", 0)),
                        int(item.get("offset", line_no - 1)),
                        encode(key, trig.keyDeserializer), encode(value, trig.valueDeserializer),
                        item.get("timestamp"),
                        tuple((k, v.encode()) for k, v in headers.items()))
        return raw, key, value
    raw = RawRecord(topics[0], 0, line_no - 1, None, encode(item, trig.valueDeserializer), None,
                    ())
    return raw, None, item


def _decode_line(flow: FlowBase, line_no: int, item: Any) -> Decoded:
    """One line as the deserialize step hands it on (raises SerdeStop for onSerdeError
    FAIL)."""
    trig = flow.kafka_trigger
    raw, key, value = _line_parts(flow, line_no, item)
    if "AVRO" in (trig.keyDeserializer, trig.valueDeserializer):  # no registry in a dry run
        def as_given(which: str, given: Any) -> Any:
            if getattr(trig, f"{which}Deserializer") == "AVRO":
                return lambda _data: given
            return trigger_deserializer(trig, which)
        key_de, value_de = as_given("key", key), as_given("value", value)
    else:
        key_de, value_de = trigger_deserializer(trig, "key"), trigger_deserializer(trig, "value")
    return decode(raw, key_de, value_de, fail=trig.onSerdeError.type == "FAIL",
                  filters=trig.headerFilters)


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


# ------------------------------------------------------------------- kafka.Consume, dry
def _consume_tasks(flow: FlowBase) -> list[Consume]:
    return [t for _, t in flow.all_tasks() if isinstance(t, Consume) and not t.disabled]


def _check_consume_inputs(flow: FlowBase, consume: Mapping[str, Path]) -> None:
    missing = []
    for task in _consume_tasks(flow):
        topics = [task.topic] if isinstance(task.topic, str) else list(task.topic)
        absent = [t for t in topics if t not in consume and "{{" not in t]
        if absent:
            missing.append(f"kafka.Consume task '{task.id}' reads {', '.join(absent)}: a dry "
                           f"run never reads a broker; give its records with --consume "
                           f"{absent[0]}=FILE.jsonl")
    if missing:
        raise FlowError([Problem(str(flow.id), None, None, "", m) for m in missing])


@contextlib.contextmanager
def _dry_consume(consume: Mapping[str, Path]) -> Iterator[None]:
    """While inside, ``kafka.Consume`` reads the ``consume`` files (topic -> JSONL) instead of
    a broker: the lines become records (as in ``--records``) that go through the task's own
    deserializers, ``onSerdeError`` and storage; nothing is committed. A DLQ is not sent to
    (its records are left out, as SKIPPED)."""
    real = Consume.run

    def run(self: Consume, ctx: RunContext) -> dict[str, Any] | None:
        topics = [ctx.render(self.topic)] if isinstance(self.topic, str) \
            else [ctx.render(t) for t in self.topic]
        raws: list[RecordFields] = []
        for topic in topics:
            path = consume.get(str(topic))
            if path is None:
                raise TaskFailure(f"dry run: no records for topic {topic} (--consume "
                                  f"{topic}=FILE.jsonl); a dry run never reads a broker")
            for no, item in _read_jsonl(path):
                if not (isinstance(item, dict) and "value" in item):
                    item = {"value": item}
                if self.maxRecords and len(raws) >= self.maxRecords:
                    break
                hdrs: HeaderPairs = tuple((str(k), str(v).encode())
                                          for k, v in (item.get("headers") or {}).items())
                raws.append((str(topic), int(item.get("partition", 0)),
                             int(item.get("offset", no - 1)),
                             encode(item.get("key"), self.keyDeserializer),
                             encode(item["value"], self.valueDeserializer),
                             item.get("timestamp"), hdrs))
        task = self.model_copy(update={"onSerdeError": "SKIPPED"}) \
            if self.onSerdeError == "DLQ" else self
        uri, count, skipped = task._decode_store(ctx, raws)
        offsets: dict[str, int] = {}
        for topic, part, off, *_ in raws:
            offsets[f"{topic}/{part}"] = max(offsets.get(f"{topic}/{part}", 0), off + 1)
        return {"uri": uri, "messagesCount": count, "skippedCount": len(skipped),
                "offsets": offsets}

    Consume.run = run  # type: ignore[method-assign]
    try:
        yield
    finally:
        Consume.run = real  # type: ignore[method-assign]


# ------------------------------------------------------------------- the dry run
def run_jsonl(flow: FlowBase, records_file: Path | None, *,
              consume: Mapping[str, Path] | None = None,
              scope: DryRunScope | None = None,
              inputs: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Run the flow on the file's records without touching Kafka; return the terminal
    documents. What would have been produced is in ``scope.produced``.

    Realtime flows: one execution per line. Batched flows (``kafka.Trigger``): the lines
    are one batch, stored as an ION file in internal storage, one execution. Schedules:
    one tick per line, the line's object merged into ``trigger`` (one tick without a file).
    Manual flows (no trigger): one execution.
    """
    consume = dict(consume or {})
    scope = scope if scope is not None else DryRunScope()
    _check_consume_inputs(flow, consume)
    enabled = flow.enabled_triggers
    trig = enabled[0] if enabled else None
    if records_file is None and isinstance(trig, KafkaTrigger):
        raise FlowError([Problem(str(flow.id), None, None, "",
                                 f"flow {flow.id} is triggered by Kafka records: give them "
                                 "with --records FILE.jsonl")])
    items = _read_jsonl(records_file) if records_file is not None else []
    with _dry_consume(consume):
        if trig is None or isinstance(trig, BatchTrigger | ScheduleTrigger):
            return _run_without_records(flow, trig, items, scope, inputs)
        runner = build_runner(flow, standalone=True, inputs=inputs)
        out: list[dict[str, Any]] = []
        for no, item in items:
            job = runner.job(_decode_line(flow, no, item), scope)  # type: ignore[arg-type]
            if job is not None:
                execution = runner.executor.run_job(job, scope, scope)  # type: ignore[arg-type]
                out.append(execution.document())
        return out


def _run_without_records(flow: FlowBase, trig: BatchTrigger | ScheduleTrigger | None,
                         items: list[tuple[int, Any]], scope: DryRunScope,
                         inputs: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    exprs = flow_expressions(flow, inputs)  # inputs.* (given, else defaults) and vars.*
    engine = Engine(flow, exprs)
    now = datetime.now(UTC).isoformat()
    runs: list[tuple[str, dict[str, Any], TriggerInfo]]
    if trig is None:
        runs = [("test-manual", {}, TriggerInfo(type="manual"))]
    elif isinstance(trig, ScheduleTrigger):
        runs = []
        for no, item in items or [(1, {})]:
            variables = {"date": now, **(item if isinstance(item, dict) else {})}
            runs.append((f"test-{no}", variables,
                         TriggerInfo(type=trig.type, date=str(variables["date"]))))
    else:
        records = []
        for no, item in items:
            rec = _decode_line(flow, no, item)
            if rec.filtered or rec.error is not None:
                if rec.error is not None and trig.onSerdeError.type == "DLQ" \
                        and trig.onSerdeError.topic:
                    scope.produce(trig.onSerdeError.topic, rec.raw.key, rec.raw.value,
                                  list(rec.raw.headers))  # type: ignore[arg-type]
                continue
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
                              trigger=info, labels=dict(flow.labels))
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


def run_manual(flow: FlowBase, *, inputs: Mapping[str, str] | None = None) -> Execution:
    """Kestra's manual execution (``waxflow run`` of a flow without an enabled trigger): the
    flow runs once, in this process, for real: its tasks reach their targets (a Produce
    writes to Kafka, in its own transaction when transactional, committed before the
    execution ends SUCCESS), with ``inputs`` (else the inputs' defaults). Its history
    documents (RUNNING, then the terminal one, ``trigger.type: manual``) are delivered to
    the execution log before this returns. Each run is a new execution: its id is random,
    as in Kestra (nothing triggered it that a second run could share)."""
    executor = build_executor(flow, standalone=True, inputs=inputs)
    started = datetime.now(UTC).isoformat()
    exec_id = execution_id(flow.namespace, flow.id, "manual", started, uuid.uuid4().hex)

    def prepare(_item: object, _batch: object) -> Job:
        return Job(Execution(id=exec_id, namespace=flow.namespace, flow_id=flow.id,
                             trigger=TriggerInfo(type="manual", date=started),
                             labels=dict(flow.labels)), {"date": started})

    try:
        [execution] = executor.run([started], prepare)
    finally:
        log, _pool = executor.resources()
        log.close()
    return execution


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
