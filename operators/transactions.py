"""Pipelined Kafka transactions: what is done, committed with each partition's lowest
unfinished offset (G3 for executions that finish out of order).

A transactional ``kafka.Produce`` in a pipelined consumer-group flow
(:mod:`waxflow.operators.pipeline`) does not produce: it *buffers* its records in the
execution (:class:`Buffered`). When the execution is done (terminal document delivered), the
pipeline hands its records to :meth:`Transactions.put` *before* it marks the offset done in
the partition's :class:`~waxflow.progress.PartitionProgress`. At every epoch end the source
partition's ``snapshot()`` calls :meth:`Transactions.snapshot` on its worker's thread, which,
once per epoch for all the worker's partitions:

1. takes each partition's commit point ``cp`` (its lowest unfinished offset) and the buffered
   records of the executions below it — all of them done;
2. begins a transaction on the worker's transactional producer (stable ``transactional.id``,
   :class:`~waxflow.connectors.kafka_output.KafkaOutput`), produces those records, checks
   every delivery, sends the offsets ``cp`` (``send_offsets_to_transaction``) and commits;
3. returns the partition's committed ``cp``, which is what the snapshot (recovery on) and the
   source's idea of "committed" are.

So a transaction covers exactly the executions below the offsets it commits: a crash before
the commit replays all of them (their records were never visible), one after replays none
(read_committed readers see each output once). An execution done *above* a slow one waits
with its records buffered until the slow one is done (the source stops reading at
``$WAXFLOW_MAX_PENDING`` such offsets per partition): its outputs become visible later, but
no execution waits for another to *run*. Executions of different partitions of a worker
share one transaction per epoch.

A record the broker refuses (too large, unknown topic — not an outage) aborts the
transaction: its execution becomes FAILED (its terminal document is written again, saying
why) and the transaction is redone without its records; under ``onFailure: STOP`` the job
stops instead, committing nothing past it. Outages are ridden out by
:meth:`BatchScope.commit <waxflow.connectors.kafka_output.BatchScope.commit>` (the
transaction is redone on a rebuilt producer with the same id).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from waxflow.connectors.deliveries import Deliveries, Record
from waxflow.connectors.execution_log import ExecutionLog
from waxflow.connectors.kafka_output import KafkaOutput, conf_key
from waxflow.errors import DeliveryError, TransactionError
from waxflow.execution import Execution
from waxflow.operators.executor import fail_late, stopped_by
from waxflow.progress import PartitionProgress, Progress

#: snapshots of one worker's partitions closer together than this share one transaction
_SAME_EPOCH = 0.05
#: the condition of every :class:`Buffered` (none ever waits on it)
_SHARED_COND = threading.Condition()


class Buffered(Deliveries):
    """A transactional Produce task run's records, kept until its execution's transaction
    (nothing is sent; nothing can fail before then)."""

    def __init__(self, conf: Mapping[str, Any]) -> None:
        # no Condition of its own per task run (~1.5 µs): nothing is ever pending here
        super().__init__(None, cond=_SHARED_COND)
        self.conf = conf
        self.records: list[Record] = []

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: Any = None, *, partition: int | None = None,
                timestamp: int | None = None) -> None:
        self.records.append((topic, key, value, headers, partition, timestamp))
        self.sent += 1

    def wait(self, timeout: float | None = None) -> None:
        return None


@dataclass(slots=True)
class Produced:
    """A done execution's buffered records, by Produce task run. ``source``: the execution,
    or a function that builds it (the compiled path, :mod:`waxflow.operators.fastpath`:
    built only if one of its records is refused)."""

    id: str
    #: (task id, its records) per Produce task run
    runs: list[tuple[str, Sequence[Record]]]
    source: Execution | Callable[[], Execution]

    @property
    def execution(self) -> Execution:
        """The execution (built on first use)."""
        if not isinstance(self.source, Execution):
            self.source = self.source()
        return self.source


@dataclass
class _Worker:
    """One worker thread's partitions and what it committed."""

    parts: dict[str, PartitionProgress] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    last: float = 0.0


