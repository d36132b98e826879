"""Producers for ``kafka.Produce`` tasks, and the Kafka transaction of a batch (G3).

In a consumer-group flow each Bytewax worker owns one transactional producer with a stable
``transactional.id`` (``waxflow-<namespace>.<flow>-p<process>-w<slot>``): a restarted job
re-initialises the same ids and so fences any zombie of the previous incarnation. The
execute step opens a :class:`BatchScope` per batch; the first transactional Produce of the
batch begins the transaction; after every execution of the batch is done, ``commit()``
adds the batch's consumed offsets (``send_offsets_to_transaction``) and commits: the
records produced and the offsets consumed become visible together, or not at all. A
``read_committed`` reader therefore sees each output exactly once across kills.

Without a consumer group (replay, ``waxflow test``, schedules) a transactional Produce
commits its own transaction at the end of the task (no offsets to include). With
``transactional: false`` records go through a shared idempotent producer: at-least-once.
Every delivery is checked in both modes.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from waxflow.connectors.deliveries import Deliveries
from waxflow.errors import DeliveryError, TransactionError


def _conf_key(conf: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in conf.items()))


class KafkaOutput:
    """All producers of one flow in one process (thread-safe)."""

    def __init__(self, flow_key: str, group_conf: dict[str, Any] | None) -> None:
        self.flow_key = flow_key
        self.group_conf = group_conf  # conf incl. group.id of the consumer-group source
        self.process_id = os.environ.get("WAXFLOW_PROCESS_ID", "0")
        self._lock = threading.Lock()
        self._plain: dict[tuple[tuple[str, str], ...], Producer] = {}
        self._txn: dict[tuple[int, tuple[tuple[str, str], ...]], Producer] = {}
        self._slots: dict[int, int] = {}
        self._init_locks: dict[tuple[int, tuple[tuple[str, str], ...]], threading.Lock] = {}
        self._group_metadata: Any = None

    def plain_producer(self, conf: Mapping[str, Any]) -> Producer:
        key = _conf_key(conf)
        with self._lock:
            if key not in self._plain:
                self._plain[key] = Producer({**conf, "enable.idempotence": True,
                                             "acks": "all", "linger.ms": 5})
            return self._plain[key]

    def _slot(self) -> int:
        ident = threading.get_ident()
        with self._lock:
            return self._slots.setdefault(ident, len(self._slots))

    def txn_producer(self, conf: Mapping[str, Any], slot: int) -> Producer:
        key = (slot, _conf_key(conf))
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
                suffix = "" if len({k[1] for k in self._txn} | {key[1]}) == 1 else \
                    f"-{uuid.uuid5(uuid.NAMESPACE_OID, repr(key[1])).hex[:8]}"
            tid = f"waxflow-{self.flow_key}-p{self.process_id}-w{slot}{suffix}"
            # a killed incarnation's open transaction blocks the group's offset fetches
            # (read_committed, require_stable) until fenced or timed out: keep it short
            producer = Producer({"transaction.timeout.ms": 10000, **conf,
                                 "transactional.id": tid, "linger.ms": 5})
            producer.init_transactions(120)
            with self._lock:
                self._txn[key] = producer
            return producer

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


class BatchScope:
    """Producers as seen by the executions of one batch."""

    def __init__(self, output: KafkaOutput, slot: int | None) -> None:
        self.output = output
        self.slot = slot
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._conf_key: tuple[tuple[str, str], ...] | None = None
        # executions whose records failed delivery inside this batch's transaction: the
        # transaction can then only abort, and the batch is re-run without them
        self.poisoned: set[str] = set()
        self.broken: str | None = None  # the transaction could not be set up

    def poison(self, execution_id: str) -> None:
        """Mark an execution whose delivery failed inside the batch's transaction."""
        with self._lock:
            self.poisoned.add(execution_id)

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
        key = _conf_key(conf)
        with self._lock:
            if self._producer is None:
                try:
                    producer = self.output.txn_producer(conf, self.slot)
                    producer.begin_transaction()
                except KafkaException as exc:
                    # not a task failure: without its transaction the batch must not commit
                    self.broken = f"transactional producer not ready: {exc.args[0].str()}"
                    raise
                self._producer, self._conf_key = producer, key
            elif key != self._conf_key:
                raise DeliveryError("one batch's transaction spans one cluster and one set "
                                    "of producer properties; use transactional: false for "
                                    "a second target")
            return Deliveries(self._producer)

    @property
    def active(self) -> bool:
        return self._producer is not None

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit the batch's transaction with the consumed offsets (next offset to read)."""
        producer = self._producer
        if producer is None:
            return
        self._producer = None
        tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        try:
            producer.send_offsets_to_transaction(tps, self.output.group_metadata(), 60)
            producer.commit_transaction(120)
        except KafkaException as exc:
            err = exc.args[0]
            if getattr(err, "txn_requires_abort", lambda: False)():
                producer.abort_transaction(60)
                raise TransactionError(f"transaction aborted, the batch will replay: "
                                       f"{err.str()}") from None
            raise TransactionError(f"transaction failed: {err.str()}") from None

    def abort(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.abort_transaction(60)


class TaskTransaction(Deliveries):
    """A transaction owned by one task run (no consumer offsets to include)."""

    _pool: dict[tuple[tuple[str, str], ...], list[Producer]] = {}
    _pool_lock = threading.Lock()

    def __init__(self, conf: Mapping[str, Any]) -> None:
        key = _conf_key(conf)
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

    def wait(self, timeout: float = 120.0) -> None:
        try:
            super().wait(timeout)
            self.producer.commit_transaction(timeout)
        except Exception:
            self.producer.abort_transaction(60)
            raise
        finally:
            with self._pool_lock:
                self._pool.setdefault(self._key, []).append(self.producer)
