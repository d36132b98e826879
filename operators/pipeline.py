"""Executions that outlive the step that started them (realtime consumer-group flows).

The execute step hands each record's :class:`~waxflow.operators.executor.Job` to the flow's
:class:`Pipeline` and returns at once; the execution runs on the worker thread (a flow
without blocking tasks) or on the pool (``maxConcurrency`` threads), and it is *done* when
its terminal document is acknowledged by the broker: only then is its offset marked done in
the partition's :class:`~waxflow.progress.PartitionProgress`, whose lowest unfinished offset
is what the source commits (G1, :mod:`waxflow.operators.checkpoint`). So:

- a slow execution holds up only its own offset's commit, never the other records;
- a retry delay pauses the execution on a timer (:meth:`Engine.advance
  <waxflow.operators.engine.Engine.advance>` returns the delay) and holds no thread;
- ``kafka.Produce`` tasks enqueue their records and return — no thread waits for a broker
  round trip; transactional ones buffer their records for the epoch's transaction, which
  commits them with the offsets below which every execution is done
  (:mod:`waxflow.operators.transactions`);
- *quiet mode* (consumer groups): an execution's documents and at-least-once
  records go to *quiet* producers, which call Python back only for failed deliveries (no
  Python call per delivered record). Its terminal document is written as soon as it is
  terminal, and it is *done* only at the first snapshot after the broker acknowledged both
  the document and its records: before the source takes its commit point,
  :meth:`Pipeline._settle` waits (bounded) until the quiet producers' queues are empty
  (everything sent before is acknowledged, or its failure was recorded on that thread), then
  marks the offsets done. A record that failed makes its execution FAILED and its terminal
  document is written again (the log keeps the latest: FAILED), settled at a later snapshot;
  a document that failed is sent again after an outage, else stops the job. With metrics on,
  each snapshot counts the executions it settled (:func:`metrics.executions_done
  <waxflow.connectors.metrics.executions_done>`, from their objects: no document parsed),
  and a RUNNING document marks its execution in flight. Elsewhere (share groups) each
  delivery report is served as it comes: the terminal document is written once the
  execution's records are acknowledged and the offset is done when the document is;
- documents: a flow without blocking tasks writes one terminal document per execution
  (its executions take micro- to milliseconds on the worker thread); a RUNNING document is
  written when an execution starts on the pool (blocking tasks: it may run long) and
  whenever one pauses for a retry. So after a crash the history shows as RUNNING every
  execution that was running long or waiting for a retry; a fast one cut short by the
  crash left no document, and it replays (its offset was not committed) — its history
  starts with the replay;
- ``keyOrdering``: an execution whose key has one unfinished starts only after it;
- what an execution finds after its step returned — a document the broker refused, a FAILED
  execution under ``onFailure: STOP`` — is put in :attr:`Progress.error
  <waxflow.progress.Progress.error>`: the source raises it at its next read, and since that
  offset is never marked done, nothing past it is committed.

The compiled path: a simple flow's records (:mod:`waxflow.operators.fastpath` says which)
are run a batch at a time by the execute step, which hands the results to
:meth:`Pipeline.submit_fast`: records enqueued, then terminal documents, settled at the
snapshot exactly as the quiet executions above (a late failure builds the execution object
then, fails it and documents it again).

Used for every realtime flow, consumer groups and share groups. Share groups: ``done`` sends
the record's ack by outcome, and a retry that would outlive the record lock gives the record
back (:class:`Returnable`) instead of pausing; a transactional Produce task there commits its
own transaction (no offsets to commit with it).
"""

from __future__ import annotations

import functools
import gc
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from confluent_kafka import KafkaError, KafkaException, Message

from waxflow.connectors import metrics, shutdown
from waxflow.connectors.deliveries import (
    OUTAGE,
    Deliveries,
    QuietDeliveries,
    Record,
    describe_record,
    is_outage,
)
from waxflow.connectors.execution_log import ExecutionLog
from waxflow.connectors.kafka_output import BatchScope
from waxflow.errors import DeliveryError
from waxflow.execution import State, now, secrets_registered
from waxflow.operators.executor import Executor, Job, fail_late, stopped_by
from waxflow.operators.fastpath import CompiledFlow, FastRun
from waxflow.operators.transactions import Buffered, Produced, Transactions
from waxflow.progress import PartitionProgress, Progress

