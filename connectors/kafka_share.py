"""Share-group Kafka source (KIP-932, ``groupType: SHARE``): acks each record by outcome (G4).

Each Bytewax worker reads through share-group *members* (``ShareConsumer``, explicit
acknowledgement mode, subscribed to the trigger's topics). Any number of workers and
independent ``waxflow run`` processes on the same flow compete for the records of one topic,
even of a single partition; the broker hands each record to one of them at a time.

A member cannot poll again before every record of its last batch is acknowledged (the
consumer raises ``IllegalStateException``), so:

- **pipelined** (every ``kafka.RealtimeTrigger`` share flow): each worker has
  ``$WAXFLOW_SHARE_MEMBERS`` members (default 1). ``next_batch()`` sends the acks
  decided since its last call (:class:`ShareAck`: an execution reports its outcome once its
  terminal document is delivered, from any thread), commits them, and polls the next member
  with nothing outstanding. A batch held up by a slow or retrying record holds only its own
  member; a retry that would outlive the record lock RELEASEs the record instead
  (:meth:`ShareAck.give_back`). Why one member by default: every member fetches in the
  background (librdkafka 2.16; measured: a subscribed member that is not polled acquires
  records and holds them until their lock runs out), so the records a member fetched while
  its batch is held have their lock running. More members let other batches go on past a
  slow record, at the cost of more records redelivered (delivery count + 1) when batches are
  held longer than the lock; with a 1 s lock and a loaded machine that cost showed.
- without a progress (no compiled flow does this any more): one member per worker, polled
  again once every record of its batch has an outcome.

Per-partition ack errors (e.g. a record lock that ran out) are logged and counted in
:data:`STATS`, never swallowed.

Record lock: the broker locks a delivered record for ``share.record.lock.duration.ms``
(default 30 s). A batch whose work runs longer loses the lock: the broker delivers those
records again (possibly to another consumer; the delivery count grows, the execution id is
the same) and this consumer's late acks fail with ``INVALID_RECORD_STATE`` while another
member holds them (logged with their offsets, counted per record, whichever call sent them:
the consumer's acknowledgement-commit callback). A late ack of a record another member
already acknowledged is ignored by the broker (Kafka 4.2: no error), so it is not counted.
confluent-kafka 2.16 has no RENEW ack type, so a watchdog only warns when a batch has been
held for 80% of the lock.

The group's start position (``share.auto.offset.reset``, default here ``earliest``) and
isolation (``share.isolation.level``, default ``read_committed`` as in consumer-group mode)
are group configs: they are set with AdminClient when the first worker is built.

``kafka.Trigger`` with ``groupType: SHARE`` (:class:`KafkaShareBatchSource`): one member
per worker, and one delivery (one poll, at most ``maxRecords`` records) is one batch: the
batch's execution runs, then every record of it is acknowledged by the execution's outcome
(:func:`share_batch_outcome`, same rule as per record: ACCEPT after SUCCESS/WARNING,
RELEASE after a failure while deliveries remain, REJECT at the last one), and only then does
the member poll the next batch. A released batch's records are delivered again (to this
member or another, maybe in other batches); the same records delivered together again make
the same execution id (:meth:`~waxflow.connectors.kafka_batch.Batch.id_source`).

Broker outages (:mod:`waxflow.connectors.broker_watch`): a ``commit_sync`` or ``poll`` that
fails for want of the broker is logged once per outage, the batch's acks are lost but not its
work (the broker hands the records out again: same execution ids, new runs), and the source
stops with one line once the outage passes ``$WAXFLOW_BROKER_GIVE_UP``. A broker killed while
it initialises a new group's share partitions (the group coordinator writes them as
"initializing", then asks the share coordinator) keeps them "initializing" after its restart,
and assigns them to no member, old or new, until ``group.share.initialize.retry.interval.ms``
(Kafka's default 30 s) has passed: measured on 4.2, a 40 s stall with no records. The local
broker sets it to its floor, 5 s (~15 s stall); on other clusters it is the broker's setting.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bytewax.inputs import DynamicSource, StatelessSourcePartition
from confluent_kafka import (
    AcknowledgeType,
    IllegalStateException,
    KafkaException,
    Message,
    ShareConsumer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from waxflow.acks import AckType, decide
from waxflow.connectors import broker_watch, shutdown
from waxflow.connectors.kafka_batch import Batch
from waxflow.connectors.kafka_config import require
from waxflow.connectors.kafka_errors import check_access
from waxflow.connectors.kafka_source import env_bound, record_fields
from waxflow.errors import ConfigConflict, SourceStop
from waxflow.execution import Execution
from waxflow.progress import Progress
from waxflow.records import Decoded, RawRecord, RecordFields

LOG = logging.getLogger("waxflow.share")

#: Share-group configs (set on the group, never on the client).
GROUP_CONFIGS = frozenset({"share.auto.offset.reset", "share.isolation.level",
                           "share.record.lock.duration.ms", "share.session.timeout.ms",
                           "share.heartbeat.interval.ms"})
_FROM_CLIENT = {"auto.offset.reset": "share.auto.offset.reset",
                "isolation.level": "share.isolation.level"}
_RESET_VALUES = {"smallest": "earliest", "beginning": "earliest", "largest": "latest",
                 "end": "latest"}
POLL_TIMEOUT = 0.05  # seconds a poll may wait when nothing is outstanding
LOCK_WARN_AT = 0.8  # warn when a batch has been held this fraction of the record lock
#: a retry is given back (RELEASE) unless it is due this long before the record lock runs out
LOCK_MARGIN = 0.2  # of the lock
Coord = tuple[str, int, int]


@dataclass
class ShareStats:
    """Process-wide counters of acks sent, ack errors and lock warnings (thread-safe)."""

    acks: Counter[str] = field(default_factory=Counter)
    ack_errors: int = 0
    lock_warnings: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, acks: Counter[str] | None = None, errors: int = 0, warnings: int = 0) -> None:
        with self._lock:
            self.acks.update(acks or {})
            self.ack_errors += errors
            self.lock_warnings += warnings


STATS = ShareStats()
_REGISTRY: dict[int, _Member] = {}
_IDS = itertools.count(1)
_REGISTRY_LOCK = threading.Lock()


def _ranges(offsets: set[int]) -> str:
    """``{3, 4, 5, 9}`` → ``"3-5, 9"``: the offsets of a failed ack, short."""
    spans: list[list[int]] = []
    for off in sorted(offsets):
        if spans and off == spans[-1][1] + 1:
            spans[-1][1] = off
        else:
            spans.append([off, off])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def ack_counts() -> dict[str, int]:
    """ACCEPT/RELEASE/REJECT acks sent by this process so far."""
    with STATS._lock:
        return dict(STATS.acks)


def split_conf(conf: dict[str, Any], group_id: str, batch_size: int
               ) -> tuple[dict[str, Any], dict[str, str]]:
    """(ShareConsumer config, group configs) from a trigger's client config.

    ``share.*`` group configs move to the group; ``auto.offset.reset``/``isolation.level``
    become their share-group equivalents unless those are given; ``max.poll.records``
    defaults to the run's batch size; acknowledgement mode is explicit (a conflicting user
    value is an error).
    """
    client = dict(conf)
    group: dict[str, str] = {}
    for key in list(client):
        if key in GROUP_CONFIGS:
            group[key] = str(client.pop(key))
    for key, share_key in _FROM_CLIENT.items():
        if key in client:
            value = str(client.pop(key)).lower()
            group.setdefault(share_key, _RESET_VALUES.get(value, value))
    for key in ("enable.auto.commit", "enable.auto.offset.store"):
        if key in client and str(client.pop(key)).lower() != "false":
            raise ConfigConflict(f"properties.{key}=true is not allowed: share-group acks "
                                 "are sent by waxflow after each execution (G4)")
    require(client, "share.acknowledgement.mode", "explicit",
            "waxflow acks each record by the outcome of its execution (G4)")
    client["group.id"] = group_id
    client.setdefault("max.poll.records", batch_size)
    group.setdefault("share.auto.offset.reset", "earliest")
    group.setdefault("share.isolation.level", "read_committed")
    return client, group


@dataclass(frozen=True)
class GroupSettings:
    """What the broker says about the group: lock, delivery limit, heartbeat (seconds)."""

    lock_s: float = 30.0
    delivery_limit: int = 5
    heartbeat_s: float = 5.0


def configure_group(conf: dict[str, Any], group_id: str, configs: dict[str, str]
                    ) -> GroupSettings:
    """Set the group's configs; read its lock duration and the broker's delivery limit.

    Setting the configs must succeed (the start position depends on it). Reading the
    settings falls back to Kafka's defaults (30 s, 5 deliveries) with a warning.
    """
    admin = AdminClient(broker_watch.admin_conf(conf))
    res = ConfigResource(ResourceType.GROUP, group_id, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
        for k, v in sorted(configs.items())])

    def alter() -> None:
        for fut in admin.incremental_alter_configs([res]).values():
            fut.result(timeout=30)

    # a job (re)started while the broker is away waits for it, up to the give-up bound
    broker_watch.retry(alter, f"share group {group_id} set-up")
    try:
        group_res = ConfigResource(ResourceType.GROUP, group_id)
        gcfg = admin.describe_configs([group_res])[group_res].result(timeout=30)
        broker_id = min(admin.list_topics(timeout=30).brokers)
        broker_res = ConfigResource(ResourceType.BROKER, str(broker_id))
        bcfg = admin.describe_configs([broker_res])[broker_res].result(timeout=30)
        limit = gcfg.get("share.delivery.count.limit") or bcfg["group.share.delivery.count.limit"]
        return GroupSettings(int(gcfg["share.record.lock.duration.ms"].value) / 1000,
                             int(limit.value),
                             int(gcfg["share.heartbeat.interval.ms"].value) / 1000)
    except (KafkaException, KeyError, ValueError) as exc:
        LOG.warning("share group %s: cannot read the record lock and delivery limit from the "
                    "broker (%s); assuming Kafka's defaults %s", group_id, exc, GroupSettings())
        return GroupSettings()


class _ShareReader:
    """What a worker's share-group reader keeps whatever it emits (records or batches): its
    group and settings, the ack counts it logs at close, its idle clock and when Bytewax
    should call it again. :class:`_Member` reports to it."""

    def __init__(self, group_id: str, *, settings: GroupSettings, max_deliveries: int,
                 idle_stop: float | None) -> None:
        self.group = group_id
        self.settings = settings
        self._max = max_deliveries
        self._idle_stop = idle_stop
        self._acks: Counter[str] = Counter()
        self._errors = 0
        self._awake: datetime | None = None
        started = time.monotonic()
        self._last_activity = started
        # the first member of a new group gets its assignment a heartbeat after joining
        self._no_stop_before = started + 2 * settings.heartbeat_s

    def ack_for(self, rec: Decoded, state: str | None) -> AckType:
        """The ack sent for ``rec`` when its execution ends in ``state``."""
        raise NotImplementedError

    def count_error(self, n: int = 1) -> None:
        self._errors += n
        STATS.add(errors=n)

    def _sent(self, member: _Member) -> None:
        """Send ``member``'s decided acks and commit them."""
        sent = member.send_decided()
        if sent:
            self._acks.update(sent)
            STATS.add(acks=sent)
            member.commit()

    def _idled_out(self, now: float) -> bool:
        """Whether an empty poll at ``now`` ends the source: idle for ``idle_stop`` (broker
        outages do not count), past the first heartbeats, and the broker answers (an
        unreachable broker is an outage, not idleness)."""
        return (self._idle_stop is not None
                and now - broker_watch.idle_since(self._last_activity) >= self._idle_stop
                and now >= self._no_stop_before
                and broker_watch.reachable(f"the share group {self.group}"))

    def _wait(self, ms: int) -> list[Any]:
        self._awake = datetime.now().astimezone() + timedelta(milliseconds=ms)
        return []

    def next_awake(self) -> datetime | None:
        return self._awake

    def _log_acks(self, what: str, member_id: int) -> None:
        LOG.info("share group %s %s %d: acks ACCEPT=%d RELEASE=%d REJECT=%d; ack errors=%d",
                 self.group, what, member_id, self._acks["ACCEPT"], self._acks["RELEASE"],
                 self._acks["REJECT"], self._errors)


