"""Consumer-group Kafka source for Bytewax that commits offsets only after the work is done.

One Bytewax partition per Kafka partition (``FixedPartitionedSource``), each with its own
manually assigned consumer in the flow's group. Commit rule (G1,
:mod:`waxflow.operators.checkpoint`): ``snapshot()`` runs at every epoch end and records the
offset to commit; the *first* ``next_batch()`` after it commits that offset. That offset is

- with a :class:`~waxflow.progress.Progress` (pipelined executions, which outlive their
  step): the partition's lowest offset whose execution is not done yet — every offset read
  is registered, the executions mark theirs done;
- without: the next offset to read — Bytewax calls ``next_batch()`` for epoch e+1 only after
  epoch e has passed every step, and the batch-synchronous execute step finishes its
  executions inside the step.

With a :class:`Checkpoint` (pipelined transactional Produce), ``snapshot()`` hands the
partition's progress to it instead: the epoch's transaction commits the lowest unfinished
offset with the outputs below it, and the snapshot is that offset; the consumer commits
nothing. Either way every record below a committed offset has a done execution. With a
progress, the
partition stops reading while ``$WAXFLOW_MAX_IN_FLIGHT`` executions (default 5,000 per
process) are unfinished, or ``$WAXFLOW_MAX_PENDING`` offsets (default 100,000) wait behind
an unfinished one: memory stays bounded however slow one record is. Nothing is committed in
``close()`` or at EOF. Resume point:
the Bytewax snapshot when recovery is on or the group's committed offset, whichever is
further, else ``since``
(a timestamp), else ``auto.offset.reset`` (default ``earliest``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from waxflow.connectors import broker_watch, instance_lock, metrics, shutdown
from waxflow.connectors.kafka_config import require
from waxflow.connectors.kafka_errors import check_access
from waxflow.errors import SourceStop
from waxflow.progress import PartitionProgress, Progress
from waxflow.records import RawRecord, RecordFields

LOG = logging.getLogger("waxflow.source")


def headers_tuple(raw: Any) -> tuple[tuple[str, bytes | None], ...]:
    """confluent-kafka headers (list of pairs or dict) as a tuple of (name, bytes) pairs."""
    if not raw:
        return ()
    items = raw.items() if isinstance(raw, dict) else raw
    return tuple((k, v.encode() if isinstance(v, str) else v) for k, v in items)


def record_fields(m: Message) -> RecordFields:
    """A consumed message's fields (timestamp None when the broker has none)."""
    ts_type, ts = m.timestamp()
    return (m.topic() or "", m.partition() or 0, m.offset() or 0, m.key(), m.value(),
            ts if ts_type != 0 else None, headers_tuple(m.headers()))


def cluster_metadata(conf: dict[str, Any], timeout: float = 15.0) -> Any:
    """Topic metadata of the cluster, or SourceStop naming the unreachable bootstrap."""
    probe = Consumer({k: v for k, v in conf.items() if k != "on_commit"})
    try:
        return probe.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise SourceStop(f"cannot reach Kafka at {conf.get('bootstrap.servers')} within "
                         f"{timeout:g}s: {exc.args[0].str()}") from None
    finally:
        probe.close()


def message_ok(m: Message, where: str) -> bool:
    """Whether a consumed message is a record: end-of-partition events and retriable errors
    are not (the latter logged); a fatal consumer error raises SourceStop naming ``where``."""
    err = m.error()
    if err is None:
        return True
    if err.code() != KafkaError._PARTITION_EOF:
        if err.fatal() or not err.retriable():
            raise SourceStop(f"consumer error on {where}: {err.str()}")
        LOG.warning("consumer error on %s (retrying): %s", where, err.str())
    return False


#: the per-partition consumer's pre-fetch, bounded so memory does not grow with the backlog
#: (librdkafka's defaults queue up to 100,000 records / 64 MiB per partition): about 1,000
#: records or 2 MiB per partition waiting, refilled as the source reads. ``properties``
#: override each key.
PREFETCH = {"queued.min.messages": 1000, "queued.max.messages.kbytes": 2048,
            "fetch.max.bytes": 2 << 20}


def group_conf(conf: dict[str, Any], group_id: str, why: str) -> dict[str, Any]:
    """Consumer config of a group whose offsets waxflow commits itself (``why`` says when):
    auto-commit off (a user value contradicting it is refused), ``read_committed`` and
    ``earliest`` by default."""
    out = {**conf, "group.id": group_id}
    require(out, "enable.auto.commit", False, why)
    require(out, "enable.auto.offset.store", False, why)
    out.setdefault("isolation.level", "read_committed")
    out.setdefault("auto.offset.reset", "earliest")
    return out