LOG = logging.getLogger("waxflow.pipeline")


class _ItemScope:
    """What a pipelined execution's Produce tasks see as their scope: the flow's shared
    idempotent producers, whose deliveries are settled before the execution's terminal
    document (:meth:`Pipeline._finish`), not waited for inside the task; transactional
    Produce tasks buffer their records for the transaction that commits the execution's
    offset (:mod:`waxflow.operators.transactions`)."""

    __slots__ = ("_quiet", "_shared", "_txn", "buffered", "deferred")
    deferring = True

    def __init__(self, shared: BatchScope, txn: Transactions | None,
                 quiet: Callable[[float], None] | None = None) -> None:
        """``quiet``: at-least-once records go to the quiet producers, whose reports are
        served by ``quiet(timeout)`` (:meth:`Pipeline._serve_quiet`)."""
        self._shared = shared
        self._txn = txn
        self._quiet = quiet
        self.deferred: list[tuple[str, Deliveries]] = []
        self.buffered: list[tuple[str, Buffered]] = []

    def deliveries(self, conf: Mapping[str, Any], transactional: bool) -> Deliveries:
        if transactional and self._txn is not None:
            return self._txn.buffer(conf)
        # (a transactional Produce is pipelined only with ``txn``: compiler.compile_flow)
        if self._quiet is not None and not transactional:
            return QuietDeliveries(self._shared.output.quiet_producer(conf), serve=self._quiet)
        return self._shared.deliveries(conf, transactional)

    def defer(self, _execution_id: str, task_id: str, deliveries: Deliveries) -> None:
        if isinstance(deliveries, Buffered):
            self.buffered.append((task_id, deliveries))
        else:
            self.deferred.append((task_id, deliveries))


class Completion(Protocol):
    """Where an execution reports that it is done: its partition's progress (consumer
    groups), or its share-group record's ack (:class:`~waxflow.connectors.kafka_share.
    ShareAck`, which may also give a record back instead of waiting for a retry)."""

    def done(self, offset: int) -> None: ...


@runtime_checkable
class Returnable(Completion, Protocol):
    """A completion that may hand its record back to the broker instead of waiting."""

    def give_back(self, delay: float) -> str | None: ...

    def released(self) -> None: ...


@dataclass(slots=True, eq=False)
class _Item:
    job: Job
    part: Completion
    offset: int
    ctx: Any = None  # the engine's run state once started
    scope: _ItemScope | None = None
    #: transactional Produce records, held for the transaction once the execution is done
    produced: list[tuple[str, Sequence[Record]]] | None = None
    #: quiet mode (a consumer group's record): its terminal document and at-least-once
    #: records go to the quiet producers and are settled at the next snapshot
    quiet: bool = False
    #: quiet mode: its Produce task runs' records, checked when the execution is settled
    outputs: list[tuple[str, Deliveries]] | None = None

    def failed(self) -> bool:
        """Its execution is FAILED."""
        return self.job.execution.state == State.FAILED

    def held(self) -> Produced:
        """Its transactional records, for the transaction that commits its offset."""
        assert self.produced is not None
        execution = self.job.execution
        return Produced(execution.id, self.produced, execution)


class _Outputs:
    """A compiled-path execution's records of one Produce task run on a quiet producer: the
    delivery reports (failures only) record what failed, worded as :class:`QuietDeliveries`
    words it."""

    __slots__ = ("_errors",)

    def __init__(self) -> None:
        self._errors: list[str] = []

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:  # (a quiet producer reports failures only)
            return
        try:
            value = msg.value()
            headers: Any = msg.headers()  # (name, bytes) pairs, as they were sent
            what = describe_record(msg.topic() or "?", msg.key(),
                                   len(value) if value is not None else None, headers)
        except Exception:  # never lose the error over its description
            what = f"record to topic {msg.topic()}"
        self._errors.append(f"{what}: {err.str()}")

    def errors(self) -> list[str]:
        """The failed deliveries reported so far, described (empty: none failed)."""
        return list(self._errors)


