"""The execution runner of batches and ticks, and what a record's pipelined execution uses.

The batch-synchronous execute steps (``microbatch`` per batch, ``schedule`` per tick) differ
only in how they build an execution and its ``trigger.*`` variables (a :class:`Job`) and in
what they emit; :meth:`Executor.run` does the rest, the same way for both. (A record's
execution runs in the :class:`~waxflow.operators.pipeline.Pipeline`, which uses this
executor's engine, log and pool; ``waxflow test`` and replays use :meth:`Executor.run_job`.)

1. each job's tasks run (:class:`~waxflow.operators.engine.Engine`; a RUNNING document
   first when :attr:`Executor.running_docs`); the round's deferred Produce deliveries are
   checked once (a failed one fails its execution: :func:`fail_late`); then each job's
   terminal document is written; jobs built already terminal (a SKIPPED record) only get
   their terminal document;
2. ``run()`` returns only when every document is acknowledged by the broker (a failed
   delivery raises :class:`~waxflow.errors.DeliveryError`, never dropped) — the execution
   is *done* (G1);
3. when tasks produced inside the round's Kafka transaction, the transaction commits with
   the round's consumed offsets (G3); a job whose output poisoned the transaction is kept
   FAILED (recorded) and the other jobs run again in a new transaction (G6); any other error
   aborts the transaction and propagates (the batch replays);
4. with ``onFailure: STOP``, :meth:`Executor.check_stop` raises
   :class:`~waxflow.errors.FlowStopped` for a FAILED execution after its document is
   delivered, so the job halts before its offsets are committed (the step calls it once it
   has handed back what must go back, e.g. share-group outcomes).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from waxflow.connectors import shutdown
from waxflow.connectors.execution_log import ExecutionLog, LogBatch
from waxflow.connectors.kafka_output import BatchScope, KafkaOutput
from waxflow.errors import FlowStopped, TransactionError
from waxflow.execution import Execution, State
from waxflow.expressions import mask
from waxflow.operators.engine import Engine

#: consumed offsets a round's transaction commits: (topic, partition) -> next offset
Ends = Mapping[tuple[str, int], int]


@dataclass(slots=True)
class Job:
    """One execution to run: ``variables`` are its ``trigger.*`` variables (None when the
    execution is terminal already, e.g. a SKIPPED record); ``finish`` runs once it is
    terminal, before its terminal document is written; jobs with equal ``order_key`` run one
    after another (``keyOrdering``)."""

    execution: Execution
    variables: dict[str, Any] | None
    finish: Callable[[Execution], None] | None = None
    order_key: Any = None


#: builds the job of one item; may write to the round's log batch (e.g. a DLQ record)
Prepare = Callable[[Any, LogBatch], Job | None]


class Executor:
    """Runs the executions of one flow in one process (all its workers share it)."""

    def __init__(self, *, engine: Engine, log_factory: Callable[[], ExecutionLog],
                 output: KafkaOutput | None, stop_on_failure: bool = False,
                 max_concurrency: int = 1, key_ordering: bool = False,
                 running_docs: bool | None = None) -> None:
        self.engine = engine
        self.log_factory = log_factory
        self.output = output
        self.stop_on_failure = stop_on_failure
        self.key_ordering = key_ordering
        self.max_concurrency = max_concurrency
        # no task of the flow blocks: run executions on the worker thread (no pool hand-off).
        # A flow whose tasks may block runs them on the pool even with maxConcurrency 1 (a
        # pool of one thread, in submission order): inline, a batch of slow executions kept
        # the worker in the step for its whole length, with no snapshot (nothing settled,
        # committed or counted) and no RUNNING document meanwhile
        self.inline = not any(task.BLOCKING for _, task in engine.flow.all_tasks())
        #: write a RUNNING document when an execution starts: by default only where
        #: executions may take long (blocking tasks on the pool); an inline execution takes
        #: micro- to milliseconds and writes its terminal document only
        self.running_docs = not self.inline if running_docs is None else running_docs
        self._log: ExecutionLog | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def resources(self) -> tuple[ExecutionLog, ThreadPoolExecutor | None]:
        """The execution log producer and the execution pool, created on first use."""
        with self._lock:
            if self._log is None:
                self._log = self.log_factory()
                if not self.inline:
                    self._pool = ThreadPoolExecutor(self.max_concurrency,
                                                    thread_name_prefix="execution")
            return self._log, self._pool

    def run(self, items: Sequence[Any], prepare: Prepare, ends: Ends | None = None
            ) -> list[Execution]:
        """Run one execution per item (``prepare`` builds it; None skips the item) and
        return them once every one is done and the round's transaction committed with
        ``ends``."""
        log, _pool = self.resources()
        batch = log.batch()
        kept: list[Execution] = []
        todo = list(items)
        for _round in range(3):
            scope = self.output.scope() if self.output is not None else None
            prepared: list[tuple[Any, Job | None]] = []
            executions: list[Execution] = []
            try:
                prepared = [(item, prepare(item, batch)) for item in todo]
                executions = self._run_jobs([j for _, j in prepared if j is not None],
                                            batch, scope)
                if scope is not None and scope.broken:
                    # its Produce tasks failed for want of a transaction: stop, replay later
                    raise TransactionError(scope.broken)
                if scope is not None and scope.active:
                    scope.commit(dict(ends or {}))
                done = kept + executions
                break
            except TransactionError:
                if scope is None or not scope.poisoned:
                    raise
                poisoned = {e.id: e for e in executions if e.id in scope.poisoned}
                kept += poisoned.values()
                todo = [item for item, job in prepared
                        if job is None or job.execution.id not in poisoned]
            except BaseException:
                if scope is not None and scope.active:
                    scope.abort()
                raise
        else:
            raise TransactionError("the batch's transaction aborted three times; stopping")
        shutdown.add_done(len(done))
        return done

    def check_stop(self, executions: Sequence[Execution]) -> None:
        """onFailure STOP: raise for the first FAILED execution (its document is done)."""
        if not self.stop_on_failure:
            return
        for e in executions:
            if e.state == State.FAILED:
                raise stopped_by(e)

    def _run_jobs(self, jobs: list[Job], batch: LogBatch, scope: BatchScope | None
                  ) -> list[Execution]:
        if self.inline or len(jobs) <= 1:
            for job in jobs:
                self.execute(job, batch, scope)
        else:
            _log, pool = self.resources()
            assert pool is not None
            if self.key_ordering:
                groups: dict[Any, list[Job]] = defaultdict(list)
                for job in jobs:
                    groups[job.order_key].append(job)
                futures = [pool.submit(self._run_sequence, g, batch, scope)
                           for g in groups.values()]
            else:
                futures = [pool.submit(self.execute, job, batch, scope) for job in jobs]
            wait(futures)
            for f in futures:
                f.result()
        settle(scope, jobs)
        executions = [self.conclude(job, batch) for job in jobs]
        batch.wait()
        return executions

    def _run_sequence(self, jobs: list[Job], batch: LogBatch, scope: BatchScope | None
                      ) -> None:
        for job in jobs:
            self.execute(job, batch, scope)

    def execute(self, job: Job, batch: LogBatch, scope: BatchScope | None = None) -> None:
        """Run one job's tasks (a RUNNING document first when :attr:`running_docs`)."""
        execution = job.execution
        if job.variables is not None:
            if self.running_docs:
                execution.state = State.RUNNING
                batch.write(execution.id, execution.to_json())
            self.engine.run(execution, job.variables, scope)

    def conclude(self, job: Job, batch: LogBatch) -> Execution:
        """Write the terminal document of an executed job (delivery: ``batch.wait()``)."""
        execution = job.execution
        if job.finish is not None:
            job.finish(execution)
        batch.write(execution.id, execution.to_json())
        return execution

    def run_job(self, job: Job, batch: LogBatch, scope: BatchScope | None = None
                ) -> Execution:
        """Run one job and write its documents (their delivery is ``batch.wait()``'s)."""
        self.execute(job, batch, scope)
        settle(scope, [job])
        return self.conclude(job, batch)


