"""Execute step of ``kafka.Trigger``: one execution per batch, done inside the step.

For each batch cut by ``waxflow.connectors.kafka_batch`` the step decodes the records (applying
``onSerdeError`` and ``headerFilters``), stores the good ones as one ION file in internal
storage under a name derived from the execution id (a replayed batch overwrites its file),
then runs the flow with ``trigger.uri``, ``trigger.messagesCount`` and ``trigger.offsets``.
Tasks read the stored file, so a retried load never re-consumes Kafka. JSON object values
with STRING keys (and no ``headerFilters``) are encoded in bulk by ``waxflow.connectors.jsonbatch``
(one pyarrow parse, Ion-text file, the rows table kept for the tasks); a batch it cannot
encode exactly is decoded record by record into binary ION, with ``onSerdeError`` applied.
The flow's :class:`~waxflow.operators.executor.Executor` runs the execution: the step returns
only when the terminal document is acknowledged (and, with a transactional Produce, after the
batch's transaction committed together with its offsets). The execution id derives from the
batch's per-partition offset ranges (a share-group delivery's from its records; the step
reports each batch's outcome to ``outcomes``, whose source acks the records by it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream

from waxflow.connectors import jsonbatch
from waxflow.connectors.execution_log import LogBatch
from waxflow.connectors.kafka_batch import Batch
from waxflow.connectors.serdes import Deserializer
from waxflow.connectors.storage import Storage
from waxflow.execution import Execution, TriggerInfo, execution_id, jsonable
from waxflow.flow import BatchTrigger, FlowBase
from waxflow.operators.deserialize import decode
from waxflow.operators.executor import Executor, Job
from waxflow.records import RawRecord, dlq_headers, headers_text

MAX_SKIPPED_LISTED = 100


def batch_execution_id(namespace: str, flow_id: str, batch: Batch) -> str:
    """Deterministic id of a batch: its per-partition offset ranges (a share-group
    delivery: its records, :meth:`~waxflow.connectors.kafka_batch.Batch.id_source`)."""
    return execution_id(namespace, flow_id, "batch", batch.id_source())


class BatchExecutions:
    """The batch function of a ``kafka.Trigger`` flow's execute step."""

    def __init__(self, *, flow: FlowBase, trigger: BatchTrigger, executor: Executor,
                 key_de: Deserializer, value_de: Deserializer, storage: Storage) -> None:
        self.flow = flow
        self.trigger = trigger
        self.executor = executor
        self.key_de, self.value_de = key_de, value_de
        self.storage = storage
        # JSON/STRING/number values are JSON-safe already: skip the jsonable walk
        self._value_plain = trigger.valueDeserializer not in ("BYTES", "BYTE_ARRAY", "ION",
                                                              "AVRO", "UUID")
        self._bulk = (trigger.valueDeserializer == "JSON" and trigger.keyDeserializer == "STRING"
                      and not trigger.headerFilters)
        #: share group: told each batch's outcome once its terminal document is delivered
        #: (the source acks the batch's records by it), before onFailure STOP halts the job
        self.outcomes: Callable[[Batch, str], None] | None = None

    def __call__(self, batches: list[Batch]) -> list[tuple[str, tuple[str, int]]]:
        done: list[tuple[str, tuple[str, int]]] = []
        for batch in batches:
            ends = {(k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1])): v
                    for k, v in batch.ends.items()}
            # a batch whose Produce failed is FAILED and recorded: its outputs are aborted
            # and the offsets advance through the source's commit (G6)
            executions = self.executor.run([batch], self.job, ends)
            if self.outcomes is not None:
                for execution in executions:
                    self.outcomes(batch, execution.state)
            self.executor.check_stop(executions)
            done += [("done", (k, v)) for k, v in batch.ends.items()]
        return done

    def _decode(self, batch: Batch, deliveries: LogBatch, skipped: list[dict[str, Any]]
                ) -> list[dict[str, Any]]:
        """The batch's records decoded one by one; bad ones go to ``skipped`` (and the DLQ)."""
        trig = self.trigger
        dlq = trig.onSerdeError.topic if trig.onSerdeError.type == "DLQ" else None
        good: list[dict[str, Any]] = []
        for fields in batch.records:
            raw = RawRecord(*fields)
            rec = decode(raw, self.key_de, self.value_de,
                         fail=trig.onSerdeError.type == "FAIL", filters=trig.headerFilters)
            if rec.filtered:
                continue
            if rec.error is not None:
                skipped.append({"topic": raw.topic, "partition": raw.partition,
                                "offset": raw.offset, "error": rec.error})
                if dlq is not None:
                    deliveries.produce(dlq, raw.key, raw.value, dlq_headers(
                        raw.topic, raw.partition, raw.offset, rec.error, original=raw.headers))
                continue
            value = rec.value if self._value_plain else jsonable(rec.value)
            good.append({"key": jsonable(rec.key), "value": value,
                         "topic": raw.topic, "partition": raw.partition, "offset": raw.offset,
                         "timestamp": raw.timestamp,
                         "headers": headers_text(raw.headers)})
        return good

    def job(self, batch: Batch, deliveries: LogBatch) -> Job:
        """Store the batch's records as one file in internal storage; its execution reads
        them through ``trigger.uri``."""
        exec_id = batch_execution_id(self.flow.namespace, self.flow.id, batch)
        name = f"{self.flow.namespace}/{self.flow.id}/{exec_id}.ion"
        bulk = jsonbatch.encode(batch.records) if self._bulk else None
        skipped: list[dict[str, Any]] = []
        if bulk is not None:
            uri, count = self.storage.put_data(name, bulk.data, bulk.table), bulk.count
        else:
            uri, count = self.storage.put_records(name, self._decode(batch, deliveries, skipped))
        offsets = {k: [a, b] for k, (a, b) in sorted(batch.offsets.items())}
        execution = Execution(
            id=exec_id, namespace=self.flow.namespace, flow_id=self.flow.id,
            trigger=TriggerInfo(type=self.trigger.type, offsets=offsets, messages_count=count,
                                uri=uri, skipped_count=len(skipped),
                                skipped=skipped[:MAX_SKIPPED_LISTED]),
            labels=dict(self.flow.labels))
        return Job(execution, {"uri": uri, "messagesCount": count, "offsets": offsets,
                               "skippedCount": len(skipped)})


def execute_batches(step_id: str, up: Stream[Batch], runner: BatchExecutions
                    ) -> Stream[tuple[str, tuple[str, int]]]:
    """Run one execution per batch; emit ``("done", ("topic/partition", next_offset))``."""
    return op.flat_map_batch(step_id, up, runner)
