"""Producers for ``kafka.Produce`` tasks, and the Kafka transaction of a batch (G3).

In a consumer-group flow each Bytewax worker owns one transactional producer with a stable
``transactional.id`` (``waxflow-<namespace>.<flow>-p<process>-w<slot>``): a restarted job
re-initialises the same ids and so fences any zombie of the previous incarnation. A
:class:`BatchScope` is one transaction: opened per epoch by the worker's pipelined
transactions (:mod:`waxflow.operators.transactions`, realtime flows: the records of the
executions below the offsets it commits) or per batch by a ``kafka.Trigger`` flow's execute
step; its first transactional Produce begins the transaction, and ``commit()`` adds the
consumed offsets (``send_offsets_to_transaction``) and commits: the records produced and the
offsets consumed become visible together, or not at all. A ``read_committed`` reader
therefore sees each output exactly once across kills.

Without a consumer group (replay, ``waxflow test``, schedules) a transactional Produce
commits its own transaction at the end of the task (no offsets to include). With
``transactional: false`` records go through a shared idempotent producer: at-least-once.
Every delivery is checked in both modes.

Broker outages (:meth:`BatchScope.commit`): an outage aborts the open transaction one way
or another (its records time out, the coordinator aborts it on restart and bumps the
producer epoch, so the producer is then *fenced* although no other instance exists). The
scope keeps every record the batch's executions produced; when a delivery, ``begin``,
``send_offsets`` or ``commit`` fails for want of the broker, the executions are not failed:
at commit the scope waits for the broker (up to ``$WAXFLOW_BROKER_GIVE_UP``, default 300 s),
rebuilds the worker's producer with the same ``transactional.id`` (``init_transactions``
fences the old one and aborts whatever it left open), produces the batch's records again in
a new transaction and commits it with the same consumed offsets. So the batch's outcome is
the one the executions computed, committed once, under the same execution ids, and nothing
runs twice. When a commit's outcome is unknown (the broker died during ``commit``), the
group's committed offsets say whether it happened before anything is sent again. A *real*
fencing (another process with the same ``transactional.id``) cannot happen while this
instance holds the flow's instance lock: a lost lock, or a freshly rebuilt producer fenced
again, stops the job with a message saying so.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from waxflow.connectors import broker_watch, instance_lock, metrics
from waxflow.connectors.deliveries import (
    OUTAGE,
    QUIET,
    Deliveries,
    Record,
    client_error,
    give_up_seconds,
    is_fenced,
    is_outage,
    kafka_error,
)
from waxflow.errors import DeliveryError, TransactionError

LOG = logging.getLogger("waxflow.kafka_output")


def conf_key(conf: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in conf.items()))


class KafkaOutput:
    """All producers of one flow in one process (thread-safe)."""

    def __init__(self, flow_key: str, group_conf: dict[str, Any] | None) -> None:
        self.flow_key = flow_key
        self.group_conf = group_conf  # conf incl. group.id of the consumer-group source
        self.process_id = os.environ.get("WAXFLOW_PROCESS_ID", "0")
        #: transactional producers report failed deliveries only (:data:`QUIET`): set
        #: before the first one is made, by an owner whose transactions produce through
        #: :class:`_TxnDeliveries` alone (a pipelined flow's epoch transactions)
        self.quiet_txn = False
        self._lock = threading.Lock()
        self._plain: dict[tuple[tuple[str, str], ...], Producer] = {}
        #: the same config object asks again (a task's cached config): no key to build
        self._plain_by_conf: dict[int, tuple[Mapping[str, Any], Producer]] = {}
        self._txn: dict[tuple[int, tuple[tuple[str, str], ...]], Producer] = {}
        self._slots: dict[int, int] = {}
        self._init_locks: dict[tuple[int, tuple[tuple[str, str], ...]], threading.Lock] = {}
        self._tids: dict[tuple[int, tuple[tuple[str, str], ...]], str] = {}
        self._retired: list[Producer] = []  # replaced producers, never destroyed mid-call
        self._group_metadata: Any = None
        #: quiet idempotent producers (Python hears of failed deliveries only), by config
        self._quiet: dict[tuple[tuple[str, str], ...], Producer] = {}
        self._quiet_by_conf: dict[int, tuple[Mapping[str, Any], Producer]] = {}

    def plain_producer(self, conf: Mapping[str, Any]) -> Producer:
        return self._shared(conf, self._plain, self._plain_by_conf, {})

    def quiet_producer(self, conf: Mapping[str, Any]) -> Producer:
        """The shared idempotent producer for ``conf`` that calls Python back only for failed
        deliveries (:data:`~waxflow.connectors.deliveries.QUIET`): its owner learns that
        records are acknowledged by emptying its queue (:meth:`quiet_producers`)."""
        return self._shared(conf, self._quiet, self._quiet_by_conf, QUIET)

    def _shared(self, conf: Mapping[str, Any],
                producers: dict[tuple[tuple[str, str], ...], Producer],
                by_conf: dict[int, tuple[Mapping[str, Any], Producer]],
                extra: Mapping[str, Any]) -> Producer:
        """The idempotent producer of ``producers`` for ``conf`` (plus ``extra``), made on
        first use; found by the config object's identity first (tasks cache their config)."""
        hit = by_conf.get(id(conf))
        if hit is not None and hit[0] is conf:
            return hit[1]
        key = conf_key(conf)
        with self._lock:
            if key not in producers:
                producers[key] = Producer({**conf, "enable.idempotence": True, "acks": "all",
                                           "linger.ms": 5, **extra})
            producer = producers[key]
            if len(by_conf) < 64:  # tasks' cached configs, a handful
                by_conf[id(conf)] = (conf, producer)
            return producer

    def quiet_producers(self) -> list[Producer]:
        """Every quiet producer made so far."""
        with self._lock:
            return list(self._quiet.values())

    def poll_plain(self) -> None:
        """Serve the delivery reports of the shared idempotent producers (for trackers that
        :meth:`~waxflow.connectors.deliveries.Deliveries.settle` instead of waiting)."""
        with self._lock:
            producers = list(self._plain.values())
        for producer in producers:
            producer.poll(0)

    def _slot(self) -> int:
        ident = threading.get_ident()
        with self._lock:
            return self._slots.setdefault(ident, len(self._slots))

    def txn_producer(self, conf: Mapping[str, Any], slot: int) -> Producer:
        key = (slot, conf_key(conf))
        with self._lock:
            producer = self._txn.get(key)
            if producer is not None:
                return producer
            slot_lock = self._init_locks.setdefault(key, threading.Lock())
        # init_transactions can wait for the previous incarnation's transaction to abort:
        # do not hold the process-wide lock meanwhile (other workers go on)
        with slot_lock:
            with self._lock:
                producer = self._txn.get(key)
                if producer is not None:
                    return producer
            # a job (re)started while the broker is away waits for it, up to the give-up
            # bound, like every other client (init_transactions times out meanwhile)
            producer = broker_watch.retry(lambda: self._new_txn_producer(key, conf, 30),
                                          f"transactional producer {self._tid(key)} start-up")
            with self._lock:
                self._txn[key] = producer
            return producer

    def _tid(self, key: tuple[int, tuple[tuple[str, str], ...]]) -> str:
        with self._lock:
            tid = self._tids.get(key)
            if tid is None:
                suffix = "" if len({k[1] for k in self._tids} | {key[1]}) == 1 else \
                    f"-{uuid.uuid5(uuid.NAMESPACE_OID, repr(key[1])).hex[:8]}"
                tid = f"waxflow-{self.flow_key}-p{self.process_id}-w{key[0]}{suffix}"
                self._tids[key] = tid
            return tid

    def _new_txn_producer(self, key: tuple[int, tuple[tuple[str, str], ...]],
                          conf: Mapping[str, Any], timeout: float) -> Producer:
        # a killed incarnation's open transaction blocks the group's offset fetches
        # (read_committed, require_stable) until fenced or timed out: keep it short
        producer = Producer({"transaction.timeout.ms": 10000, "error_cb": client_error, **conf,
                             "transactional.id": self._tid(key), "linger.ms": 5,
                             **(QUIET if self.quiet_txn else {})})
        try:
            producer.init_transactions(timeout)
        except BaseException:
            self._retire(producer)
            raise
        return producer

    def rebuild(self, conf: Mapping[str, Any], slot: int, old: Producer | None,
                timeout: float) -> Producer:
        """A new transactional producer for ``slot`` with the same ``transactional.id``:
        ``init_transactions`` fences ``old`` (and the slot's cached producer) and aborts any
        transaction they left open. Raises KafkaException while the broker is away."""
        key = (slot, conf_key(conf))
        with self._lock:
            slot_lock = self._init_locks.setdefault(key, threading.Lock())
        with slot_lock:
            with self._lock:
                cached = self._txn.pop(key, None)
            for dead in {id(p): p for p in (cached, old) if p is not None}.values():
                self._retire(dead)
            producer = self._new_txn_producer(key, conf, timeout)
            with self._lock:
                self._txn[key] = producer
            return producer

    def discard(self, conf: Mapping[str, Any], slot: int, producer: Producer) -> None:
        """Forget a producer left in an unknown state: the slot's next use builds a new one
        (whose ``init_transactions`` aborts what this one left open)."""
        key = (slot, conf_key(conf))
        with self._lock:
            if self._txn.get(key) is producer:
                del self._txn[key]
        self._retire(producer)

    def _retire(self, producer: Producer) -> None:
        with self._lock:
            if any(p is producer for p in self._retired):
                return
            self._retired = [*self._retired[-7:], producer]
        try:
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)
        except (KafkaException, RuntimeError):
            pass

    def group_metadata(self) -> Any:
        with self._lock:
            if self._group_metadata is None:
                assert self.group_conf is not None
                probe = Consumer({k: v for k, v in self.group_conf.items()
                                  if k != "on_commit"})
                self._group_metadata = probe.consumer_group_metadata()
                probe.close()
            return self._group_metadata

    def warm_up(self, confs: list[dict[str, Any]]) -> None:
        """Initialise this worker thread's transactional producers now (fencing the previous
        incarnation's, which aborts its open transaction) — before the source asks for the
        group's committed offsets, which wait for such transactions to end."""
        if self.group_conf is None:
            return
        slot = self._slot()
        for conf in confs:
            self.txn_producer(conf, slot)

    def scope(self) -> BatchScope:
        """A scope for one batch, bound to the calling worker thread's slot."""
        return BatchScope(self, self._slot() if self.group_conf is not None else None)


