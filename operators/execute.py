"""Execute step of ``kafka.RealtimeTrigger``: one execution per record.

For each batch Bytewax hands it, the step builds one :class:`~waxflow.operators.executor.Job`
per decoded record and hands it to the flow's :class:`~waxflow.operators.pipeline.Pipeline`
(consumer groups and share groups alike; :mod:`waxflow.operators.checkpoint` has the commit
order): the step returns at once; each execution marks its offset done in the partition's
progress when its terminal document is delivered, and the source commits the lowest
unfinished offset (transactional Produce: the epoch's transaction commits it with the
records of the executions below it; share groups: the record's ack by outcome is sent at the
source's next read) — a slow or retrying record never stalls the others. (``waxflow test``
and replays run a record's job with :meth:`Executor.run_job
<waxflow.operators.executor.Executor.run_job>` instead.)

A flow the compiled path takes (:mod:`waxflow.operators.fastpath`: simple tasks, direct
templates, a consumer group in quiet mode) runs each record through its compiled function in
the same loop; a record it cannot vouch for (None) takes the job/pipeline path above, as do
filtered records, serde failures, and every record of a batch while a secret is registered
or the job is stopping.

Serde failures become SKIPPED executions (and DLQ records, delivered before their execution
counts as done). Share groups: each record's outcome goes back to its source partition for
the ack (G4).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream

from waxflow.connectors import metrics
from waxflow.connectors.execution_log import LOG_HEADER, LogBatch
from waxflow.execution import Execution, State, TriggerInfo, jsonable, record_ids
from waxflow.flow import FlowBase
from waxflow.operators.executor import Executor, Job
from waxflow.operators.fastpath import LOG as FAST_LOG
from waxflow.operators.fastpath import CompiledFlow, FastRun, compile_flow
from waxflow.operators.pipeline import Pipeline
from waxflow.operators.transactions import Transactions
from waxflow.progress import Progress
from waxflow.records import Decoded, dlq_headers, headers_text

Done = tuple[str, tuple[str, int]]


class RecordExecutions:
    """The batch function of the execute step; one instance serves all workers of a process."""

    def __init__(self, *, flow: FlowBase, executor: Executor, trigger_type: str,
                 dlq_topic: str | None, share: bool = False) -> None:
        self.flow = flow
        self.executor = executor
        self.trigger_type = trigger_type
        self.dlq_topic = dlq_topic
        #: a share group's records: each is acked by its execution's outcome (G4)
        self.share = share
        #: pipelined mode (see the module doc): set by :meth:`pipelined`
        self.pipeline: Pipeline | None = None
        self.progress: Progress | None = None
        self._ids = record_ids(flow.namespace, flow.id)
        #: the flow compiled for the per-batch path (:mod:`waxflow.operators.fastpath`),
        #: None when it takes the general path; decided at the first batch
        self.fast: CompiledFlow | None = None
        self._fast_decided = False

    def pipelined(self, txn_conf: Mapping[str, Any] | None = None
                  ) -> tuple[Progress, Transactions | None]:
        """Switch to pipelined mode; the returned progress is what the source commits by,
        and with ``txn_conf`` (the flow's transactional Produce properties) the transactions
        that commit it (:mod:`waxflow.operators.transactions`)."""
        self.progress = Progress()
        txn = None
        if txn_conf is not None:
            assert self.executor.output is not None
            # its transactional producers carry the epoch transactions alone, which check
            # them by flushing: no report per delivered record (failures still report)
            self.executor.output.quiet_txn = True
            txn = Transactions(output=self.executor.output, conf=txn_conf,
                               progress=self.progress,
                               log=lambda: self.executor.resources()[0],
                               stop_on_failure=self.executor.stop_on_failure)
        self.pipeline = Pipeline(self.executor, self.progress, txn)
        return self.progress, txn

    def id_of(self, rec: Decoded) -> str:
        """The execution id of a record (G2)."""
        raw = rec.raw
        return self._ids(raw.topic, raw.partition, raw.offset)  # = execution_id(...)

    def job(self, rec: Decoded, batch: LogBatch) -> Job | None:
        """The execution of one decoded record: to run, or already SKIPPED (None when
        ``headerFilters`` filtered the record out)."""
        if rec.filtered:
            return None
        raw = rec.raw
        headers = headers_text(raw.headers)
        execution = Execution(
            id=self.id_of(rec), namespace=self.flow.namespace, flow_id=self.flow.id,
            trigger=TriggerInfo(type=self.trigger_type, topic=raw.topic,
                                partition=raw.partition, offset=raw.offset,
                                key=jsonable(rec.key), timestamp=raw.timestamp,
                                delivery_count=raw.delivery_count),
            upstream_id=headers.get(LOG_HEADER), labels=dict(self.flow.labels))
        finish = self._ack_note(rec) if raw.origin is not None else None
        if rec.error is None:
            return Job(execution, {
                "key": rec.key, "value": rec.value, "topic": raw.topic,
                "partition": raw.partition, "offset": raw.offset, "timestamp": raw.timestamp,
                "headers": headers, "deliveryCount": raw.delivery_count,
            }, finish, order_key=raw.key)
        execution.error = {"taskId": "", "message": rec.error}
        if self.dlq_topic is not None:
            batch.produce(self.dlq_topic, raw.key, raw.value, [
                *dlq_headers(raw.topic, raw.partition, raw.offset, rec.error,
                            original=raw.headers),
                (LOG_HEADER, execution.id.encode())])
            execution.error["message"] += f" (sent to DLQ topic {self.dlq_topic})"
        execution.finish(State.SKIPPED)
        return Job(execution, None, finish)

    @staticmethod
    def _ack_note(rec: Decoded) -> Callable[[Execution], None]:
        """Share groups: record in the terminal document how this delivery will be acked."""
        from waxflow.connectors.kafka_share import planned_ack

        def note(execution: Execution) -> None:
            execution.trigger.ack = planned_ack(rec, execution.state)

        return note

    def _compiled(self) -> CompiledFlow | None:
        """The compiled flow when the per-batch path applies (decided once): a consumer
        group's flow run inline in quiet mode, without RUNNING documents."""
        if not self._fast_decided:
            assert self.pipeline is not None
            executor = self.executor
            if (not self.share and executor.inline
                    and not executor.running_docs):
                fast = compile_flow(flow=self.flow, exprs=executor.engine.exprs,
                                    env=executor.engine.env, trigger_type=self.trigger_type)
                txn = self.pipeline.txn
                if fast is not None and fast.transactional and (txn is None or not all(
                        txn.accepts(task.client_conf()) for task in fast.transactional)):
                    fast = None  # (the general path fails such a task, naming why)
                if fast is None or not fast.produces or executor.output is not None:
                    self.fast = fast
            self._fast_decided = True
        return self.fast

    def _submit(self, items: list[Decoded]) -> list[Done]:
        """Pipelined mode: start every execution and return at once (nothing to emit: the
        source commits by the partitions' progress)."""
        assert self.pipeline is not None and self.progress is not None
        self.progress.check()
        batch = self.pipeline.log().batch()
        started: list[tuple[Job, Decoded]] = []
        part_of = self.progress.part
        share = self.share
        if share:
            from waxflow.connectors.kafka_share import share_ack, share_filtered
        fast = self._compiled()
        if fast is not None and not self.pipeline.fast_ready():
            fast = None  # this batch: the general path (a secret registered, stopping)
        runs: list[tuple[FastRun, Any]] = []
        busy = self.pipeline.key_busy
        ordered = self.executor.key_ordering
        general_keys: set[Any] = set()  # keyOrdering: keys of this batch's general records
        for r in items:
            if (fast is not None and r.error is None and not r.filtered
                    and not (ordered and (r.raw.key in general_keys or busy(r.raw.key)))):
                run = fast.run(r, self.id_of(r))
                if run is not None:
                    runs.append((run, part_of(r.raw.topic, r.raw.partition)))
                    continue
            job = self.job(r, batch)
            if job is not None:
                started.append((job, r))
                if ordered:
                    general_keys.add(r.raw.key)
            elif share:  # filtered out by headerFilters: done as it is
                share_filtered(r)
            else:
                part_of(r.raw.topic, r.raw.partition).done(r.raw.offset)
        if fast is not None and FAST_LOG.isEnabledFor(logging.DEBUG):
            FAST_LOG.debug("compiled path: %d of %d records", len(runs), len(items))
        if runs:
            assert fast is not None
            # a record the broker refused at once: the general path runs it (and fails it)
            for run in self.pipeline.submit_fast(fast, runs):
                job = self.job(run.rec, batch)
                assert job is not None
                started.append((job, run.rec))
        if batch.sent:
            batch.wait()  # DLQ records are delivered before their executions can be done
        submit = self.pipeline.submit
        for job, r in started:
            raw = r.raw
            submit(job, share_ack(r, job.execution) if share
                   else part_of(raw.topic, raw.partition), raw.offset)
        return []

    def __call__(self, items: list[Decoded]) -> list[Done]:
        metrics.batch_size(len(items))
        assert self.pipeline is not None, "the execute step runs pipelined (pipelined())"
        return self._submit(items)


def execute(step_id: str, up: Stream[Decoded], runner: RecordExecutions) -> Stream[Done]:
    """Start one execution per record; they finish past the step (nothing is emitted: the
    source commits by the partitions' progress)."""
    return op.flat_map_batch(step_id, up, runner)