def settle(scope: BatchScope | None, jobs: Sequence[Job]) -> None:
    """The Produce tasks of ``jobs`` enqueued their records: check them all once, before any
    terminal document says the executions succeeded (a refused record: :func:`fail_late`)."""
    if scope is None or not scope.deferred:
        return
    by_id = {job.execution.id: job.execution for job in jobs}
    for exec_id, (task_id, message) in scope.settle().items():
        execution = by_id.get(exec_id)
        if execution is not None:
            fail_late(execution, task_id, message)


def stopped_by(execution: Execution) -> FlowStopped:
    """The one-line stop of ``onFailure: STOP`` for a FAILED execution."""
    msg = (execution.error or {}).get("message", "")
    return FlowStopped(f"execution {execution.id} of {execution.trigger.describe()} FAILED: "
                       f"{msg}; onFailure STOP: job halted without committing it")


def fail_late(execution: Execution, task_id: str, message: str) -> None:
    """A task's work failed after the task returned (a Produce delivery checked at the end
    of the batch): the task run and the execution become FAILED with the error, which is
    also an ERROR line of the execution's log."""
    text = mask(message, limit=2000)
    run_id: str | None = None
    attempt: int | None = None
    for index, run in enumerate(execution.task_runs):
        if run.task_id == task_id:
            run.state = State.FAILED
            run_id, attempt = execution.task_run_id(index), len(run.attempts) or None
            if run.attempts:
                run.attempts[-1].state = State.FAILED
                run.attempts[-1].error = text
    execution.error = {"taskId": task_id, "message": text}
    execution.log("ERROR", text, task_id=task_id, task_run_id=run_id, attempt=attempt)
    execution.finish(State.FAILED)