class _Member:
    """One ShareConsumer of a worker: a member of the share group whose polled batch is
    *outstanding* until every record of it is acknowledged (the consumer refuses to poll
    before that: ``IllegalStateException``). Touched only on the worker's thread, but for
    :meth:`record_outcome`, which any thread may call."""

    def __init__(self, part: _ShareReader, conf: dict[str, Any],
                 topics: Sequence[str]) -> None:
        self.part = part
        self.consumer = ShareConsumer(broker_watch.watch(conf))
        self.consumer.set_acknowledgement_commit_callback(self._acks_committed)
        self.consumer.subscribe(list(topics))
        self.outstanding: dict[Coord, Message] = {}
        self.polled_at = 0.0  # monotonic time of the poll that returned the outstanding batch
        self._decided: list[tuple[Coord, AckType]] = []  # from any thread
        self._decided_lock = threading.Lock()
        self._watchdog: threading.Timer | None = None
        with _REGISTRY_LOCK:
            self.id = next(_IDS)
            _REGISTRY[self.id] = self

    def ack_for(self, rec: Decoded, state: str | None) -> AckType:
        """The ack sent for ``rec`` when its execution ends in ``state``."""
        return self.part.ack_for(rec, state)

    def record_outcome(self, rec: Decoded, state: str | None, *,
                       ack: AckType | None = None) -> None:
        """Store the ack for one of this member's records (any thread); the worker sends it
        at its next read."""
        raw = rec.raw
        decided = ack or self.ack_for(rec, state)
        with self._decided_lock:
            self._decided.append(((raw.topic, raw.partition, raw.offset), decided))

    def record_acks(self, acks: list[tuple[Coord, AckType]]) -> None:
        """Store decided acks by record coordinates (any thread); sent at the next read."""
        with self._decided_lock:
            self._decided.extend(acks)

    def _acks_committed(self, offsets: dict[TopicPartition, set[int]],
                        exc: KafkaException | None) -> None:
        """The broker's answer to acks, however they were sent (commit, poll, close): a
        failure is logged with the records' offsets and counted once per record."""
        if exc is None:
            return
        for tp, offs in offsets.items():
            self.part.count_error(len(offs))
            LOG.error("share group %s: acks for %s/%d offsets %s failed (a record lock that "
                      "ran out is redelivered; its late ack fails): %s", self.part.group,
                      tp.topic, tp.partition, _ranges(offs), exc)

    def lock_left(self) -> float:
        """Seconds until the record lock of the outstanding batch runs out."""
        return self.part.settings.lock_s - (time.monotonic() - self.polled_at)

    def send_decided(self) -> Counter[str]:
        """Acknowledge every decided record (worker thread); the acks go to the broker with
        the next poll or commit."""
        with self._decided_lock:
            decided, self._decided = self._decided, []
        sent: Counter[str] = Counter()
        for coord, ack in decided:
            msg = self.outstanding.pop(coord, None)
            if msg is None:
                LOG.error("share group %s: outcome for %s/%d@%d which is not outstanding",
                          self.part.group, *coord)
                continue
            try:
                self.consumer.acknowledge(msg, getattr(AcknowledgeType, ack))
            except (KafkaException, IllegalStateException) as exc:  # e.g. no longer in flight
                self.part.count_error()
                LOG.error("share group %s: cannot %s %s/%d@%d: %s", self.part.group, ack,
                          *coord, exc)
                continue
            sent[ack] += 1
            LOG.debug("share group %s: %s %s/%d@%d (delivery %d)", self.part.group, ack,
                      *coord, msg.delivery_count())
        if not self.outstanding and self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        return sent

    def commit(self) -> None:
        """Send the acknowledged records' acks and wait for the broker's answer (failed
        acks are reported to :meth:`_acks_committed`, per record)."""
        try:
            self.consumer.commit_sync()
        except KafkaException as exc:  # the broker went away: the acks are lost, not the work
            self.part.count_error()
            broker_watch.gone(f"share group {self.part.group}", str(exc))
            LOG.warning("share group %s: acks not committed (%s): those records are delivered "
                        "again once the broker is back (same execution ids)", self.part.group,
                        exc)
            return

    def poll(self) -> list[RawRecord]:
        """Poll a batch (only when nothing is outstanding); it becomes outstanding."""
        try:
            polled: list[Message] = list(self.consumer.poll(POLL_TIMEOUT))
        except KafkaException as exc:
            broker_watch.gone(f"share group {self.part.group}", str(exc))
            return []
        out: list[RawRecord] = []
        for m in polled:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise SourceStop(f"share consumer error in group {self.part.group}: "
                                     f"{err.str()}")
                LOG.warning("share consumer error in group %s: %s", self.part.group, err.str())
                continue
            rec = RawRecord(*record_fields(m), m.delivery_count(), self.id)
            self.outstanding[(rec.topic, rec.partition, rec.offset)] = m
            out.append(rec)
        if out:
            self.polled_at = time.monotonic()
            lock_s = self.part.settings.lock_s
            self._watchdog = threading.Timer(LOCK_WARN_AT * lock_s, self._warn_lock)
            self._watchdog.daemon = True
            self._watchdog.start()
        return out

    def _warn_lock(self) -> None:
        held = len(self.outstanding)
        if held:
            STATS.add(warnings=1)
            lock_s = self.part.settings.lock_s
            LOG.warning("share group %s: %d records held for %.1fs, %d%% of the broker's "
                        "record lock (%.1fs): when it runs out they are delivered again and "
                        "these acks fail; shorten the work or raise the group's "
                        "share.record.lock.duration.ms", self.part.group, held,
                        LOCK_WARN_AT * lock_s, int(LOCK_WARN_AT * 100), lock_s)

    def close(self) -> None:
        """Leave the group: records still outstanding are released by the broker."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        with _REGISTRY_LOCK:
            _REGISTRY.pop(self.id, None)
        self.consumer.close()


class _SharePartition(_ShareReader, StatelessSourcePartition[RawRecord]):
    """A worker's share-group members; reads from a member whose batch is all acknowledged.

    Batch-synchronous (``progress`` None): one member; the execute step decides every record
    of a batch on this thread before the next read, so each batch is acked whole. Pipelined:
    ``members`` consumers (``$WAXFLOW_SHARE_MEMBERS``); each read sends the acks decided
    since the last one, commits them, and polls a member with nothing outstanding: a batch
    held up by a slow or retrying record holds only its own member.
    """

    def __init__(self, conf: dict[str, Any], group_id: str, topics: Sequence[str],
                 *, settings: GroupSettings, max_deliveries: int, idle_stop: float | None,
                 progress: Progress | None, members: int) -> None:
        super().__init__(group_id, settings=settings, max_deliveries=max_deliveries,
                         idle_stop=idle_stop)
        self._progress = progress
        #: pipelined: unfinished executions per process past which no member polls
        self._max_in_flight = env_bound("WAXFLOW_MAX_IN_FLIGHT", 5000)
        self._members = [_Member(self, conf, topics) for _ in range(max(1, members))]
        self._next = 0  # round robin over members with nothing outstanding

    def ack_for(self, rec: Decoded, state: str | None) -> AckType:
        """The ack sent for ``rec`` when its execution ends in ``state``."""
        return decide(state, rec.error is not None, rec.raw.delivery_count or 1, self._max)

    def _send_acks(self) -> None:
        for member in self._members:
            self._sent(member)

    def _free(self) -> _Member | None:
        n = len(self._members)
        for i in range(n):
            member = self._members[(self._next + i) % n]
            if not member.outstanding:
                self._next = (self._next + i + 1) % n
                return member
        return None

    def next_batch(self) -> list[RawRecord]:
        if self._progress is not None:
            self._progress.read_point()
        self._send_acks()
        busy = any(m.outstanding for m in self._members)
        if shutdown.requested():  # poll no more; stop once no execution runs
            running = self._progress.running if self._progress is not None else 0
            if running == 0 and (self._progress is not None or not busy):
                raise StopIteration  # close() leaves the group: the broker releases the rest
            return self._wait(5)
        member = self._free()
        if member is None or (self._progress is not None
                              and self._progress.unfinished >= self._max_in_flight):
            self._last_activity = time.monotonic()  # held back by work, not idle
            return self._wait(2)
        broker_watch.check(f"the share group {self.group}")
        self._awake = None
        out = member.poll()
        now = time.monotonic()
        if out:
            self._last_activity = now
        elif busy:
            self._last_activity = now  # executions still running: not idle
        elif self._idled_out(now):
            raise StopIteration
        return out

    def close(self) -> None:
        self._send_acks()
        for member in self._members:
            member.close()
        self._log_acks("consumer", self._members[0].id)


class ShareAck:
    """Where a pipelined share-group execution reports that it is done (the pipeline calls
    :meth:`done` once its terminal document is delivered): the record's ack by outcome."""

    __slots__ = ("_execution", "_member", "_rec")

    def __init__(self, member: _Member, rec: Decoded, execution: Execution) -> None:
        self._member = member
        self._rec = rec
        self._execution = execution

    def done(self, _offset: int) -> None:
        self._member.record_outcome(self._rec, self._execution.state)

    def give_back(self, delay: float) -> AckType | None:
        """A retry due in ``delay`` seconds that would outlive the record lock: RELEASE the
        record now (the broker delivers it again, here or to another consumer: same
        execution id, a new run) instead of holding the batch past its lock. Returns the ack
        to note in the execution's document, or None to wait for the retry here (it fits in
        the lock, or this is the last allowed delivery, where a RELEASE would archive it)."""
        if delay < self._member.lock_left() - LOCK_MARGIN * self._member.part.settings.lock_s:
            return None
        if self._member.ack_for(self._rec, "FAILED") != "RELEASE":
            return None
        return "RELEASE"

    def released(self) -> None:
        """Send the RELEASE :meth:`give_back` announced (after the document saying so)."""
        self._member.record_outcome(self._rec, None, ack="RELEASE")