#: seconds past its own timeout that ``send_offsets_to_transaction`` may take before the
#: producer is given up as stuck
STUCK_GRACE = 5.0


def send_offsets(producer: Producer, tps: list[TopicPartition], group: Any,
                 timeout: float) -> None:
    """``producer.send_offsets_to_transaction`` bounded by ``timeout`` (+ :data:`STUCK_GRACE`).

    librdkafka does not always honour that call's own timeout: after a broker restart it can
    wait forever on a group coordinator it cached before the restart (librdkafka #5456 and
    #5511, open in 2.14; seen here as a transactional job that never committed again). The
    call runs on a thread of its own; one that has not returned in time raises a retriable
    ``_TIMED_OUT`` KafkaException, which :meth:`BatchScope.commit` treats like an outage:
    the producer is given up (left to its thread, fenced by its replacement's
    ``init_transactions``) and the batch's transaction is redone on a new one."""
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            producer.send_offsets_to_transaction(tps, group, timeout)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append(exc)

    worker = threading.Thread(target=call, name="waxflow-send-offsets", daemon=True)
    worker.start()
    worker.join(timeout + STUCK_GRACE)
    if not outcome:
        LOG.warning("waxflow: send_offsets_to_transaction did not return within %.0fs "
                    "(librdkafka #5511); giving up this producer and redoing the batch's "
                    "transaction on a new one", timeout + STUCK_GRACE)
        raise KafkaException(KafkaError(
            KafkaError._TIMED_OUT, f"send_offsets_to_transaction stuck over "
            f"{timeout + STUCK_GRACE:.0f}s", retriable=True))
    if outcome[0] is not None:
        raise outcome[0]