class Transactions:
    """The pipelined transactions of one flow in one process (module doc)."""

    def __init__(self, *, output: KafkaOutput, conf: Mapping[str, Any], progress: Progress,
                 log: Callable[[], ExecutionLog], stop_on_failure: bool = False) -> None:
        self.output = output
        self.conf = dict(conf)
        self._key = conf_key(conf)
        self.progress = progress
        self.log = log
        self.stop_on_failure = stop_on_failure
        self._lock = threading.Lock()
        self._held: dict[str, dict[int, Produced]] = {}
        self._workers: dict[int, _Worker] = {}
        #: the last config object :meth:`buffer` found to match (kept alive: its id stays)
        self._same_conf: Mapping[str, Any] | None = None

    # -- the pipeline's side (any thread) -----------------------------------------------------
    def buffer(self, conf: Mapping[str, Any]) -> Buffered:
        """Where a transactional Produce task run puts its records."""
        self.check(conf)
        return Buffered(conf)

    def check(self, conf: Mapping[str, Any]) -> None:
        """Raise DeliveryError unless a Produce task with these properties may put its
        records in this flow's transactions (the compiled path holds its records itself)."""
        if conf is not self._same_conf:  # (a task's cached config asks again: no key)
            if conf_key(conf) != self._key:
                raise DeliveryError("one flow's transactions span one cluster and one set "
                                    "of producer properties; use transactional: false for a "
                                    "second target")
            self._same_conf = conf

    def accepts(self, conf: Mapping[str, Any]) -> bool:
        """Whether :meth:`buffer` takes a Produce task's records with these properties."""
        return conf_key(conf) == self._key

    def put(self, part: PartitionProgress, offset: int, produced: Produced) -> None:
        """A done execution's records; called before its offset is marked done."""
        with self._lock:
            self._held.setdefault(part.name, {})[offset] = produced

    # -- the source's side (the worker's thread) -----------------------------------------------
    def register(self, part: PartitionProgress, committed: int | None) -> None:
        """A partition read by the calling worker thread, and its group's committed offset."""
        worker = self._workers.setdefault(threading.get_ident(), _Worker())
        worker.parts[part.name] = part
        if committed is not None:
            worker.committed[part.name] = committed

    def snapshot(self, part: PartitionProgress) -> int | None:
        """Commit what the calling worker has done (once per epoch) and return the offset
        committed for ``part`` (None while nothing is)."""
        worker = self._workers.setdefault(threading.get_ident(), _Worker())
        worker.parts.setdefault(part.name, part)
        if time.monotonic() - worker.last >= _SAME_EPOCH:
            self._commit(worker)
            worker.last = time.monotonic()
        return worker.committed.get(part.name)

    def _take(self, worker: _Worker) -> tuple[dict[str, int], list[Produced]]:
        points: dict[str, int] = {}
        taken: list[Produced] = []
        for name, part in worker.parts.items():
            cp = part.commit_point()
            if cp is None:
                continue
            if cp != worker.committed.get(name):
                points[name] = cp
            with self._lock:
                held = self._held.get(name)
                if not held:
                    continue
                below = sorted(o for o in held if o < cp)
                taken += [held.pop(o) for o in below]
        return points, taken

    def _commit(self, worker: _Worker) -> None:
        points, taken = self._take(worker)
        if not points and not taken:
            return
        offsets = {_split(name): cp for name, cp in points.items()}
        for _round in range(3):
            scope = self.output.scope()
            deliveries = scope.deliveries(self.conf, True)  # begins the transaction
            records = [record for produced in taken for _task_id, held in produced.runs
                       for record in held]
            refused = deliveries.produce_all(records)
            failed = self._owners(taken, refused) if refused else {}
            try:
                deliveries.wait()
            except DeliveryError as exc:
                found = self._owners(taken, [(record, err.str())
                                             for err, record in deliveries.failures],
                                     describe=deliveries.describe)
                if not found:  # not one of ours: the transaction cannot be trusted
                    raise exc from None
                for exec_id, why in found.items():
                    failed.setdefault(exec_id, why)
            if failed:
                scope.abort()
                self._refused(taken, failed)
                taken = [p for p in taken if p.id not in failed]
                continue
            scope.commit(offsets)
            worker.committed.update(points)
            return
        raise TransactionError("the epoch's transaction aborted three times; stopping")

    @staticmethod
    def _owners(taken: list[Produced], refused: list[tuple[Record, str]], *,
                describe: Callable[..., str] | None = None) -> dict[str, tuple[str, str]]:
        """The executions whose records were refused: ``{id: (task id, error)}``. A record
        is known by its topic, key and value (a delivery report carries no headers): a
        refusal is about what a record is, so records alike are refused alike, and every
        execution that sent one is failed (called only on failure). ``describe``: the
        refusals are delivery reports (``why`` is the broker's error), worded with the
        record as it was held (its headers name its execution and source record)."""
        wanted: dict[tuple[str, bytes | None, bytes | None], str] = {
            (record[0], record[1], record[2]): why for record, why in refused}
        failed: dict[str, tuple[str, str]] = {}
        for produced in taken:
            for task_id, held in produced.runs:
                for record in held:
                    why = wanted.get((record[0], record[1], record[2]))
                    if why is not None:
                        if describe is not None:
                            why = f"delivery failed: {describe(*record[:4])}: {why}"
                        failed.setdefault(produced.id, (task_id, why))
        return failed

    def _refused(self, taken: list[Produced], failed: Mapping[str, tuple[str, str]]) -> None:
        """Records the broker refused: their executions become FAILED (documented again);
        under ``onFailure: STOP`` the job stops without committing."""
        batch = self.log().batch()
        stopped: Execution | None = None
        for produced in taken:
            got = failed.get(produced.id)
            if got is None:
                continue
            execution = produced.execution
            fail_late(execution, got[0], got[1])
            batch.write(execution.id, execution.to_json())
            stopped = stopped or execution
        batch.wait()
        if self.stop_on_failure and stopped is not None:
            error = stopped_by(stopped)
            self.progress.fail(error)
            raise error


def _split(name: str) -> tuple[str, int]:
    topic, _, partition = name.rpartition("/")
    return topic, int(partition)
