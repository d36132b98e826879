"""Micro-batch Kafka source for ``kafka.Trigger``: the batch is cut in the source.

One Bytewax partition holds one consumer assigned to every partition of the trigger's
topics. It buffers records and emits a whole :class:`Batch` as one item (at most one per
epoch) when the batch is due: ``interval`` after its first record, or earlier when it holds
``maxRecords``, or when ``maxDuration`` has passed since its first record. Buffered records
are *not* part of the state: ``snapshot()`` returns the positions right after the last
**emitted** batch, and the first ``next_batch()`` after a snapshot commits exactly those
positions. Bytewax runs the next epoch only after the emitted batch passed every step, and
the execute step finishes the batch's execution inside the step, so a committed offset never
covers a record whose batch execution is not done, and a kill re-reads everything after it
(no window state whose offsets could be committed early: see waxflow.operators.checkpoint).

Replays keep one history per batch: when a batch is emitted, its predecessors' offsets are
already committed or requested (one batch per epoch), and the source re-commits those
offsets with the batch's end positions as commit *metadata* (offsets do not move),
synchronously, before it emits the batch. A
restart that finds such a plan cuts its first batch at exactly those ends, so the replayed
batch has the same offset ranges and hence the same execution id (a new run of it, not a
second execution).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from bytewax.inputs import FixedPartitionedSource, Source, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, TopicPartition

from waxflow.connectors import broker_watch, instance_lock, metrics, shutdown
from waxflow.connectors.kafka_source import (
    committed_offsets,
    group_conf,
    message_ok,
    record_fields,
    start_offset,
    topic_partitions,
)
from waxflow.records import RecordFields

if TYPE_CHECKING:
    from waxflow.flow import BatchTrigger

LOG = logging.getLogger("waxflow.batch")

Positions = dict[str, int]  # "topic/partition" -> next offset to read

#: consumer settings a batch trigger defaults to (its ``properties`` override them): a batch
#: is read in bulk, and librdkafka's 1 MiB per partition and fetch left the consumer waiting
#: on round trips whenever the tasks kept the CPUs busy (bench/microbatch.py, DuckDB target:
#: 94k -> 155k records/s in the source alone)
BULK_FETCH = {"max.partition.fetch.bytes": 8 << 20}


@dataclass
class Batch:
    """Records cut into one batch, with the offset range read per partition.

    A share-group batch (:class:`~waxflow.connectors.kafka_share.KafkaShareBatchSource`)
    also names the records delivered (``delivered``: a share group may hand out a
    partition's records with gaps) and the member that holds their acks (``origin``)."""

    records: list[RecordFields] = field(default_factory=list)
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # first, last
    ends: Positions = field(default_factory=dict)  # next offset per partition after it
    delivered: list[tuple[str, int, int]] | None = None  # share group: (topic, part, offset)
    origin: int | None = None  # share group: the member whose delivery this is

    def id_source(self) -> str:
        """What the batch's execution id derives from: the per-partition offset ranges
        (``t/p:first-last,...``), or for a share-group delivery every delivered record
        (``share:t/p@o,...``, sorted), so the same records delivered again get the same id
        and two deliveries with the same ranges but other records do not."""
        if self.delivered is not None:
            return "share:" + ",".join(f"{t}/{p}@{o}" for t, p, o in sorted(self.delivered))
        return ",".join(f"{k}:{a}-{b}" for k, (a, b) in sorted(self.offsets.items()))


class _BatchPartition(StatefulSourcePartition[Batch, Positions | None]):
    def __init__(self, conf: dict[str, Any], parts: list[tuple[str, int]],
                 *, resume: Positions | None, since: datetime | None, interval: float,
                 max_records: int | None, max_duration: float | None,
                 idle_stop: float | None) -> None:
        self._consumer = Consumer(broker_watch.watch({**conf, "on_commit": self._on_commit}))
        self._interval = interval
        self._max_records = max_records
        self._max_duration = max_duration
        self._idle_stop = idle_stop
        self._emitted: Positions = {}
        self._confirmed: Positions = {}
        self._requested: Positions = {}
        self._to_commit: Positions | None = None
        assign = []
        reset = str(conf.get("auto.offset.reset", "earliest"))
        for topic, p in parts:
            key = f"{topic}/{p}"
            start, committed = start_offset(self._consumer, topic, p,
                                            resume=(resume or {}).get(key), since=since,
                                            reset=reset)
            if start >= 0:
                self._emitted[key] = start
            if committed is not None:
                self._confirmed[key] = self._requested[key] = committed
            assign.append(TopicPartition(topic, p, start))
        self._plan = self._read_plan(parts)
        # at most one batch per epoch: the next one is cut only after the snapshot that
        # follows the previous one, so its start positions are already requested for commit
        self._awaiting_snapshot = False
        self._carry: list[RecordFields] = []
        self._consumer.assign(assign)
        self._buffer = Batch()
        self._opened: float | None = None  # when the buffer got its first record
        self._last_activity = time.monotonic()
        self._awake: datetime | None = None
        self._paused = False

    def _read_plan(self, parts: list[tuple[str, int]]) -> Positions | None:
        """The ends of the batch that was in flight when the last run stopped, if known."""
        got = committed_offsets(self._consumer, [TopicPartition(t, p) for t, p in parts])
        for tp in got:
            if tp.offset < 0 or not tp.metadata:
                continue
            try:
                plan = json.loads(tp.metadata)
                start, end = plan["start"], plan["end"]
            except (ValueError, KeyError, TypeError):
                continue
            if all(self._emitted.get(k) == v for k, v in start.items()):
                LOG.info("replaying the batch in flight before the restart: %s", end)
                return {str(k): int(v) for k, v in end.items()}
            return None
        return None

    def _write_plan(self, batch: Batch) -> None:
        """Record the batch's ends as metadata of the already confirmed offsets."""
        start = {k: self._emitted.get(k, first) for k, (first, _last) in batch.offsets.items()}
        # only offsets already requested (snapshots of completed epochs) or confirmed may be
        # re-committed with the plan, or a partition's first record when nothing of it was
        # emitted before: an earlier batch not yet done must never be covered
        if any(k in self._emitted and v not in (self._confirmed.get(k), self._requested.get(k))
               for k, v in start.items()):
            return
        meta = json.dumps({"start": start, "end": batch.ends}, separators=(",", ":"))
        tps = []
        for key, off in start.items():
            topic, part = key.rsplit("/", 1)
            tps.append(TopicPartition(topic, int(part), off, metadata=meta))
        metrics.commit_sent("batch")
        # synchronous, before the batch is emitted: a batch killed before its plan reached
        # the group would be re-cut differently on restart (another id: an orphan history)
        broker_watch.retry(lambda: self._consumer.commit(offsets=tps, asynchronous=False),
                           "the batch source (recording the batch's cut)")

    def _on_commit(self, err: KafkaError | None, parts: list[TopicPartition]) -> None:
        metrics.commit_answered("batch", err is None)
        if err is not None:
            LOG.warning("batch offset commit failed (retried next epoch): %s", err)
            self._requested = dict(self._confirmed)
            return
        for tp in parts:
            if tp.error is None:
                self._confirmed[f"{tp.topic}/{tp.partition}"] = tp.offset

    def _commit(self) -> None:
        pending, self._to_commit = self._to_commit, None
        if not pending:
            return
        todo = {k: v for k, v in pending.items() if self._requested.get(k) != v}
        if not todo:
            return
        tps = []
        for key, off in todo.items():
            topic, part = key.rsplit("/", 1)
            tps.append(TopicPartition(topic, int(part), off))
        metrics.commit_sent("batch")
        self._consumer.commit(offsets=tps, asynchronous=True)
        self._requested.update(todo)

    def _read(self) -> int:
        """Buffer what the consumer has (up to 10,000); return how many messages came."""
        room = 10_000
        if self._max_records:
            room = min(room, self._max_records - len(self._buffer.records))
        # never consume more than the batch can take: a consumed record that is not
        # buffered would be skipped while a later offset of its partition is committed
        msgs = self._consumer.consume(room, 0) if room > 0 else []
        plan = self._plan
        new: list[RecordFields] = []
        carried = len(self._carry)
        for m in msgs:
            if not message_ok(m, f"{m.topic()}/{m.partition()}"):
                continue
            rec = record_fields(m)
            if plan is not None and rec[2] >= plan.get(f"{rec[0]}/{rec[1]}", 0):
                self._carry.append(rec)  # after the replayed batch: goes to the next one
                continue
            new.append(rec)
        if new or len(self._carry) > carried:
            self._last_activity = time.monotonic()
        if new:
            self._add(new)
        return len(msgs)

    def _add(self, recs: list[RecordFields]) -> None:
        """Append records (in consumed order) to the buffer and extend its offset ranges."""
        buf = self._buffer
        buf.records.extend(recs)
        firsts: dict[tuple[str, int], int] = {}
        lasts: dict[tuple[str, int], int] = {}
        for r in recs:  # offsets only grow within a partition
            tp = (r[0], r[1])
            if tp not in firsts:
                firsts[tp] = r[2]
            lasts[tp] = r[2]
        for (topic, part), last in lasts.items():
            key = f"{topic}/{part}"
            first = buf.offsets.get(key, (firsts[(topic, part)], last))[0]
            buf.offsets[key] = (first, last)
            buf.ends[key] = last + 1
        if self._opened is None:
            self._opened = time.monotonic()

    def _due(self, now: float) -> bool:
        if self._plan is not None:
            complete = all(self._buffer.ends.get(k, self._emitted.get(k, 0)) >= end
                           for k, end in self._plan.items())
            # records of the plan deleted by retention: give up on an identical replay
            return complete or (bool(self._buffer.records) and now - self._last_activity > 30)
        if not self._buffer.records:
            return False
        if self._max_records and len(self._buffer.records) >= self._max_records:
            return True
        if self._max_duration is not None and self._opened is not None and \
                now - self._opened >= self._max_duration:
            return True
        if self._opened is not None and now - self._opened >= self._interval:
            return True
        return self._idle_stop is not None and \
            now - broker_watch.idle_since(self._last_activity) >= self._idle_stop

    def next_batch(self) -> list[Batch]:
        instance_lock.check("the batch source")
        broker_watch.check("the batch source")
        self._commit()
        if shutdown.requested():  # cut no more batches; stop once emitted ones are committed
            if not self._awaiting_snapshot and all(
                    self._confirmed.get(k) == v for k, v in self._emitted.items()):
                raise StopIteration
            if not self._paused:  # serve commit callbacks without reading records
                self._consumer.pause(self._consumer.assignment())
                self._paused = True
            self._consumer.poll(0)
            self._awake = datetime.now().astimezone() + timedelta(milliseconds=20)
            return []
        got = 0
        if not self._max_records or len(self._buffer.records) < self._max_records:
            got = self._read()
        now = time.monotonic()
        out: list[Batch] = []
        if not self._awaiting_snapshot and self._due(now):
            batch, self._buffer, self._opened = self._buffer, Batch(), None
            self._plan, carry, self._carry = None, self._carry, []
            if carry:
                self._add(carry)
            if batch.records:
                self._write_plan(batch)
                self._emitted.update(batch.ends)
                self._awaiting_snapshot = True
                out.append(batch)
        if not out and not self._buffer.records and self._idle_stop is not None and \
                now - broker_watch.idle_since(self._last_activity) >= self._idle_stop and \
                all(self._confirmed.get(k) == v for k, v in self._emitted.items()):
            raise StopIteration
        # more is probably waiting when a read came back full: no pause then
        self._awake = None if out or got >= 1000 else \
            datetime.now().astimezone() + timedelta(milliseconds=5)
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Positions:
        self._awaiting_snapshot = False
        self._to_commit = dict(self._emitted)
        return dict(self._emitted)

    def close(self) -> None:
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[Batch, Positions | None]):
    """Batches of a trigger's topics (one Bytewax partition; see the module doc)."""

    def __init__(self, conf: dict[str, Any], group_id: str, topics: list[str],
                 *, partitions: list[int] | None, since: datetime | None, interval: timedelta,
                 max_records: int | None, max_duration: timedelta | None,
                 idle_stop: float | None) -> None:
        self._conf = group_conf(conf, group_id, "waxflow commits offsets itself, only after "
                                                "the batch is done (G1)")
        for name, value in BULK_FETCH.items():
            self._conf.setdefault(name, value)
        self._topics = topics
        self._partitions = partitions
        self._since = since
        self._interval = interval.total_seconds()
        self._max_records = max_records
        self._max_duration = max_duration.total_seconds() if max_duration else None
        self._idle_stop = idle_stop

    def list_parts(self) -> list[str]:
        return ["batch"]

    def _parts(self) -> list[tuple[str, int]]:
        return topic_partitions(self._conf, self._topics, partitions=self._partitions)

    def build_part(self, step_id: str, for_part: str,
                   resume_state: Positions | None) -> _BatchPartition:
        return _BatchPartition(self._conf, self._parts(), resume=resume_state,
                               since=self._since, interval=self._interval,
                               max_records=self._max_records, max_duration=self._max_duration,
                               idle_stop=self._idle_stop)