class BatchScope:
    """Producers as seen by the executions of one batch."""

    def __init__(self, output: KafkaOutput, slot: int | None) -> None:
        self.output = output
        self.slot = slot
        #: Produce tasks enqueue and return (:meth:`defer`) in a consumer-group batch
        self.deferring = slot is not None
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._conf: Mapping[str, Any] | None = None
        self._conf_key: tuple[tuple[str, str], ...] | None = None
        # executions whose records failed delivery inside this batch's transaction: the
        # transaction can then only abort, and the batch is re-run without them
        self.poisoned: set[str] = set()
        self.broken: str | None = None  # the transaction could not be set up
        #: every record sent in the batch's transaction, to send again after an outage
        self.records: list[Record] = []
        #: why the transaction must be redone once the broker is back (None: it need not)
        self.outage: str | None = None
        #: Produce task runs that enqueued their records and returned: (execution id, task
        #: id, deliveries), checked once for the whole batch by :meth:`settle`
        self.deferred: list[tuple[str, str, Deliveries]] = []

    def defer(self, execution_id: str, task_id: str, deliveries: Deliveries) -> None:
        """A Produce task run enqueued its records: its deliveries are checked at the end of
        the batch (:meth:`settle`), before any terminal document or commit."""
        with self._lock:
            self.deferred.append((execution_id, task_id, deliveries))

    def settle(self) -> dict[str, tuple[str, str]]:
        """Wait for every deferred delivery of the batch; the executions whose records
        failed, as ``{execution id: (task id, error)}`` — inside a transaction they poison
        it (it aborts and the batch runs again without them)."""
        with self._lock:
            deferred, self.deferred = self.deferred, []
        failed: dict[str, tuple[str, str]] = {}
        for exec_id, task_id, deliveries in deferred:
            try:
                deliveries.wait()
            except DeliveryError as exc:
                failed.setdefault(exec_id, (task_id, str(exc)))
                if isinstance(deliveries, _TxnDeliveries):
                    self.poison(exec_id)
        return failed

    def poison(self, execution_id: str) -> None:
        """Mark an execution whose delivery failed inside the batch's transaction."""
        with self._lock:
            self.poisoned.add(execution_id)

    def lost(self, err: KafkaError, what: str) -> None:
        """The transaction is lost to an outage: the batch's records are sent again in a new
        one at commit (the executions are not failed for it)."""
        with self._lock:
            if self.outage is None:
                self.outage = f"{what}: {err.str()}"
        OUTAGE.down("transactional producer", f"{what}: {err.str()}")

    def deliveries(self, conf: Mapping[str, Any], transactional: bool) -> Deliveries:
        """A delivery tracker on the right producer for one Produce task run.

        Transactional inside a consumer-group batch: the batch's transaction (begun here on
        first use; committed by :meth:`commit`). Otherwise: a task-own transaction
        (:class:`TaskTransaction`) or the shared idempotent producer.
        """
        if not transactional:
            return Deliveries(self.output.plain_producer(conf))
        if self.slot is None:
            return TaskTransaction(conf)
        key = conf_key(conf)
        with self._lock:
            if self._conf_key is None:
                self._conf, self._conf_key = conf, key
            elif key != self._conf_key:
                raise DeliveryError("one batch's transaction spans one cluster and one set "
                                    "of producer properties; use transactional: false for "
                                    "a second target")
            need = self._producer is None and self.outage is None
        if need:
            try:
                producer = self.output.txn_producer(conf, self.slot)
                try:
                    producer.begin_transaction()
                except KafkaException:
                    self.output.discard(conf, self.slot, producer)
                    raise
                with self._lock:
                    self._producer = producer
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None or not is_outage(err):
                    # not a task failure: without its transaction the batch must not commit
                    self.broken = f"transactional producer not ready: {exc.args[0].str()}"
                    raise
                self.lost(err, "begin")
        return _TxnDeliveries(self)

    @property
    def active(self) -> bool:
        return self._producer is not None or self.outage is not None

    def _give_up(self, tid_what: str) -> TransactionError:
        return TransactionError(
            f"the broker stayed unreachable for {give_up_seconds():.0f}s "
            f"($WAXFLOW_BROKER_GIVE_UP) while {tid_what}; giving up: the batch was not "
            "committed and replays on the next start under the same execution ids")

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit the batch's transaction with the consumed offsets (next offset to read);
        after an outage, redo it on a rebuilt producer (module doc)."""
        tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        if self.poisoned:  # the transaction can only abort; the batch re-runs without them
            self.abort()
            raise TransactionError("records failed delivery inside the batch's transaction; "
                                   "it aborted and the batch runs again without them")
        producer = self._producer
        committing = False
        if self.outage is None:
            if producer is None:
                return
            try:
                send_offsets(producer, tps, self.output.group_metadata(), 60)
                committing = True
                producer.commit_transaction(120)
                metrics.transaction("commit")
                self._producer = None
                self.records = []
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not (is_outage(err) or err.txn_requires_abort()):
                    self._producer = None
                    raise TransactionError(f"transaction failed: {err.str()}") from None
                self.lost(err, "commit" if committing else "send_offsets")
        self._redo(tps, committing)

    def _redo(self, tps: list[TopicPartition], committing: bool) -> None:
        """Once the broker is back: a new producer (same transactional.id), the batch's
        records again in a new transaction, committed with the same offsets."""
        assert self._conf is not None and self.slot is not None
        deadline = OUTAGE.deadline()
        fenced = 0
        reason = self.outage or "outage"
        tid = self.output._tid((self.slot, conf_key(self._conf)))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.abort()
                raise self._give_up(f"redoing the batch's transaction ({reason})")
            # a genuine second instance is only possible when this one lost its lock
            instance_lock.check("transactional producer fenced or lost in an outage")
            step = "init_transactions"
            again: Deliveries | None = None
            try:
                producer = self.output.rebuild(self._conf, self.slot, self._producer,
                                               min(remaining, 30.0))
                self._producer = producer
                if committing and self._committed(tps, remaining):
                    LOG.info("the batch's transaction committed before the outage ended it")
                    break
                step = "begin"
                producer.begin_transaction()
                step = "produce"
                again = Deliveries(producer, quiet=self.output.quiet_txn)
                for topic, key, value, headers, part, ts in self.records:
                    again.produce(topic, key, value, headers, partition=part, timestamp=ts)
                again.wait(max(1.0, deadline - time.monotonic()))
                step = "send_offsets"
                send_offsets(producer, tps, self.output.group_metadata(),
                             min(60.0, max(1.0, deadline - time.monotonic())))
                step = "commit"
                committing = True
                producer.commit_transaction(max(1.0, deadline - time.monotonic()))
                metrics.transaction("commit")
                LOG.warning("waxflow: the batch's transaction (%d records, %d partitions' "
                            "offsets) was lost to a broker outage (%s) and committed again "
                            "on a rebuilt producer %s", len(self.records), len(tps),
                            reason, tid)
                break
            except (KafkaException, DeliveryError) as exc:
                err = kafka_error(exc)
                if isinstance(exc, DeliveryError):
                    failed = again.failures if again is not None else []
                    outage = bool(failed) and all(is_outage(e) for e, _ in failed)
                    err = failed[0][0] if failed else None
                else:
                    outage = is_outage(err) or bool(err and err.txn_requires_abort())
                if is_fenced(err) and step != "init_transactions":
                    fenced += 1
                    if fenced >= 2:  # fenced again right after init: another live producer
                        self._producer = None
                        raise TransactionError(
                            f"transactional producer {tid} fenced by another producer "
                            "with the same transactional.id: another instance of this "
                            "flow is running; stopping without committing the batch"
                        ) from None
                if not outage:
                    self.abort()
                    raise TransactionError(
                        f"redoing the batch's transaction after an outage failed at {step}: "
                        f"{exc}") from None
                reason = f"{step}: {err.str() if err is not None else exc}"
                OUTAGE.down("transactional producer", reason)
                time.sleep(0.5)
        self._producer = None
        self.records = []
        self.outage = None
        OUTAGE.up()

    def _committed(self, tps: list[TopicPartition], timeout: float) -> bool:
        """Whether the group's committed offsets are the batch's ends already (the commit
        whose answer the outage swallowed did happen; this instance alone commits them)."""
        from waxflow.connectors.kafka_source import committed_offsets

        assert self.output.group_conf is not None
        consumer = Consumer({k: v for k, v in self.output.group_conf.items()
                             if k != "on_commit"})
        try:
            got = committed_offsets(consumer, [TopicPartition(tp.topic, tp.partition)
                                               for tp in tps], timeout=timeout)
        finally:
            consumer.close()
        want = {(tp.topic, tp.partition): tp.offset for tp in tps}
        return all(want[(tp.topic, tp.partition)] == tp.offset for tp in got)

    def abort(self) -> None:
        """Abort the batch's transaction; a producer that cannot (broker away, fatal) is
        discarded: the next batch's producer aborts what it left open."""
        producer, self._producer = self._producer, None
        self.records = []
        self.outage = None
        if producer is None:
            return
        try:
            producer.abort_transaction(60)
            metrics.transaction("abort")
        except KafkaException:
            if self._conf is not None and self.slot is not None:
                self.output.discard(self._conf, self.slot, producer)


