"""Share-group Kafka source (KIP-932, ``groupType: SHARE``): acks each record by outcome (G4).

One ``ShareConsumer`` per Bytewax worker (a ``DynamicSource``), in explicit acknowledgement
mode, subscribed to the trigger's topics. Any number of workers and independent
``waxflow run`` processes on the same flow compete for the records of one topic, even of a
single partition; the broker hands each record to one of them at a time.

Ack cycle, per source partition, all on the worker's thread (the consumer is not
thread-safe): ``next_batch()`` polls a batch and keeps its messages as *outstanding*; the
records travel through stateless steps only, so the execute step runs on the same worker and,
once every execution of its batch is done (terminal document delivered), hands the outcomes
back through :func:`share_outcomes`. ``next_batch()`` returns nothing until every
outstanding record has its outcome; then it acknowledges each one as
:func:`waxflow.acks.decide` says, calls ``commit_sync()``, and only then polls again.
Per-partition ack errors (e.g. a record lock that ran out) are logged and counted in
:data:`STATS`, never swallowed.

Record lock: the broker locks a delivered record for ``share.record.lock.duration.ms``
(default 30 s). A batch whose work runs longer loses the lock: the broker delivers those
records again (possibly to another consumer; the delivery count grows, the execution id is
the same) and this consumer's late acks fail with ``INVALID_RECORD_STATE`` (logged, counted).
confluent-kafka 2.16 has no RENEW ack type, so a watchdog only warns when a batch has been
held for 80% of the lock.

The group's start position (``share.auto.offset.reset``, default here ``earliest``) and
isolation (``share.isolation.level``, default ``read_committed`` as in consumer-group mode)
are group configs: they are set with AdminClient when the first worker is built.

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
from waxflow.connectors.kafka_config import require
from waxflow.connectors.kafka_errors import check_access
from waxflow.connectors.kafka_source import record_fields
from waxflow.errors import ConfigConflict, SourceStop
from waxflow.execution import Execution
from waxflow.records import Decoded, RawRecord

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
_REGISTRY: dict[int, _SharePartition] = {}
_IDS = itertools.count(1)
_REGISTRY_LOCK = threading.Lock()


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


class _SharePartition(StatelessSourcePartition[RawRecord]):
    """One ShareConsumer; polls only when every outstanding record is acknowledged."""

    def __init__(self, conf: dict[str, Any], group_id: str, topics: Sequence[str],
                 *, settings: GroupSettings, max_deliveries: int, idle_stop: float | None) -> None:
        self._group = group_id
        self._settings = settings
        self._max = max_deliveries
        self._idle_stop = idle_stop
        self._consumer = ShareConsumer(broker_watch.watch(conf))
        self._consumer.subscribe(list(topics))
        self._outstanding: dict[Coord, Message] = {}
        self._decided: dict[Coord, AckType] = {}
        self._acks: Counter[str] = Counter()
        self._errors = 0
        self._watchdog: threading.Timer | None = None
        self._awake: datetime | None = None
        started = time.monotonic()
        self._last_activity = started
        # the first member of a new group gets its assignment a heartbeat after joining
        self._no_stop_before = started + 2 * settings.heartbeat_s
        with _REGISTRY_LOCK:
            self.id = next(_IDS)
            _REGISTRY[self.id] = self

    def record_outcome(self, rec: Decoded, execution: Execution | None) -> None:
        """Store the ack for one of this partition's records (worker thread)."""
        raw = rec.raw
        coord = (raw.topic, raw.partition, raw.offset)
        if coord not in self._outstanding:
            LOG.error("share group %s: outcome for %s/%d@%d which is not outstanding",
                      self._group, *coord)
            return
        self._decided[coord] = self.ack_for(rec, execution.state if execution else None)

    def ack_for(self, rec: Decoded, state: str | None) -> AckType:
        """The ack this partition sends for ``rec`` when its execution ends in ``state``."""
        return decide(state, rec.error is not None, rec.raw.delivery_count or 1, self._max)

    def _ack_all(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        sent: Counter[str] = Counter()
        for coord, msg in self._outstanding.items():
            ack = self._decided[coord]
            try:
                self._consumer.acknowledge(msg, getattr(AcknowledgeType, ack))
            except (KafkaException, IllegalStateException) as exc:  # e.g. no longer in flight
                self._errors += 1
                STATS.add(errors=1)
                LOG.error("share group %s: cannot %s %s/%d@%d: %s", self._group, ack, *coord,
                          exc)
                continue
            sent[ack] += 1
            LOG.debug("share group %s: %s %s/%d@%d (delivery %d)", self._group, ack, *coord,
                      msg.delivery_count())
        self._acks.update(sent)
        STATS.add(acks=sent)
        self._outstanding.clear()
        self._decided.clear()
        self._commit()

    def _commit(self) -> None:
        try:
            results = self._consumer.commit_sync() or {}
        except KafkaException as exc:  # the broker went away: the acks are lost, not the work
            self._errors += 1
            STATS.add(errors=1)
            broker_watch.gone(f"share group {self._group}", str(exc))
            LOG.warning("share group %s: acks not committed (%s): those records are delivered "
                        "again once the broker is back (same execution ids)", self._group, exc)
            return
        for tp, err in results.items():
            if err is not None:
                self._errors += 1
                STATS.add(errors=1)
                LOG.error("share group %s: acks for %s/%d failed (a record lock that ran out "
                          "is redelivered; its late ack fails): %s", self._group, tp.topic,
                          tp.partition, err)

    def _warn_lock(self, held: int) -> None:
        if self._outstanding:
            STATS.add(warnings=1)
            LOG.warning("share group %s: %d records held for %.1fs, %d%% of the broker's "
                        "record lock (%.1fs): when it runs out they are delivered again and "
                        "these acks fail; shorten the work or raise the group's "
                        "share.record.lock.duration.ms", self._group, held,
                        LOCK_WARN_AT * self._settings.lock_s, int(LOCK_WARN_AT * 100),
                        self._settings.lock_s)

    def next_batch(self) -> list[RawRecord]:
        if self._outstanding:
            if len(self._decided) < len(self._outstanding):
                self._awake = datetime.now().astimezone() + timedelta(milliseconds=2)
                return []  # the execute step (same thread) has not run this batch yet
            self._ack_all()
        if shutdown.requested():  # every delivery is acked: poll no more
            raise StopIteration
        broker_watch.check(f"the share group {self._group}")
        self._awake = None
        out: list[RawRecord] = []
        try:
            polled: list[Message] = list(self._consumer.poll(POLL_TIMEOUT))
        except KafkaException as exc:
            broker_watch.gone(f"share group {self._group}", str(exc))
            polled = []
        for m in polled:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise SourceStop(f"share consumer error in group {self._group}: "
                                     f"{err.str()}")
                LOG.warning("share consumer error in group %s: %s", self._group, err.str())
                continue
            rec = RawRecord(*record_fields(m), m.delivery_count(), self.id)
            self._outstanding[(rec.topic, rec.partition, rec.offset)] = m
            out.append(rec)
        now = time.monotonic()
        if out:
            self._last_activity = now
            self._watchdog = threading.Timer(LOCK_WARN_AT * self._settings.lock_s,
                                             self._warn_lock, (len(out),))
            self._watchdog.daemon = True
            self._watchdog.start()
        elif (self._idle_stop is not None
              and now - broker_watch.idle_since(self._last_activity) >= self._idle_stop
              and now >= self._no_stop_before):
            raise StopIteration
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def close(self) -> None:
        if self._outstanding and len(self._decided) == len(self._outstanding):
            self._ack_all()
        if self._watchdog is not None:
            self._watchdog.cancel()
        with _REGISTRY_LOCK:
            _REGISTRY.pop(self.id, None)
        self._consumer.close()
        LOG.info("share group %s consumer %d: acks ACCEPT=%d RELEASE=%d REJECT=%d; "
                 "ack errors=%d", self._group, self.id, self._acks["ACCEPT"],
                 self._acks["RELEASE"], self._acks["REJECT"], self._errors)


def planned_ack(rec: Decoded, state: str | None) -> AckType | None:
    """The ack a share-group record will get if its execution ends in ``state`` (None for
    records that did not come from a share-group source of this process). Lets the
    execution document record the ack before it is sent: same rule, same limit."""
    origin = rec.raw.origin
    part = _REGISTRY.get(origin) if origin is not None else None
    return part.ack_for(rec, state) if part is not None else None


def share_outcomes(pairs: list[tuple[Decoded, Execution | None]]) -> None:
    """Hand each record's outcome to the source partition that holds its ack.

    Called by the execute step on the worker's thread. A record whose source partition is
    not in this process means a step moved it between workers: that is a bug in the
    dataflow's shape (its ack could never be sent), so it raises.
    """
    for rec, execution in pairs:
        origin = rec.raw.origin
        part = _REGISTRY.get(origin) if origin is not None else None
        if part is None:
            raw = rec.raw
            raise RuntimeError(f"share-group record {raw.topic}/{raw.partition}@{raw.offset} "
                               f"reached the execute step away from its source partition "
                               f"({origin}): a step between them moved it")
        part.record_outcome(rec, execution)


class KafkaShareSource(DynamicSource[RawRecord]):
    """Reads a trigger's topics in a share group; one ShareConsumer per worker (G4)."""

    def __init__(self, conf: dict[str, Any], group_id: str, topics: list[str],
                 *, batch_size: int = 500, idle_stop: float | None = None,
                 max_deliveries: int | None = None,
                 warm_up: Callable[[], object] | None = None) -> None:
        """``warm_up`` (e.g. the execute step's ``resources``) runs before a worker's consumer
        joins, so set-up costs do not eat into the first batch's record lock."""
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
        limit = settings.delivery_limit
        wanted = self._max_deliveries or limit
        if wanted > limit:
            LOG.warning("share group %s: maxDeliveries %d is above the broker's delivery "
                        "limit %d; the broker archives a record at its %dth delivery, so "
                        "waxflow rejects at %d", self._group, wanted, limit, limit, limit)
        return _SharePartition(self._conf, self._group, self._topics, settings=settings,
                               max_deliveries=min(wanted, limit), idle_stop=self._idle_stop)