class BatchInput(NamedTuple):
    """The source of a ``kafka.Trigger`` flow and, for a share group, where its execute step
    reports each batch's outcome (``outcomes(batch, state)``, after the batch's terminal
    document is delivered)."""

    source: Source[Batch]
    outcomes: Callable[[Batch, str], None] | None


def batch_source(conf: dict[str, Any], trig: BatchTrigger, *, idle_stop: float | None
                 ) -> BatchInput:
    """The batch source of ``trig`` (client config ``conf``): a consumer group
    (:class:`KafkaBatchSource`, offsets committed after each batch) or, with ``groupType:
    SHARE``, a share group (:class:`~waxflow.connectors.kafka_share.KafkaShareBatchSource`,
    one delivery per batch, acked by its outcome)."""
    if trig.groupType == "SHARE":
        from waxflow.connectors.kafka_share import KafkaShareBatchSource, share_batch_outcome

        if trig.maxDuration is not None or "interval" in trig.model_fields_set:
            LOG.warning("trigger %s: interval and maxDuration do not apply to a share group "
                        "(a batch is one delivery of at most maxRecords records)", trig.id)

        return BatchInput(KafkaShareBatchSource(conf, trig.groupId, trig.topic_list(),
                                                max_records=trig.maxRecords,
                                                idle_stop=idle_stop,
                                                max_deliveries=trig.maxDeliveries),
                          share_batch_outcome)
    return BatchInput(KafkaBatchSource(conf, trig.groupId, trig.topic_list(),
                                       partitions=trig.partitions, since=trig.since,
                                       interval=trig.interval, max_records=trig.maxRecords,
                                       max_duration=trig.maxDuration, idle_stop=idle_stop),
                      None)