def topic_partitions(conf: dict[str, Any], topics: list[str], *, pattern: str | None = None,
                     partitions: list[int] | None = None) -> list[tuple[str, int]]:
    """The (topic, partition) pairs to read: the named ``topics`` (or those matching
    ``pattern``, internal ones excepted), limited to ``partitions`` when given. A topic that
    does not exist raises SourceStop naming it and the bootstrap servers."""
    check_access(conf, f"consumer group {conf.get('group.id')}", read=topics,
                 group=conf.get("group.id"))
    md = cluster_metadata(conf)
    if pattern is not None:
        rx = re.compile(pattern)
        topics = sorted(t for t in md.topics if rx.fullmatch(t) and not t.startswith("__"))
    out: list[tuple[str, int]] = []
    for topic in topics:
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None:
            raise SourceStop(f"topic {topic} does not exist on {conf['bootstrap.servers']}")
        out += [(topic, p) for p in sorted(tmd.partitions)
                if partitions is None or p in partitions]
    return out


def _split_part(part: str) -> tuple[str, int]:
    num, topic = part.split("-", 1)
    return topic, int(num)


_COORDINATOR_MOVING = frozenset({
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
})


def committed_offsets(consumer: Consumer, tps: list[TopicPartition],
                      timeout: float = 120.0) -> list[TopicPartition]:
    """The group's committed offsets, retrying while the group coordinator moves or loads
    (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, ... are normal on a fresh broker)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got: list[TopicPartition] = consumer.committed(tps, timeout=min(30.0, timeout))
            return got
        except KafkaException as exc:
            err = exc.args[0]
            transient = err.retriable() or err.code() in _COORDINATOR_MOVING
            if not transient or time.monotonic() > deadline:
                raise
            LOG.info("committed offsets not available yet (%s); retrying", err.str())
            time.sleep(0.5)


def start_offset(consumer: Consumer, topic: str, partition: int, *, resume: int | None,
                 since: datetime | None, reset: str) -> tuple[int, int | None]:
    """Where to start reading a partition, and the group's committed offset (if any).

    Order: ``resume`` (a Bytewax snapshot) or the group's committed offset, whichever is
    further (a committed offset is only ever one below which every execution is done, and
    with transactional outputs the one their transaction committed: a kill after a commit
    but before the epoch's snapshot must not replay committed outputs), the first offset at
    or after ``since``, else ``reset`` (earliest/latest as librdkafka's logical offsets).
    """
    got = committed_offsets(consumer, [TopicPartition(topic, partition)])[0]
    committed = got.offset if got.offset >= 0 else None
    if resume is not None:
        return max(resume, committed if committed is not None else resume), committed
    if committed is not None:
        return committed, committed
    if since is not None:
        ms = int(since.timestamp() * 1000)
        found = consumer.offsets_for_times([TopicPartition(topic, partition, ms)], timeout=30)[0]
        return (found.offset if found.offset >= 0 else OFFSET_END), None
    latest = reset.lower() in ("latest", "largest", "end")
    return (OFFSET_END if latest else OFFSET_BEGINNING), None


#: ``i/N``: this process is member i of N independent processes of one flow
#: (``waxflow run --processes N``) and reads every N-th of the trigger's partitions
PARTITION_SHARE_ENV = "WAXFLOW_PARTITION_SHARE"


def partition_share(parts: list[str]) -> list[str]:
    """This process's share of ``parts`` (all of them unless ``$WAXFLOW_PARTITION_SHARE``
    says ``i/N``: the i-th of every N, in a fixed order every member computes alike)."""
    share = os.environ.get(PARTITION_SHARE_ENV)
    if not share:
        return parts
    try:
        index, count = (int(x) for x in share.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        raise SourceStop(f"${PARTITION_SHARE_ENV} must be i/N with 0 <= i < N, not "
                         f"{share!r}") from None
    return sorted(parts)[index::count]


class Checkpoint(Protocol):
    """Who commits a pipelined partition's offsets instead of its consumer (the epoch's
    Kafka transaction, :mod:`waxflow.operators.transactions`); called on the worker's
    thread."""

    def register(self, part: PartitionProgress, committed: int | None) -> None: ...

    def snapshot(self, part: PartitionProgress) -> int | None: ...


def env_bound(name: str, default: int) -> int:
    """A positive whole number from the environment (a clear stop for anything else)."""
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        raise SourceStop(f"${name} must be a whole number, not "
                         f"{os.environ.get(name)!r}") from None


class _GroupPartition(StatefulSourcePartition[RawRecord, int | None]):
    def __init__(self, conf: dict[str, Any], topic: str, partition: int,
                 *, resume: int | None, since: datetime | None, batch_size: int,
                 idle_stop: float | None, progress: Progress | None = None,
                 checkpoint: Checkpoint | None = None) -> None:
        self._tp = f"{topic}/{partition}"
        self._topic, self._partition = topic, partition
        self._batch = batch_size
        self._idle_stop = idle_stop
        self._confirmed: int | None = None
        conf = {**conf, "on_commit": self._on_commit}
        self._consumer = Consumer(broker_watch.watch(conf))
        start, self._confirmed = start_offset(
            self._consumer, topic, partition, resume=resume, since=since,
            reset=str(conf.get("auto.offset.reset", "earliest")))
        self._next: int | None = start if start >= 0 else None
        self._from_end = start == OFFSET_END  # started at the end: nothing was waiting
        self._end_checked = 0.0  # when the idle stop last looked for a fetch answer
        self._fetched = False  # a fetch answer for the partition has come
        self._to_commit: int | None = None
        self._requested: int | None = self._confirmed
        self._last_activity = time.monotonic()
        self._awake: datetime | None = None
        self._paused = False
        self._progress = progress
        self._part = progress.part(topic, partition) if progress is not None else None
        if self._part is not None:
            self._part.seek(self._next)
        self._checkpoint = checkpoint if self._part is not None else None
        if self._checkpoint is not None:
            assert self._part is not None
            self._checkpoint.register(self._part, self._confirmed)
        self._max_in_flight = env_bound("WAXFLOW_MAX_IN_FLIGHT", 5000)
        self._max_pending = env_bound("WAXFLOW_MAX_PENDING", 100_000)
        # the topic's metadata first: assigned a partition of a topic it knows nothing of,
        # the consumer fetches nothing for 0.5-1 s (measured, 3 partitions: first records
        # after 0.45-1.0 s, against 0-7 ms with this ~50 ms look-up before the assign)
        with contextlib.suppress(KafkaException):  # (only a warm-up: assign works without)
            self._consumer.list_topics(topic, timeout=2)
        self._consumer.assign([TopicPartition(topic, partition, start)])

    def _on_commit(self, err: KafkaError | None, parts: list[TopicPartition]) -> None:
        metrics.commit_answered(self._tp, err is None)
        if err is not None:
            LOG.warning("commit for %s failed (will retry next epoch): %s", self._tp, err)
            self._requested = self._confirmed
            return
        for tp in parts:
            if tp.error is None and tp.topic == self._topic and tp.partition == self._partition:
                self._confirmed = tp.offset

    def _all_committed(self) -> bool:
        """Everything read is done and its offset confirmed committed."""
        if self._next is None:
            return True
        return self._confirmed == self._next and (self._part is None
                                                  or self._part.in_flight == 0)

    def _stopped(self) -> bool:
        """Stopping: no execution is running any more (those not started, or paused for a
        retry, are abandoned and replay on the next start) and what is done is committed."""
        if self._part is None or self._progress is None:
            return self._all_committed()
        point = self._part.commit_point()
        return self._progress.running == 0 and (point is None or self._confirmed == point)

    def _full(self) -> bool:
        """Pipelined: too much unfinished work to read more now."""
        assert self._progress is not None and self._part is not None
        return (self._progress.unfinished >= self._max_in_flight
                or self._part.in_flight >= self._max_pending)

    def next_batch(self) -> list[RawRecord]:
        instance_lock.check(self._tp)
        broker_watch.check(f"the realtime source ({self._tp})")
        if self._progress is not None:
            self._progress.read_point()
        if self._to_commit is not None and self._to_commit != self._requested:
            metrics.commit_sent(self._tp)
            self._consumer.commit(offsets=[TopicPartition(self._topic, self._partition,
                                                          self._to_commit)],
                                  asynchronous=True)
            self._requested = self._to_commit
        self._to_commit = None
        if shutdown.requested():  # read no more; stop once what was done is committed
            if self._stopped():
                raise StopIteration
            self._idle_poll()
            return []
        if self._progress is not None and self._full():
            self._last_activity = time.monotonic()  # held back by work, not idle
            self._idle_poll()
            return []
        if self._paused:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False
        msgs = self._consumer.consume(self._batch, 0)
        out: list[RawRecord] = []
        for m in msgs:
            if message_ok(m, self._tp):
                out.append(RawRecord(*record_fields(m)))
        now = time.monotonic()
        if out:
            self._next = out[-1].offset + 1
            self._fetched = True
            if self._part is not None:
                self._part.read([r.offset for r in out], self._next)
            self._last_activity = now
            self._awake = None
        else:
            self._awake = datetime.now().astimezone() + timedelta(milliseconds=5)
            if self._part is not None and self._part.in_flight:
                self._last_activity = now  # executions still running: not idle
            if (self._idle_stop is not None
                    and now - broker_watch.idle_since(self._last_activity) >= self._idle_stop
                    and self._all_committed() and self._at_end(now)):
                raise StopIteration
        return out

    def _at_end(self, now: float) -> bool:
        """Idle stop: the consumer has had a fetch answer for the partition (its cached high
        watermark is known), so a first fetch slower than the idle time does not look like
        an empty partition. (Not compared with the high watermark itself: a transaction's
        commit marker sits past the last record a ``read_committed`` reader gets.)"""
        if self._from_end or self._fetched:
            return True
        if now - self._end_checked < 0.2:
            return False
        self._end_checked = now
        try:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, self._partition), cached=True)
        except KafkaException:
            return False
        self._fetched = high >= 0
        return self._fetched

    def _idle_poll(self) -> None:
        """Serve the commit callbacks without reading records (the partition is paused)."""
        if not self._paused:
            self._consumer.pause(self._consumer.assignment())
            self._paused = True
        self._consumer.poll(0)
        self._awake = datetime.now().astimezone() + timedelta(milliseconds=20)

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int | None:
        if self._progress is not None:  # learn what the broker acknowledged so far
            self._progress.settle_point()
        if self._checkpoint is not None:  # committed by the epoch's transaction, now
            assert self._part is not None
            point = self._checkpoint.snapshot(self._part)
            if point is not None:
                self._confirmed = self._requested = point
            return point
        self._to_commit = self._part.commit_point() if self._part is not None else self._next
        return self._to_commit

    def close(self) -> None:
        self._consumer.close()


class KafkaGroupSource(FixedPartitionedSource[RawRecord, int | None]):
    """Reads a trigger's topics in its consumer group; commits per the rule above."""

    def __init__(self, conf: dict[str, Any], group_id: str, topics: list[str],
                 *, pattern: str | None = None, partitions: list[int] | None = None,
                 since: datetime | None = None, batch_size: int = 500,
                 idle_stop: float | None = None,
                 warm_up: Callable[[], None] | None = None,
                 start: Callable[[], None] | None = None,
                 progress: Progress | None = None,
                 checkpoint: Checkpoint | None = None) -> None:
        """``warm_up`` runs on each worker's thread before it reads its committed offsets
        (transactional producers: it blocks); ``start`` runs when the dataflow starts (its
        partitions are listed) and returns at once (e.g. makes clients on a thread)."""
        self._warm_up = warm_up
        self._start = start
        self._progress = progress
        self._checkpoint = checkpoint
        self._conf = group_conf(conf, group_id, "waxflow commits offsets itself, only after "
                                                "the work is done (G1)")
        self._conf.setdefault("enable.partition.eof", False)
        for name, value in PREFETCH.items():
            self._conf.setdefault(name, value)
        self._topics = topics
        self._pattern = pattern
        self._partitions = partitions
        self._since = since
        self._batch = batch_size
        self._idle_stop = idle_stop

    def list_parts(self) -> list[str]:
        if self._start is not None:
            self._start()
        parts = [f"{p}-{topic}" for topic, p in topic_partitions(
            self._conf, self._topics, pattern=self._pattern, partitions=self._partitions)]
        return partition_share(parts)

    def build_part(self, step_id: str, for_part: str,
                   resume_state: int | None) -> _GroupPartition:
        if self._warm_up is not None:
            # (a transactional producer fences a running instance's: the lock first)
            instance_lock.check("the realtime source")
            self._warm_up()  # on the worker's thread, before committed offsets are read
        topic, partition = _split_part(for_part)
        return _GroupPartition(self._conf, topic, partition, resume=resume_state,
                               since=self._since, batch_size=self._batch,
                               idle_stop=self._idle_stop, progress=self._progress,
                               checkpoint=self._checkpoint)