class _FastItem:
    """A compiled-path execution (:mod:`waxflow.operators.fastpath`) until it is settled:
    what the quiet settling reads of an :class:`_Item`; its execution object is built only
    if it is needed (a failed delivery)."""

    __slots__ = ("_job", "offset", "outputs", "part", "produced", "run")
    quiet = True

    def __init__(self, run: FastRun, part: Completion, offset: int) -> None:
        self.run = run
        self.part = part
        self.offset = offset
        self.outputs: list[tuple[str, Any]] | None = None
        self.produced: list[tuple[str, Sequence[Record]]] | None = None
        self._job: Job | None = None

    @property
    def job(self) -> Job:
        if self._job is None:
            self._job = Job(self.run.execution(), None)
        return self._job

    def failed(self) -> bool:
        """Its execution is FAILED (only a late failure makes it so: then it is built)."""
        return self._job is not None and self._job.execution.state == State.FAILED

    def held(self) -> Produced:
        """Its transactional records (its execution object built only if one is refused)."""
        assert self.produced is not None
        return Produced(self.run.exec_id, self.produced, self.run.execution)


class _Sent:
    """A document sent on the quiet log producer, not yet known acknowledged; its delivery
    report (called only if it failed) records the error."""

    __slots__ = ("document", "error", "item", "terminal")

    def __init__(self, item: _Item | _FastItem, document: bytes, terminal: bool) -> None:
        self.item = item
        self.document = document
        self.terminal = terminal
        self.error: KafkaError | None = None

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.error = err


#: the poller stays out of the way while a reader served the delivery reports this recently
_SERVED_RECENTLY = 0.05
#: how long a snapshot waits for the quiet producers' queues to empty (then it leaves the
#: rest to the next snapshot: the commit point just does not move yet)
_SETTLE_WAIT = 0.5
_SETTLE_WAIT_OUTAGE = 0.02
#: allocations between two young-generation runs of the cyclic garbage collector while a
#: pipeline runs (Python's default: 700). An execution allocates a few hundred containers,
#: nearly all freed by reference counting (measured: 43 objects collected in 1,283 runs over
#: 30,000 executions), and the executions of an epoch stay alive until it is settled, so at
#: 700 the collector mostly rescans live executions: ~8-10% of the process CPU of a Produce
#: flow. At 20,000 the compiled path still spent ~4% there (50k records: 28 young runs of
#: 3-4 ms, 3 middle, 1 full, 48 objects collected); at 100,000 a 50k run needs none. A run
#: scans only the young objects still alive (the unsettled executions: bounded by the
#: in-flight limit). Cyclic garbage, if any, waits for at most this many allocations.
GC_GEN0 = 100_000


def tune_gc() -> None:
    """Raise the young-generation threshold of the cyclic GC to :data:`GC_GEN0` (never
    lowers one set higher; the older generations' thresholds are kept)."""
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GC_GEN0:
        gc.set_threshold(GC_GEN0, gen1, gen2)