def planned_ack(rec: Decoded, state: str | None) -> AckType | None:
    """The ack a share-group record will get if its execution ends in ``state`` (None for
    records that did not come from a share-group source of this process). Lets the
    execution document record the ack before it is sent: same rule, same limit."""
    origin = rec.raw.origin
    part = _REGISTRY.get(origin) if origin is not None else None
    return part.ack_for(rec, state) if part is not None else None


def share_ack(rec: Decoded, execution: Execution) -> ShareAck:
    """Pipelined: where the execution of a share-group record reports that it is done."""
    return ShareAck(_member_of(rec), rec, execution)


def share_filtered(rec: Decoded) -> None:
    """Pipelined: a record ``headerFilters`` filtered out is done as it is (ACCEPT)."""
    _member_of(rec).record_outcome(rec, None)


def _member_of(rec: Decoded) -> _Member:
    origin = rec.raw.origin
    member = _REGISTRY.get(origin) if origin is not None else None
    if member is None:
        raw = rec.raw
        raise RuntimeError(f"share-group record {raw.topic}/{raw.partition}@{raw.offset} "
                           f"reached the execute step away from its source partition "
                           f"({origin}): a step between them moved it")
    return member


class KafkaShareSource(DynamicSource[RawRecord]):
    """Reads a trigger's topics in a share group; ShareConsumers per worker, acks by outcome
    (G4)."""

    def __init__(self, conf: dict[str, Any], group_id: str, topics: list[str],
                 *, batch_size: int = 500, idle_stop: float | None = None,
                 max_deliveries: int | None = None,
                 warm_up: Callable[[], object] | None = None,
                 progress: Progress | None = None) -> None:
        """``warm_up`` (e.g. the execute step's ``resources``) runs before a worker's consumer
        joins, so set-up costs do not eat into the first batch's record lock. ``progress``:
        the executions are pipelined (:class:`ShareAck` reports each one done); each worker
        then has ``$WAXFLOW_SHARE_MEMBERS`` (default 1) consumers."""
        self._progress = progress
        self._members = env_bound("WAXFLOW_SHARE_MEMBERS", 1) if progress is not None else 1
        self._conf, self._group_configs = split_conf(conf, group_id, batch_size)
        self._warm_up = warm_up
        self._group = group_id
        self._topics = topics
        self._idle_stop = idle_stop
        self._max_deliveries = max_deliveries
        self._settings: GroupSettings | None = None
        self._lock = threading.Lock()

    def _group_settings(self) -> GroupSettings:
        with self._lock:
            if self._settings is None:
                check_access(self._conf, f"share group {self._group}", read=self._topics,
                             group=self._group)
                self._settings = configure_group(self._conf, self._group,
                                                 self._group_configs)
                LOG.info("share group %s: record lock %.1fs, delivery limit %d", self._group,
                         self._settings.lock_s, self._settings.delivery_limit)
            return self._settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SharePartition:
        settings = self._group_settings()
        if self._warm_up is not None:
            self._warm_up()
        return _SharePartition(self._conf, self._group, self._topics, settings=settings,
                               max_deliveries=self._max_for(settings),
                               idle_stop=self._idle_stop, progress=self._progress,
                               members=self._members)

    def _max_for(self, settings: GroupSettings) -> int:
        """The delivery at which waxflow rejects: ``maxDeliveries``, at most the broker's
        limit (where the broker archives the record itself)."""
        limit = settings.delivery_limit
        wanted = self._max_deliveries or limit
        if wanted > limit:
            LOG.warning("share group %s: maxDeliveries %d is above the broker's delivery "
                        "limit %d; the broker archives a record at its %dth delivery, so "
                        "waxflow rejects at %d", self._group, wanted, limit, limit, limit)
        return min(wanted, limit)


