"""Execute step: one execution per record, finished inside the step (DESIGN §5).

For each batch Bytewax hands it, the step runs the executions concurrently (a bounded thread
pool; optionally one key at a time), writes a RUNNING and a terminal document per execution
to the execution log, and returns only when every document is acknowledged by the broker.
Only then does it emit, per source partition, the next offset whose records are all done;
the source commits offsets at the following epoch, so a commit never runs ahead of the work
(G1). Serde failures become SKIPPED executions (and DLQ records, delivery checked). With
``onFailure: STOP`` a FAILED execution raises :class:`FlowStopped` after its document is
delivered: the job halts and the record is not committed.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream

from waxflow.connectors.execution_log import LOG_HEADER, ExecutionLog, LogBatch
from waxflow.connectors.kafka_output import BatchScope, KafkaOutput, TransactionError
from waxflow.execution import Execution, execution_id, jsonable
from waxflow.flow import FlowBase
from waxflow.operators.engine import Engine
from waxflow.records import Decoded, dlq_headers, headers_text

Done = tuple[str, tuple[str, int]]


class FlowStopped(Exception):
    """onFailure STOP: an execution failed; the job halts without committing its record."""


class ExecuteBatch:
    """The batch function of the execute step; one instance serves all workers of a process."""

    def __init__(self, flow: FlowBase, engine: Engine, log_factory: Callable[[], ExecutionLog],
                 trigger_type: str, max_concurrency: int, key_ordering: bool,
                 stop_on_failure: bool, dlq_topic: str | None,
                 output: KafkaOutput | None = None) -> None:
        self.flow = flow
        self.output = output
        self.engine = engine
        self.log_factory = log_factory
        self._log: ExecutionLog | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.trigger_type = trigger_type
        self.max_concurrency = max_concurrency
        self.key_ordering = key_ordering
        self.stop_on_failure = stop_on_failure
        self.dlq_topic = dlq_topic
        # no task of the flow blocks: run executions on the worker thread (no pool hand-off)
        self.inline = not any(task.BLOCKING for _, task in flow.all_tasks())
        # share groups: called (on the worker's thread) with every record of a batch and its
        # execution (None when filtered) once all documents are delivered, to ack by outcome
        self.outcomes: Callable[[list[tuple[Decoded, Execution | None]]], None] | None = None

    def resources(self) -> tuple[ExecutionLog, ThreadPoolExecutor]:
        with self._lock:
            if self._log is None:
                self._log = self.log_factory()
                self._pool = ThreadPoolExecutor(self.max_concurrency,
                                                thread_name_prefix="execution")
            assert self._pool is not None
            return self._log, self._pool

    def _new_execution(self, rec: Decoded) -> Execution:
        raw = rec.raw
        headers = headers_text(raw.headers)
        return Execution(
            id=execution_id(self.flow.namespace, self.flow.id, raw.topic, raw.partition,
                            raw.offset),
            namespace=self.flow.namespace, flow_id=self.flow.id,
            trigger={"type": self.trigger_type, "topic": raw.topic,
                     "partition": raw.partition, "offset": raw.offset,
                     "key": jsonable(rec.key), "timestamp": raw.timestamp,
                     "offsets": None, "messagesCount": None,
                     "deliveryCount": raw.delivery_count},
            upstream_id=headers.get(LOG_HEADER),
            labels=dict(self.flow.labels),
        )

    def run_one(self, rec: Decoded, batch: LogBatch, scope: BatchScope | None = None
                ) -> Execution:
        """Run (or skip) the execution of one decoded record, writing its documents."""
        execution = self._new_execution(rec)
        raw = rec.raw
        if rec.error is not None:
            execution.error = {"taskId": "", "message": rec.error}
            if self.dlq_topic is not None:
                batch.produce(self.dlq_topic, raw.key, raw.value, [
                    *dlq_headers(raw.topic, raw.partition, raw.offset, rec.error, raw.headers),
                    (LOG_HEADER, execution.id.encode())])
                execution.error["message"] += f" (sent to DLQ topic {self.dlq_topic})"
            execution.finish("SKIPPED")
            self._note_ack(rec, execution)
            batch.write(execution.id, execution.to_json())
            return execution
        execution.state = "RUNNING"
        batch.write(execution.id, execution.to_json())
        trigger_vars = {
            "key": rec.key, "value": rec.value, "topic": raw.topic,
            "partition": raw.partition, "offset": raw.offset, "timestamp": raw.timestamp,
            "headers": headers_text(raw.headers), "deliveryCount": raw.delivery_count,
        }
        self.engine.run(execution, trigger_vars, scope)
        self._note_ack(rec, execution)
        batch.write(execution.id, execution.to_json())
        return execution

    @staticmethod
    def _note_ack(rec: Decoded, execution: Execution) -> None:
        """Share groups: record in the terminal document how this delivery will be acked."""
        if rec.raw.origin is not None:
            from waxflow.connectors.kafka_share import planned_ack

            execution.trigger["ack"] = planned_ack(rec, execution.state)

    def _run_sequence(self, recs: list[Decoded], batch: LogBatch,
                      scope: BatchScope | None) -> list[Execution]:
        return [self.run_one(r, batch, scope) for r in recs]

    def __call__(self, items: list[Decoded]) -> list[Done]:
        log, pool = self.resources()
        batch = log.batch()
        ends: dict[tuple[str, int], int] = {}
        for r in items:
            key = (r.raw.topic, r.raw.partition)
            ends[key] = max(ends.get(key, -1), r.raw.offset + 1)
        executions = self._run_transactional(items, ends, batch, pool)
        if self.outcomes is not None:
            by_offset = {(e.trigger["topic"], e.trigger["partition"], e.trigger["offset"]): e
                         for e in executions}
            self.outcomes([(r, by_offset.get((r.raw.topic, r.raw.partition, r.raw.offset)))
                           for r in items])
        if self.stop_on_failure:
            for e in executions:
                if e.state == "FAILED":
                    t = e.trigger
                    msg = (e.error or {}).get("message", "")
                    raise FlowStopped(
                        f"execution {e.id} of record {t['topic']}/{t['partition']}@"
                        f"{t['offset']} FAILED: {msg}; onFailure STOP: job halted without "
                        "committing this record")
        return [("done", (f"{p}-{t}", off)) for (t, p), off in ends.items()]

    def _run_transactional(self, items: list[Decoded], ends: dict[tuple[str, int], int],
                           batch: LogBatch, pool: ThreadPoolExecutor) -> list[Execution]:
        """Run the batch; commit its Kafka transaction (outputs + consumed offsets, G3).

        A record whose delivery fails inside the transaction poisons it (it can only abort):
        its execution is FAILED and recorded, and the rest of the batch runs again in a new
        transaction without it, so one bad output never blocks the flow (G6).
        """
        done: dict[str, Execution] = {}
        todo = items
        for _round in range(3):
            scope = self.output.scope() if self.output is not None else None
            try:
                executions = self._run_batch(todo, batch, pool, scope)
                if scope is not None and scope.broken:
                    # its Produce tasks failed for want of a transaction: stop, replay later
                    raise TransactionError(scope.broken)
                if scope is not None and scope.active:
                    scope.commit(ends)
                return list(done.values()) + executions
            except TransactionError:
                if scope is None or not scope.poisoned:
                    raise
                failed = {e.id: e for e in executions if e.id in scope.poisoned}
                done.update(failed)
                todo = [r for r in todo if self._id_of(r) not in failed]
            except BaseException:
                if scope is not None and scope.active:
                    scope.abort()
                raise
        raise TransactionError("the batch's transaction aborted three times; stopping")

    def _id_of(self, rec: Decoded) -> str:
        return execution_id(self.flow.namespace, self.flow.id, rec.raw.topic,
                            rec.raw.partition, rec.raw.offset)

    def _run_batch(self, items: list[Decoded], batch: LogBatch, pool: ThreadPoolExecutor,
                   scope: BatchScope | None) -> list[Execution]:
        todo = [r for r in items if not r.filtered]
        if self.inline:
            executions = self._run_sequence(todo, batch, scope)
            batch.wait()
            return executions
        if self.key_ordering:
            groups: dict[Any, list[Decoded]] = defaultdict(list)
            for r in todo:
                groups[r.raw.key].append(r)
            futures = [pool.submit(self._run_sequence, g, batch, scope)
                       for g in groups.values()]
        else:
            futures = [pool.submit(self._run_sequence, [r], batch, scope) for r in todo]
        wait(futures)
        executions = [e for f in futures for e in f.result()]
        batch.wait()
        return executions


def execute(step_id: str, up: Stream[Decoded], runner: ExecuteBatch) -> Stream[Done]:
    """Run one execution per record; emit ``("done", (source_part, next_offset))``."""
    return op.flat_map_batch(step_id, up, runner)