class _Timer:
    """One thread running callbacks when they are due (retry delays, re-sends)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="waxflow-timer",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # a callback reports its own errors; never kill the timer
                LOG.exception("timer callback failed")


class Pipeline:
    """Runs one flow's executions past their step, in one process (all workers share it)."""

    def __init__(self, executor: Executor, progress: Progress,
                 txn: Transactions | None = None) -> None:
        self.executor = executor
        self.txn = txn
        self.engine = executor.engine
        self.progress = progress
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._timer = _Timer()
        self._busy_keys: dict[Any, deque[_Item]] = {}  # keyOrdering: waiting per busy key
        self._log: ExecutionLog | None = None
        self._poller: threading.Thread | None = None
        self._served = 0.0  # when a reader last served the delivery reports
        # the idempotent producers of kafka.Produce tasks, shared by every execution instead
        # of one per execution (transactional ones buffer: ``txn``)
        self._scope: BatchScope | None = (BatchScope(executor.output, None)
                                          if executor.output is not None else None)
        # quiet mode (a consumer group's records, :meth:`_start`): no Python call per
        # delivered record; what the broker acknowledged is learnt at each snapshot
        # (:meth:`_settle`), which also counts the executions it settles when metrics are on
        self._metered = metrics.STATE.enabled
        self._unacked: list[_Sent] = []
        #: one thread at a time serves the quiet producers' reports (so a failure is
        #: recorded before the thread that emptied the queue reads it)
        self._quiet_lock = threading.RLock()
        self._warming = False  # :meth:`warm_up` started
        progress.settle = self._settle
        tune_gc()

    def warm_up(self, produces: Sequence[Any] = ()) -> None:
        """Make the execution log and the quiet producers (the log's, and those of
        ``produces``: the flow's at-least-once Produce tasks) on a thread of their own,
        now, and return at once. An idempotent producer's first records wait ~0.5 s for
        its producer id when sent right after it is made (measured: the first snapshot's
        flush of a fresh run took 0.5-0.6 s); made while the dataflow starts, they are
        ready by the first batch. Nothing is sent. What fails here is left for the first
        execution, which makes the same clients (the log under the executor's lock) and
        reports the error itself."""
        if self._warming:
            return
        self._warming = True
        output = self.executor.output

        def warm() -> None:
            try:
                self.log().quiet_producer()
                if output is not None:
                    for task in produces:
                        output.quiet_producer(task.client_conf())
            except Exception as exc:  # the first execution meets it again and reports it
                LOG.debug("warm-up of the producers failed: %s", exc)

        threading.Thread(target=warm, name="warm-up", daemon=True).start()

    # -- entry point (worker thread) ---------------------------------------------------------
    def submit(self, job: Job, part: Completion, offset: int) -> None:
        """Start the execution of one record; it is marked done in ``part`` once delivered."""
        item = _Item(job, part, offset)
        self.progress.started()
        if self.executor.key_ordering and job.variables is not None:
            key = job.order_key
            with self._lock:
                waiting = self._busy_keys.get(key)
                if waiting is not None:
                    waiting.append(item)
                    return
                self._busy_keys[key] = deque()
        if self.executor.inline or job.variables is None:
            self._start(item)
        else:
            self._pool_submit(self._start, item)

    # -- the compiled path (consumer groups, quiet mode) ------------------------------------
    def fast_ready(self) -> bool:
        """Whether a batch may take the compiled path now: no secret registered (documents
        are redacted on the general path) and the job is not stopping."""
        return not secrets_registered() and not shutdown.requested()

    def key_busy(self, key: Any) -> bool:
        """``keyOrdering``: an execution of ``key`` is unfinished (paused for a retry)."""
        return bool(self._busy_keys) and key in self._busy_keys

    def submit_fast(self, fast: CompiledFlow,
                    runs: list[tuple[FastRun, Any]]) -> list[FastRun]:
        """Emit the executions the compiled path ran (consumer groups, quiet mode): for each,
        its Produce records on the quiet producers, its log lines, then its terminal document
        on the quiet log producer; each is done at the first snapshot after the broker
        acknowledged both (:meth:`_settle`), exactly as :meth:`_send_quiet` settles the
        general path's. Returns the runs whose first record the broker refused at once
        (e.g. over ``message.max.bytes``): nothing of them was sent, the general path runs
        them (and records the failure)."""
        log = self.log()
        log_producer = log.quiet_producer()
        topic = log.topic
        output = self.executor.output
        refused: list[FastRun] = []
        sent: list[_Sent] = []
        try:
            for run, part in runs:
                item = _FastItem(run, part, run.rec.raw.offset)
                if run.records:
                    assert output is not None
                    outputs: list[tuple[str, Any]] = []
                    held: list[tuple[str, Sequence[Record]]] = []
                    first, refuse = True, False  # first: nothing of it sent yet
                    for task, records in run.records:
                        if task.transactional:  # held for the epoch's transaction
                            assert self.txn is not None
                            self.txn.check(task.client_conf())
                            held.append((task.id, records))
                            continue
                        producer = output.quiet_producer(task.client_conf())
                        report = _Outputs()
                        for out_topic, key, value, headers, partition, ts in records:
                            if not self._produce_quiet(producer, out_topic, key, value, headers,
                                                       partition, ts, report, first=first):
                                refuse = True
                                break
                            first = False
                        if refuse:
                            break
                        outputs.append((task.id, report))
                    if refuse:  # its first record refused at once: nothing of it was sent
                        refused.append(run)
                        continue
                    item.outputs = outputs or None
                    item.produced = held or None
                    run.records = []  # sent or held: nothing to keep them for
                if run.logs:
                    fast.print_logs(run)
                entry = _Sent(item, run.document, True)
                key = run.exec_id.encode()
                while True:
                    try:
                        log_producer.produce(topic, value=run.document, key=key,
                                             on_delivery=entry)
                        break
                    except BufferError:
                        self._serve_quiet(0.005)  # drain the queue from here
                    except KafkaException as exc:  # refused at once
                        raise DeliveryError(f"cannot send {self._describe(item, run.document)}"
                                            f": {exc.args[0].str()}") from None
                sent.append(entry)
        finally:
            if sent:
                with self._lock:  # (after produce: a snapshot's flush covers them)
                    self._unacked += sent
        return refused

    def _produce_quiet(self, producer: Any, topic: str, key: bytes | None,
                       value: bytes | None, headers: Any, partition: int | None,
                       timestamp: int | None, report: _Outputs, *, first: bool) -> bool:
        """One record on a quiet producer; False when the broker refused the execution's
        first record at once (the general path then runs it), and a later one refused at once
        is a failed delivery of the execution (as :class:`QuietDeliveries` reports it)."""
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers,
                                 on_delivery=report, **kwargs)
                return True
            except BufferError:
                self._serve_quiet(0.05)
            except KafkaException as exc:
                if first:
                    return False
                err = exc.args[0] if exc.args else None
                reason = err.str() if isinstance(err, KafkaError) else str(exc)
                size = len(value) if value is not None else None
                report._errors.append(
                    f"cannot send {describe_record(topic, key, size, headers)}: {reason}")
                return True

    # -- resources -----------------------------------------------------------------------------
    def log(self) -> ExecutionLog:
        """The execution log producer, with a thread serving its delivery reports."""
        if self._log is None:
            log, _ = self.executor.resources()
            with self._lock:
                if self._log is None:
                    self._log = log
                    self._poller = threading.Thread(target=self._poll, name="waxflow-deliveries",
                                                    daemon=True)
                    self._poller.start()
                    self.progress.serve = self._serve
        assert self._log is not None
        return self._log

    def _serve(self) -> None:
        """Serve the delivery reports due now, on the calling (reading) thread: the worker
        runs the callbacks itself, with no GIL hand-off to the poller per report."""
        self._served = time.monotonic()
        self._poll_once(0)
        if self._unacked and self._quiet_lock.acquire(blocking=False):
            try:
                self._poll_quiet(0)
            finally:
                self._quiet_lock.release()

    def _poll_once(self, timeout: float) -> None:
        """The execution log's delivery reports (waiting up to ``timeout``), then the
        Produce tasks' (which settle their executions)."""
        assert self._log is not None
        self._log.producer.poll(timeout)  # follows a rebuilt producer
        if self.executor.output is not None:
            self.executor.output.poll_plain()

    def _poll(self) -> None:
        """Serve delivery reports while the readers do not (a worker busy in a long batch,
        or no longer reading)."""
        while True:
            if time.monotonic() - self._served < _SERVED_RECENTLY:
                time.sleep(_SERVED_RECENTLY)
                continue
            self._poll_once(0.01)

    def _pool_submit(self, fn: Callable[[_Item], None], item: _Item) -> None:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max(1, self.executor.max_concurrency),
                                                    thread_name_prefix="execution")
        self._pool.submit(self._guarded, fn, item)

    def _guarded(self, fn: Callable[[_Item], None], item: _Item) -> None:
        try:
            fn(item)
        except BaseException as exc:  # handed to the source, which stops the job
            self.progress.fail(exc)

    # -- one execution -------------------------------------------------------------------------
    def _abandon(self, item: _Item) -> None:
        """Stopping: drop an execution not started (or paused for a retry) and every one
        waiting behind its key; they are not done, so their offsets replay on the next
        start."""
        self.progress.finished()
        if self.executor.key_ordering and item.job.variables is not None:
            with self._lock:
                waiting = self._busy_keys.pop(item.job.order_key, None) or deque()
            for _other in waiting:
                self.progress.finished()

    def _next_of_key(self, item: _Item) -> None:
        """``keyOrdering``: start the execution waiting behind this one's key, if any."""
        job = item.job
        if not self.executor.key_ordering or job.variables is None:
            return
        with self._lock:
            waiting = self._busy_keys.get(job.order_key)
            nxt = waiting.popleft() if waiting else None
            if nxt is None:
                self._busy_keys.pop(job.order_key, None)
        if nxt is not None:
            nxt.job.execution.start = now()  # it starts now, not when it was read
            self._pool_submit(self._start, nxt)

    def _start(self, item: _Item) -> None:
        job = item.job
        execution = job.execution
        if job.variables is None:  # terminal already (a SKIPPED record)
            self._finish(item)
            return
        if shutdown.requested():
            self._abandon(item)
            return
        item.quiet = quiet = type(item.part) is PartitionProgress
        if self._scope is not None:
            item.scope = _ItemScope(self._scope, self.txn,
                                    self._serve_quiet if quiet else None)
        item.ctx = self.engine.begin(execution, job.variables, item.scope, deferrable=True)
        if self.executor.running_docs:
            # blocking tasks may take long: the history shows the execution running now
            self._send(item, execution.to_json(), terminal=False)
        self._advance(item)

    def _advance(self, item: _Item) -> None:
        delay = self.engine.advance(item.ctx)
        if delay is not None and self._give_back(item, delay):
            return
        if delay is not None:  # a retry is due later: hold no thread until then
            # the history shows it paused (RUNNING, its task RETRYING) while it waits
            self._send(item, item.job.execution.to_json(), terminal=False)
            self.progress.pause(1)
            self._timer.call_later(delay, lambda: self._pool_submit(self._resume, item))
            return
        self._finish(item)

    def _give_back(self, item: _Item, delay: float) -> bool:
        """Share groups: a retry that would outlive the record lock RELEASEs the record
        (after the document that says so) instead of waiting; the broker delivers it again
        (same execution id, a new run, from its first task)."""
        part = item.part
        ack = part.give_back(delay) if isinstance(part, Returnable) else None
        if ack is None:
            return False
        execution = item.job.execution
        execution.trigger.ack = ack
        LOG.info("execution %s of %s: its retry is due in %.1fs, past the record lock: %s "
                 "for redelivery", execution.id, execution.trigger.describe(), delay, ack)
        item.ctx = item.scope = None
        assert isinstance(part, Returnable)
        self._send(item, execution.to_json(), terminal=False, after=part.released)
        self.progress.finished()
        self._next_of_key(item)
        return True

    def _resume(self, item: _Item) -> None:
        self.progress.pause(-1)
        if shutdown.requested():
            self._abandon(item)
            return
        self._advance(item)

    def _finish(self, item: _Item) -> None:
        scope = item.scope
        if scope is None or not scope.deferred:
            self._conclude(item)
            return
        if item.quiet:  # its records are checked with its document, at the next snapshot
            item.outputs, scope.deferred = scope.deferred, []
            self._conclude(item)
            return
        # its Produce tasks enqueued their records: conclude once all are acknowledged
        deferred, scope.deferred = scope.deferred, []
        if len(deferred) == 1:  # one Produce task (the common case): no count to keep
            task_id, deliveries = deferred[0]
            deliveries.settle(functools.partial(self._settled_one, item, task_id))
            return
        lock = threading.Lock()
        left = [len(deferred)]
        failed: list[tuple[str, list[str]]] = []

        def settled(task_id: str, errors: list[str]) -> None:
            with lock:
                if errors:
                    failed.append((task_id, errors))
                left[0] -= 1
                last = left[0] == 0
            if last:  # the first failed task (if any) fails the execution
                self._settled_one(item, *(failed[0] if failed else (task_id, [])))

        for task_id, deliveries in deferred:
            deliveries.settle(functools.partial(settled, task_id))

    def _settled_one(self, item: _Item, task_id: str, errors: list[str]) -> None:
        """The deliveries of an execution's deferred Produce tasks are all acknowledged
        (``errors``: the failed ones of ``task_id``): conclude it (a failure: FAILED)."""
        try:
            if errors:
                fail_late(item.job.execution, task_id,
                          "delivery failed: " + "; ".join(errors[:5]))
            self._conclude(item)
        except BaseException as exc:  # handed to the source, which stops the job
            self.progress.fail(exc)

    def _conclude(self, item: _Item) -> None:
        job = item.job
        if job.finish is not None:
            job.finish(job.execution)
        if item.scope is not None and item.scope.buffered:
            item.produced = [(task_id, buffered.records)
                             for task_id, buffered in item.scope.buffered]
        item.ctx = item.scope = None
        self._send(item, job.execution.to_json(), terminal=True)
        self.progress.finished()
        self._next_of_key(item)

    # -- documents ------------------------------------------------------------------------------
    def _describe(self, item: _Item | _FastItem, document: bytes) -> str:
        log = self.log()
        return log.batch().describe(log.topic, item.job.execution.id.encode(), document, None)

    def _send(self, item: _Item | _FastItem, document: bytes, *, terminal: bool,
              after: Callable[[], None] | None = None) -> None:
        log = self.log()
        key = item.job.execution.id.encode()
        if item.quiet and after is None:  # (all its documents: one producer keeps order)
            self._send_quiet(log, item, key, document, terminal)
            return
        report = functools.partial(self._delivered, item, document, terminal, after)
        while True:
            try:
                log.producer.produce(log.topic, value=document, key=key, on_delivery=report)
                return
            except BufferError:
                log.producer.poll(0.005)  # drain the queue from here
            except KafkaException as exc:  # refused at once (e.g. over message.max.bytes)
                raise DeliveryError(f"cannot send {self._describe(item, document)}: "
                                    f"{exc.args[0].str()}") from None

    def _send_quiet(self, log: ExecutionLog, item: _Item | _FastItem, key: bytes, document: bytes,
                    terminal: bool) -> None:
        """A document on the quiet log producer (every document of a quiet execution goes
        there, so they reach the log in the order they were sent): a terminal one settles
        the execution (its offset is marked done) at the first snapshot after the broker
        acknowledged it."""
        sent = _Sent(item, document, terminal)
        while True:
            try:
                log.quiet_producer().produce(log.topic, value=document, key=key,
                                             on_delivery=sent)
                break
            except BufferError:
                self._serve_quiet(0.005)  # drain the queue from here
            except KafkaException as exc:  # refused at once (e.g. over message.max.bytes)
                raise DeliveryError(f"cannot send {self._describe(item, document)}: "
                                    f"{exc.args[0].str()}") from None
        with self._lock:  # (after produce: a snapshot's flush covers it)
            self._unacked.append(sent)
        if not terminal and self._metered:
            metrics.execution_running(item.job.execution.id)

    def _quiet_producers(self) -> list[Any]:
        assert self._log is not None
        producers = [self._log.quiet_producer()]
        if self.executor.output is not None:
            producers += self.executor.output.quiet_producers()
        return producers

    def _poll_quiet(self, timeout: float) -> None:
        for producer in self._quiet_producers():
            producer.poll(timeout)

    def _serve_quiet(self, timeout: float) -> None:
        """Serve the quiet producers' reports (a full queue drains), one thread at a time."""
        with self._quiet_lock:
            self._poll_quiet(timeout)

    def _settle(self) -> None:
        """Before a snapshot takes its commit points (worker thread): wait (bounded) until
        the quiet producers' queues are empty, so every terminal document and record sent
        before is acknowledged or failed (failures were recorded as their reports were
        served, on this thread), then settle each execution: done, or — a failed record —
        FAILED and documented again, or — a failed document — sent again (outage) or the
        job stopped. What cannot be confirmed in time waits for the next snapshot (its
        offset is not done: the commit point does not pass it)."""
        if not self._unacked:
            return
        with self._quiet_lock:
            with self._lock:
                sent, self._unacked = self._unacked, []
            if not sent:
                return
            wait = _SETTLE_WAIT if OUTAGE.since is None else _SETTLE_WAIT_OUTAGE
            if any(p.flush(wait) for p in self._quiet_producers()):
                with self._lock:  # not all acknowledged yet: the next snapshot tries again
                    self._unacked[:0] = sent
                return
            done = 0
            outage = False
            counted: list[_Item | _FastItem] | None = [] if self._metered else None
            for entry in sent:
                try:
                    if entry.error is not None:
                        outage = True
                        self._resend(entry)
                    elif entry.terminal and self._settled(entry.item, counted):
                        done += 1
                except Exception as exc:  # handed to the source (never done: no commit)
                    self.progress.fail(exc)
            if not outage:
                OUTAGE.up()
            if done:
                shutdown.add_done(done)
            if counted:
                self._count(counted)

    def _resend(self, entry: _Sent) -> None:
        """A document the broker did not take: sent again once it is back (an outage; a
        RUNNING one only while its execution is not terminal: a later document supersedes
        it), else the job stops (the execution's offset is never done)."""
        err = entry.error
        assert err is not None
        item = entry.item
        if is_outage(err) and time.monotonic() < OUTAGE.deadline():
            OUTAGE.down("execution log", err.str())
            if err.fatal() and self._log is not None and self._log.quiet is not None:
                self._log.rebuild(self._log.quiet)
            if entry.terminal or not item.job.execution.terminal:
                self._timer.call_later(0.5, lambda: self._send(item, entry.document,
                                                               terminal=entry.terminal))
            return
        self.progress.fail(DeliveryError(
            f"delivery failed: {self._describe(item, entry.document)}: {err.str()}"))

    def _settled(self, item: _Item | _FastItem, counted: list[_Item | _FastItem] | None
                 ) -> bool:
        """A quiet execution's document and records are acknowledged: done (True), or a
        record failed: FAILED, documented again (settled at a later snapshot). ``counted``
        (metrics on) gets the execution whose terminal document stands acknowledged (done,
        or FAILED under ``onFailure: STOP``: the metered path counts that one too)."""
        outputs, item.outputs = item.outputs, None
        for task_id, deliveries in outputs or ():
            assert isinstance(deliveries, QuietDeliveries | _Outputs)
            errors = deliveries.errors()
            if errors:
                fail_late(item.job.execution, task_id,
                          "delivery failed: " + "; ".join(errors[:5]))
                self._send(item, item.job.execution.to_json(), terminal=True)
                return False
        if counted is not None:
            counted.append(item)
        if self.executor.stop_on_failure and item.failed():
            self.progress.fail(stopped_by(item.job.execution))
            return False  # never done: no commit passes it
        if item.produced is not None:  # held for the transaction before the offset is done
            assert self.txn is not None and isinstance(item.part, PartitionProgress)
            self.txn.put(item.part, item.offset, item.held())
            item.produced = None
        item.part.done(item.offset)
        return True

    @staticmethod
    def _count(items: list[_Item | _FastItem]) -> None:
        """Metrics: count the executions a snapshot settled (their terminal documents
        acknowledged), from their objects, or what the compiled path keeps of a run whose
        object was never built (it succeeded)."""
        executions = []
        compiled = []
        for item in items:
            if type(item) is _FastItem and item._job is None:
                compiled.append(item.run.metric())
            else:
                executions.append(item.job.execution)
        metrics.executions_done(executions, compiled=compiled)

    def _delivered(self, item: _Item | _FastItem, document: bytes, terminal: bool,
                   after: Callable[[], None] | None, err: KafkaError | None,
                   _msg: Message) -> None:
        execution = item.job.execution
        if err is not None:
            if is_outage(err) and time.monotonic() < OUTAGE.deadline():
                OUTAGE.down("execution log", err.str())
                if err.fatal() and self._log is not None:
                    self._log.rebuild(self._log.producer)
                self._timer.call_later(0.5, lambda: self._send(item, document,
                                                               terminal=terminal, after=after))
                return
            self.progress.fail(DeliveryError(
                f"delivery failed: {self._describe(item, document)}: {err.str()}"))
            return
        OUTAGE.up()
        if after is not None:
            after()
        if not terminal:
            return
        if self.executor.stop_on_failure and execution.state == State.FAILED:
            self.progress.fail(stopped_by(execution))
            return  # never done: no commit passes it
        if item.produced is not None:  # held for the transaction before the offset is done
            assert self.txn is not None and isinstance(item.part, PartitionProgress)
            self.txn.put(item.part, item.offset, item.held())
            item.produced = None
        item.part.done(item.offset)
        shutdown.add_done(1)
