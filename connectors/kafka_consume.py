"""``kafka.Consume``: read records mid-flow into an ION file in internal storage.

Reads the given topics (every partition, or ``partitions``) from the group's committed
offsets when ``groupId`` is set, else from ``since`` or the beginning, and stops at the
first of: every partition reached the end offset it had when the task started,
``maxRecords`` (soft: the last poll's records are kept), ``maxDuration``, or no record for
``pollDuration``. Records that do not deserialize follow ``onSerdeError`` (SKIPPED: left
out and counted; DLQ: sent to the DLQ topic, delivery checked; FAIL: the task fails and
nothing is committed). With ``groupId`` the offsets are committed synchronously **only
after** the file is stored, so a failure before that re-reads the same records next time.
Outputs: ``uri``, ``messagesCount``, ``skippedCount``, ``offsets``. The file is written as
the trigger's batches are (``waxflow.connectors.jsonbatch`` for JSON values with STRING keys).
``topic`` and ``groupId`` are rendered per run. AVRO keys or values are read through the
Confluent-compatible registry named by ``serdeProperties.schema.registry.url`` or Kestra's
``schemaRegistryVendor`` (templates in ``serdeProperties`` are rendered once, with ``env.*``
and ``secret()``); other ``serdeProperties`` keys select nothing and are logged as such.
Records whose headers do not match ``headerFilters`` are read past: not stored, not counted
as skipped, and committed with the rest.

``groupType: SHARE`` (KIP-932, ``groupId`` required; ``partitions`` and ``since`` refused)
takes **one delivery** of up to ``maxRecords`` (default 500) records from the share group:
in explicit acknowledgement mode a share consumer may not poll again before it acked what
it holds, and acking part of a batch before the task ends would lose it if the task then
failed. It waits for records up to ``pollDuration`` or ``maxDuration`` (at least two group
heartbeats: a new member is assigned after one). After the file is stored, stored records
are ACCEPTed and records that do not deserialize REJECTed (SKIPPED/DLQ), then acks are
committed; if storing fails, or onSerdeError FAIL, every record is RELEASEd for redelivery.
Outputs: ``uri``, ``messagesCount``, ``skippedCount``, ``acks`` (counts per ack type) and
``ackErrors`` (acks the broker refused, e.g. after a record lock ran out: those records
will be delivered again).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

from confluent_kafka import (
    AcknowledgeType,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    ShareConsumer,
    TopicPartition,
)
from pydantic import Field, ValidationInfo, field_validator, model_validator

from waxflow.connectors import broker_watch, jsonbatch
from waxflow.connectors.deliveries import Deliveries
from waxflow.connectors.kafka_config import client_conf
from waxflow.connectors.kafka_share import configure_group, split_conf
from waxflow.connectors.kafka_source import (
    group_conf,
    record_fields,
    start_offset,
    topic_partitions,
)
from waxflow.connectors.serdes import SerdeError, deserializer
from waxflow.connectors.storage import Storage
from waxflow.durations import Duration
from waxflow.errors import SourceStop
from waxflow.execution import jsonable
from waxflow.expressions import render_static
from waxflow.flow import (
    SchemaRegistryVendor,
    refuse_for_share,
    registry_properties,
    unused_serde_properties,
)
from waxflow.records import RecordFields, dlq_headers, headers_text
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

SerdeName = Literal["STRING", "INTEGER", "LONG", "FLOAT", "DOUBLE", "SHORT", "BYTES",
                    "BYTE_ARRAY", "UUID", "JSON", "ION", "VOID", "AVRO"]


@task_type("kafka.Consume", aliases=("io.kestra.plugin.kafka.Consume",))
class Consume(TaskBase):
    """Consume topics into internal storage (see module doc)."""

    type: Literal["kafka.Consume"] = Field(description="the task type")
    topic: str | list[str] = Field(description="the topic (or topics) to read")
    groupType: Literal["CONSUMER", "SHARE"] = Field(  # before the fields it checks
        default="CONSUMER",
        description="CONSUMER: read partitions (committing `groupId` once stored); SHARE: "
                    "take one delivery from the share group `groupId`, acked once stored")
    partitions: list[int] | None = Field(default=None,
                                         description="read only these partitions")
    groupId: str | None = Field(
        default=None, description="commit the read offsets to this group once the file is "
                                  "stored (CONSUMER; without it nothing is committed)")
    since: datetime | None = Field(
        default=None, description="ISO-8601 timestamp to start from when there is no "
                                  "committed offset")
    keyDeserializer: SerdeName = Field(default="STRING", description="how keys are read")
    valueDeserializer: SerdeName = Field(default="STRING", description="how values are read")
    properties: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="librdkafka consumer properties")
    maxRecords: int | None = Field(
        default=None, ge=1, description="stop after about this many records (soft limit)")
    maxDuration: Duration | None = Field(default=None,
                                         description="stop reading after this long")
    pollDuration: Duration = Field(
        default=timedelta(seconds=5),
        description="stop when a poll brings nothing for this long")
    onSerdeError: Literal["SKIPPED", "DLQ", "FAIL"] = Field(
        default="SKIPPED",
        description="a record that cannot be deserialized: leave it out (SKIPPED), send it "
                    "to `dlqTopic` (DLQ), or fail the task (FAIL)")
    dlqTopic: str | None = Field(default=None, description="the dead-letter topic (DLQ)")
    serdeProperties: dict[str, str] = Field(
        default_factory=dict,
        description="deserializer settings: schema.registry.url and basic.auth.user.info "
                    "for AVRO (rendered once per run: env.*, secret())")
    schemaRegistryVendor: SchemaRegistryVendor | None = Field(
        default=None, description="Kestra's way to name the AVRO schema registry")
    headerFilters: dict[str, str] = Field(
        default_factory=dict,
        description="header name -> value; only records whose headers all match are stored "
                    "(the others are read past, and committed)")

    @model_validator(mode="after")
    def _avro_needs_registry(self) -> Consume:
        avro = "AVRO" in (self.keyDeserializer, self.valueDeserializer)
        if avro and not registry_properties(self.serdeProperties, self.schemaRegistryVendor
                                            ).get("schema.registry.url"):
            raise ValueError("AVRO deserializers need serdeProperties.schema.registry.url "
                             "(or a schemaRegistryVendor)")
        return self

    def _deserializer(self, name: str) -> Callable[[bytes | None], Any]:
        if name == "AVRO":
            from waxflow.connectors.avro import avro_deserializer

            return avro_deserializer(render_static(registry_properties(
                self.serdeProperties, self.schemaRegistryVendor)))
        return deserializer(name)

    @field_validator("partitions", "since")
    @classmethod
    def _not_for_share(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_for_share(info.data.get("groupType"), info.field_name, value)

    @model_validator(mode="after")
    def _share_needs_group(self) -> Consume:
        if self.groupType == "SHARE" and not self.groupId:
            raise ValueError("groupType SHARE needs a `groupId` (the share group)")
        return self

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        topics = [str(ctx.render(t)) for t in
                  ([self.topic] if isinstance(self.topic, str) else self.topic)]
        unused = unused_serde_properties(self.serdeProperties)
        if unused:
            ctx.log("WARN", f"serdeProperties {', '.join(unused)} select nothing (waxflow "
                    "reads schema.registry.url and basic.auth.user.info)")
        task = self
        if self.groupId is not None and "{{" in self.groupId:
            task = self.model_copy(update={"groupId": str(ctx.render(self.groupId))})
        if task.groupType == "SHARE":
            return task._consume_share(ctx, topics)
        return task._run_group(ctx, topics)

    def _run_group(self, ctx: RunContext, topics: list[str]) -> dict[str, Any]:
        conf = group_conf(client_conf(self.properties),
                          self.groupId or f"waxflow-consume-{uuid.uuid4().hex}",
                          "kafka.Consume commits its group only after the file is stored")
        conf["enable.partition.eof"] = False
        try:
            parts = topic_partitions(conf, topics, partitions=self.partitions)
        except SourceStop as exc:
            raise TaskFailure(str(exc)) from None
        consumer = Consumer(broker_watch.watch(conf))
        try:
            return self._consume(ctx, consumer, parts=parts, conf=conf)
        finally:
            consumer.close()

    def _consume(self, ctx: RunContext, consumer: Consumer, *, parts: list[tuple[str, int]],
                 conf: dict[str, Any]) -> dict[str, Any]:
        assign, ends, starts = [], {}, {}
        for topic, p in parts:
            start, _ = start_offset(consumer, topic, p, resume=None, since=self.since,
                                    reset="earliest")
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15,
                                                       cached=False)
            ends[(topic, p)] = high
            starts[(topic, p)] = start if start >= 0 else low
            assign.append(TopicPartition(topic, p, start))
        consumer.assign(assign)
        raws: list[RecordFields] = []
        positions: dict[tuple[str, int], int] = {}
        started = last = time.monotonic()
        todo = {tp for tp, end in ends.items() if end > starts[tp]}
        while todo:
            now = time.monotonic()
            if self.maxRecords and len(raws) >= self.maxRecords:
                break
            if self.maxDuration is not None and now - started >= self.maxDuration.total_seconds():
                break
            if now - last >= self.pollDuration.total_seconds():
                break
            for m in consumer.consume(500, 0.1):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise TaskFailure(f"consumer error: {err.str()}")
                last = time.monotonic()
                rec = record_fields(m)
                raws.append(rec)
                tp, off = (rec[0], rec[1]), rec[2]
                positions[tp] = off + 1
                if off + 1 >= ends.get(tp, 0):
                    todo.discard(tp)
        uri, count, skipped = self._decode_store(ctx, raws)
        if self.groupId and positions:
            offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
            try:  # the file is stored: wait for a broker that went away (up to the bound)
                broker_watch.retry(lambda: consumer.commit(offsets=offsets, asynchronous=False),
                                   f"kafka.Consume {self.id} commit")
            except SourceStop as exc:
                raise TaskFailure(f"{exc} (its records are read again by the next run)"
                                  ) from None
        return {"uri": uri, "messagesCount": count, "skippedCount": len(skipped),
                "offsets": {f"{t}/{p}": o for (t, p), o in sorted(positions.items())}}

    def _decode_store(self, ctx: RunContext, raws: list[RecordFields]
                      ) -> tuple[str, int, set[int]]:
        """Store the records as one batch file; return (URI, records stored, indexes of the
        records left out by onSerdeError). JSON values with STRING keys go through
        ``waxflow.connectors.jsonbatch`` when it can encode them exactly, else record by record."""
        exec_id = str(ctx.vars["execution"]["id"])
        flow = ctx.vars["flow"]
        name = f"{flow['namespace']}/{flow['id']}/{exec_id}/{self.id}.ion"
        if self.keyDeserializer == "STRING" and self.valueDeserializer == "JSON" \
                and not self.headerFilters:
            bulk = jsonbatch.encode(raws)
            if bulk is not None:
                return Storage().put_data(name, bulk.data, bulk.table), bulk.count, set()
        key_de = self._deserializer(self.keyDeserializer)
        value_de = self._deserializer(self.valueDeserializer)
        dlq = Deliveries(Producer(client_conf(self.properties))) \
            if self.onSerdeError == "DLQ" and self.dlqTopic else None
        records: list[dict[str, Any]] = []
        skipped: set[int] = set()
        for i, (topic, part, off, key_bytes, value_bytes, ts, headers) in enumerate(raws):
            if self.headerFilters:
                have = headers_text(headers)
                if any(have.get(k) != v for k, v in self.headerFilters.items()):
                    continue  # filtered out: read past, not stored, not skipped
            try:
                key, value = key_de(key_bytes), value_de(value_bytes)
            except SerdeError as exc:
                if self.onSerdeError == "FAIL":
                    raise TaskFailure(f"cannot deserialize record {topic}/{part}@{off}: {exc}"
                                      ) from None
                skipped.add(i)
                if dlq is not None and self.dlqTopic:
                    dlq.produce(self.dlqTopic, key_bytes, value_bytes,
                                dlq_headers(topic, part, off, str(exc), original=headers))
                continue
            records.append({"key": jsonable(key), "value": jsonable(value), "topic": topic,
                            "partition": part, "offset": off, "timestamp": ts,
                            "headers": headers_text(headers)})
        if dlq is not None:
            dlq.wait()
        uri, count = Storage().put_records(name, records)
        return uri, count, skipped

    def _consume_share(self, ctx: RunContext, topics: list[str]) -> dict[str, Any]:
        """One delivery from the share group, acked by outcome after storing (module doc)."""
        group_id = str(self.groupId)
        client, group = split_conf(client_conf(self.properties), group_id,
                                   self.maxRecords or 500)
        try:
            settings = configure_group(client, group_id, group)
        except (KafkaException, SourceStop) as exc:
            raise TaskFailure(f"share group {group_id}: cannot set its configs: {exc}"
                              ) from None
        wait = max(self.pollDuration.total_seconds(), 2 * settings.heartbeat_s)
        if self.maxDuration is not None:
            wait = min(wait, max(self.maxDuration.total_seconds(), 2 * settings.heartbeat_s))
        consumer = ShareConsumer(broker_watch.watch(client))
        try:
            consumer.subscribe(topics)
            held: list[Message] = []
            deadline = time.monotonic() + wait
            while not held and time.monotonic() < deadline:
                for m in consumer.poll(0.2):
                    err = m.error()
                    if err is None:
                        held.append(m)
                    elif err.fatal():
                        raise TaskFailure(f"share consumer error: {err.str()}")
            return self._settle(ctx, consumer, held)
        finally:
            consumer.close()

    def _settle(self, ctx: RunContext, consumer: ShareConsumer, held: list[Message]
                ) -> dict[str, Any]:
        """Store, then ACCEPT stored and REJECT skipped records (or RELEASE everything if the
        task fails) and commit the acks."""
        def release() -> None:
            for m in held:
                consumer.acknowledge(m, AcknowledgeType.RELEASE)
            consumer.commit_sync()

        try:
            uri, count, skipped = self._decode_store(ctx, [record_fields(m) for m in held])
        except TaskFailure as exc:
            release()
            raise TaskFailure(f"{exc} ({len(held)} records released for redelivery)"
                              ) from None
        except Exception as exc:
            release()
            raise TaskFailure(f"kafka.Consume {self.id}: {exc} ({len(held)} records released "
                              "for redelivery)") from None
        sent: dict[str, int] = {}
        for i, m in enumerate(held):
            ack = "REJECT" if i in skipped else "ACCEPT"
            consumer.acknowledge(m, getattr(AcknowledgeType, ack))
            sent[ack] = sent.get(ack, 0) + 1
        try:
            errors = sum(1 for err in (consumer.commit_sync() or {}).values()
                         if err is not None)
        except KafkaException as exc:  # the broker went away: the acks are lost
            broker_watch.gone(f"kafka.Consume {self.id}", str(exc))
            errors = len({(m.topic(), m.partition()) for m in held})
        if errors:
            ctx.log("WARNING", f"share group {self.groupId}: {errors} partitions refused "
                    "the acks (record locks ran out?): those records will be delivered again")
        return {"uri": uri, "messagesCount": count, "skippedCount": len(skipped),
                "acks": sent, "ackErrors": errors}