class _TxnDeliveries(Deliveries):
    """Deliveries inside a batch's transaction: each record is kept (to be sent again after
    an outage); a failure for want of the broker marks the transaction lost instead of
    failing the task, a failure of the record fails it (and poisons the batch)."""

    def __init__(self, scope: BatchScope) -> None:
        super().__init__(scope._producer, quiet=scope.output.quiet_txn)
        self.scope = scope

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: Any = None, *, partition: int | None = None,
                timestamp: int | None = None) -> None:
        record: Record = (topic, key, value, headers, partition, timestamp)
        if self.scope.outage is not None or self._producer is None:
            with self.scope._lock:
                self.scope.records.append(record)
            self.sent += 1
            return
        super().produce(topic, key, value, headers, partition=partition, timestamp=timestamp)
        with self.scope._lock:
            self.scope.records.append(record)

    def produce_all(self, records: list[Record]) -> list[tuple[Record, str]]:
        """:meth:`Deliveries.produce_all` in a tight loop on a quiet producer (an epoch's
        transaction, :mod:`waxflow.operators.transactions`): one delivery report callback
        for all (failures only; the record is then known by its topic, key and value), the
        records kept in one step. Measured: 6 -> 4 us per record, most of it the client's
        own. The first record the client does not take at once, and every one after it, go
        through :meth:`produce` (outage, full queue, refusal)."""
        producer = self._producer
        if not self.quiet or producer is None or self.scope.outage is not None:
            return super().produce_all(records)
        send, report = producer.produce, self._on_delivery
        done = 0
        try:
            for topic, key, value, headers, partition, timestamp in records:
                if partition is None and timestamp is None:
                    send(topic, value=value, key=key, headers=headers, on_delivery=report)
                else:
                    kwargs: dict[str, Any] = {"on_delivery": report}
                    if partition is not None:
                        kwargs["partition"] = partition
                    if timestamp is not None:
                        kwargs["timestamp"] = timestamp
                    send(topic, value=value, key=key, headers=headers, **kwargs)
                done += 1
        except Exception:  # not sent: this one and the rest take the careful path
            pass
        self.sent += done
        with self.scope._lock:
            self.scope.records += records[:done]
        return super().produce_all(records[done:])

    def _refused(self, err: KafkaError, record: Record) -> bool:
        if not is_outage(err):
            return False
        self.scope.lost(err, "produce")
        with self.scope._lock:
            self.scope.records.append(record)
        return True

    def _abandoned(self) -> bool:
        return self.scope.outage is not None

    def wait(self, timeout: float | None = None) -> None:
        try:
            super().wait(timeout)
        except DeliveryError:
            failed = self.failures
            if not failed or not all(is_outage(err) for err, _ in failed):
                raise
            self.scope.lost(failed[0][0], "delivery")
        except KafkaException as exc:  # the producer itself went fatal or fenced (poll)
            err = kafka_error(exc)
            if err is None or not is_outage(err):
                raise
            self.scope.lost(err, "delivery")


class TaskTransaction(Deliveries):
    """A transaction owned by one task run (no consumer offsets to include): committed by
    :meth:`wait`, which the task calls itself."""

    deferrable = False

    _pool: dict[tuple[tuple[str, str], ...], list[Producer]] = {}
    _pool_lock = threading.Lock()

    def __init__(self, conf: Mapping[str, Any]) -> None:
        key = conf_key(conf)
        with self._pool_lock:
            free = self._pool.setdefault(key, [])
            producer = free.pop() if free else None
        if producer is None:
            producer = Producer({**conf, "transactional.id": f"waxflow-task-{uuid.uuid4().hex}",
                                 "linger.ms": 5})
            producer.init_transactions(60)
        super().__init__(producer)
        self._key = key
        producer.begin_transaction()

    def wait(self, timeout: float | None = None) -> None:
        timeout = 120.0 if timeout is None else timeout
        try:
            super().wait(timeout)
            self.producer.commit_transaction(timeout)
            metrics.transaction("commit")
        except Exception:
            self.producer.abort_transaction(60)
            metrics.transaction("abort")
            raise
        finally:
            with self._pool_lock:
                self._pool.setdefault(self._key, []).append(self.producer)