class _ShareBatchPartition(_ShareReader, StatelessSourcePartition[Batch]):
    """A worker's share-group member for ``kafka.Trigger``: each poll's delivery is one
    :class:`Batch`; the member polls again only once the batch's execution is done and its
    acks (:meth:`outcome`) are sent and committed."""

    def __init__(self, conf: dict[str, Any], group_id: str, topics: Sequence[str],
                 *, settings: GroupSettings, max_deliveries: int,
                 idle_stop: float | None) -> None:
        super().__init__(group_id, settings=settings, max_deliveries=max_deliveries,
                         idle_stop=idle_stop)
        self._member = _Member(self, conf, topics)
        self._in_flight: Batch | None = None  # emitted; its outcome not known yet
        with _REGISTRY_LOCK:
            _BATCH_PARTS[self._member.id] = self

    def ack_for(self, rec: Decoded, state: str | None) -> AckType:
        """The ack of one record of a batch whose execution ended in ``state``."""
        return decide(state, False, rec.raw.delivery_count or 1, self._max)

    def outcome(self, batch: Batch, state: str) -> None:
        """The execution of ``batch`` ended in ``state`` (its document is delivered): decide
        the ack of each of its records; they are sent at the next read."""
        if batch is not self._in_flight:
            raise RuntimeError(f"share group {self.group}: outcome of a batch that is not "
                               "this member's batch in flight")
        acks = [(coord, decide(state, False, msg.delivery_count() or 1, self._max))
                for coord, msg in self._member.outstanding.items()]
        self._member.record_acks(acks)
        self._in_flight = None

    def _send_acks(self) -> None:
        self._sent(self._member)

    def next_batch(self) -> list[Batch]:
        self._send_acks()
        busy = self._in_flight is not None or bool(self._member.outstanding)
        if shutdown.requested():  # poll no more; stop once the batch in flight is acked
            if not busy:
                raise StopIteration
            return self._wait(5)
        if busy:  # the batch's execution has not reported yet
            self._last_activity = time.monotonic()
            return self._wait(2)
        broker_watch.check(f"the share group {self.group}")
        self._awake = None
        recs = self._member.poll()
        now = time.monotonic()
        if not recs:
            if self._idled_out(now):
                raise StopIteration
            return []
        self._last_activity = now
        batch = _batch_of(recs, self._member.id)
        self._in_flight = batch
        return [batch]

    def close(self) -> None:
        self._send_acks()
        with _REGISTRY_LOCK:
            _BATCH_PARTS.pop(self._member.id, None)
        self._member.close()
        self._log_acks("batch consumer", self._member.id)


_BATCH_PARTS: dict[int, _ShareBatchPartition] = {}


def _batch_of(recs: list[RawRecord], origin: int) -> Batch:
    """One delivery as a batch: its records in delivered order, the range per partition."""
    batch = Batch(origin=origin, delivered=[])
    assert batch.delivered is not None
    for r in recs:
        fields: RecordFields = (r.topic, r.partition, r.offset, r.key, r.value, r.timestamp,
                                r.headers)
        batch.records.append(fields)
        batch.delivered.append((r.topic, r.partition, r.offset))
        key = f"{r.topic}/{r.partition}"
        first, last = batch.offsets.get(key, (r.offset, r.offset))
        batch.offsets[key] = (min(first, r.offset), max(last, r.offset))
        batch.ends[key] = batch.offsets[key][1] + 1
    return batch


def share_batch_outcome(batch: Batch, state: str) -> None:
    """The execute step's report that ``batch``'s execution ended in ``state`` (its terminal
    document delivered), on the worker thread: the batch's records are acknowledged by it
    at the source's next read. A batch from no share source of this process is a bug in
    the dataflow's shape, so it raises."""
    part = _BATCH_PARTS.get(batch.origin) if batch.origin is not None else None
    if part is None:
        raise RuntimeError(f"share-group batch {batch.id_source()[:80]} reached the execute "
                           f"step away from its source partition ({batch.origin})")
    part.outcome(batch, state)


class KafkaShareBatchSource(DynamicSource[Batch]):
    """``kafka.Trigger`` in a share group: one delivery per batch, acked by the batch's
    outcome (see the module doc). Same group set-up as :class:`KafkaShareSource`."""

    def __init__(self, conf: dict[str, Any], group_id: str, topics: list[str],
                 *, max_records: int | None = None, idle_stop: float | None = None,
                 max_deliveries: int | None = None) -> None:
        """``max_records``: the most records per batch (``max.poll.records``; default
        500, unless the trigger's ``properties`` set it)."""
        self._shared = KafkaShareSource(conf, group_id, topics,
                                        batch_size=max_records or 500,
                                        idle_stop=idle_stop, max_deliveries=max_deliveries)
        if max_records is not None:  # maxRecords wins over a properties value
            self._shared._conf["max.poll.records"] = max_records

    def build(self, step_id: str, worker_index: int, worker_count: int
              ) -> _ShareBatchPartition:
        shared = self._shared
        settings = shared._group_settings()
        return _ShareBatchPartition(shared._conf, shared._group, shared._topics,
                                    settings=settings, max_deliveries=shared._max_for(settings),
                                    idle_stop=shared._idle_stop)
