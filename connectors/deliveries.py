"""Checked deliveries: produce records and wait until the broker acknowledged every one.

A :class:`Deliveries` counts what it sent through one confluent-kafka ``Producer``;
``wait()`` polls until each delivery report arrived and raises :class:`DeliveryError` if any
failed. Nothing is ever dropped silently, and a failure names the record: its topic, and the
execution it belongs to (header ``waxflow.execution.id``) or the record it stands for (a DLQ
record's ``waxflow.source.*`` headers), else its key (:meth:`Deliveries.describe`, which
subclasses refine; it runs only on failure). Thread-safe: several threads may produce into one
tracker, and several trackers may share one producer (``poll`` serves every tracker's
callbacks, each of which only touches its own counters).

Broker outages: :func:`is_outage` tells an error of the connection to the broker (a timeout,
a fatal or fenced producer, a coordinator that moved) from one of the record itself (too
large, unknown partition, ...). Owners that can redo their work after an outage (the batch's
transaction, the execution log) override :meth:`Deliveries._refused` and
:meth:`Deliveries._abandoned`; :data:`OUTAGE` logs one line when the broker goes away and one
when it is back, and :func:`give_up_seconds` (``$WAXFLOW_BROKER_GIVE_UP``, default 300 s)
bounds how long a job waits for it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from waxflow.errors import DeliveryError

#: header naming the execution a record belongs to (also the execution log's, LOG_HEADER)
EXECUTION_HEADER = "waxflow.execution.id"
_SOURCE_HEADERS = ("waxflow.source.topic", "waxflow.source.partition", "waxflow.source.offset")
Headers = list[tuple[str, str | bytes | None]]
#: one record as sent: (topic, key, value, headers, partition, timestamp)
Record = tuple[str, bytes | None, bytes | None, Headers | None, int | None, int | None]

LOG = logging.getLogger("waxflow.broker")
GIVE_UP_ENV = "WAXFLOW_BROKER_GIVE_UP"
#: producer setting of the *quiet* producers: librdkafka still reports every delivery, but
#: confluent-kafka calls Python back only for the failed ones (no Python call per record)
QUIET = {"delivery.report.only.error": True}
DEFAULT_GIVE_UP = 300.0

#: errors of the connection to the broker, not of a record: work failing with them is redone
#: once the broker is back (a new producer when the old one is fatal or fenced)
_OUTAGE_NAMES = (
    "_MSG_TIMED_OUT", "_TIMED_OUT", "_TIMED_OUT_QUEUE", "_TRANSPORT", "_ALL_BROKERS_DOWN",
    "_FATAL", "_FENCED", "_STATE", "_PURGE_QUEUE", "_PURGE_INFLIGHT", "_WAIT_COORD",
    "_RESOLVE", "_INCONSISTENT", "_OUTDATED", "NETWORK_EXCEPTION", "REQUEST_TIMED_OUT",
    "NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS",
    "NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE", "NOT_ENOUGH_REPLICAS",
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "INVALID_PRODUCER_EPOCH", "PRODUCER_FENCED",
    "UNKNOWN_PRODUCER_ID", "OUT_OF_ORDER_SEQUENCE_NUMBER", "CONCURRENT_TRANSACTIONS",
    "INVALID_TXN_STATE", "TRANSACTION_ABORTABLE", "KAFKA_STORAGE_ERROR",
)
OUTAGE_CODES = frozenset(getattr(KafkaError, n) for n in _OUTAGE_NAMES if hasattr(KafkaError, n))
FENCED_CODES = frozenset(getattr(KafkaError, n) for n in
                         ("_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH")
                         if hasattr(KafkaError, n))


def give_up_seconds() -> float:
    """How long a job waits for an unreachable broker: ``$WAXFLOW_BROKER_GIVE_UP`` (seconds,
    default 300)."""
    raw = os.environ.get(GIVE_UP_ENV)
    try:
        value = float(raw) if raw else DEFAULT_GIVE_UP
    except ValueError:
        value = DEFAULT_GIVE_UP
    return value if value > 0 else DEFAULT_GIVE_UP


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The KafkaError a KafkaException carries (None for anything else)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def is_outage(err: KafkaError | None) -> bool:
    """Whether ``err`` comes from the broker being unreachable (or the client state an
    outage leaves behind: a fatal or fenced producer), rather than from the record."""
    if err is None:
        return False
    if err.code() in OUTAGE_CODES or err.fatal():
        return True
    return bool(err.retriable())


def is_fenced(err: KafkaError | None) -> bool:
    return err is not None and err.code() in FENCED_CODES


class BrokerOutage:
    """Process-wide: one log line when the broker goes away, one when it is back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None
        self.count = 0

    def down(self, what: str, reason: str) -> float:
        """Note an outage seen by ``what``; return when it started (monotonic)."""
        with self._lock:
            if self.since is None:
                self.since = time.monotonic()
                self.count += 1
                LOG.warning("waxflow: broker unreachable (%s: %s); waiting up to %.0fs for it "
                            "($%s) before giving up", what, reason, give_up_seconds(),
                            GIVE_UP_ENV)
            return self.since

    def up(self) -> None:
        """The broker answered again (a no-op when no outage was noted)."""
        with self._lock:
            if self.since is not None:
                LOG.warning("waxflow: broker reachable again after %.1fs; resuming",
                            time.monotonic() - self.since)
                self.since = None

    def deadline(self) -> float:
        """When waiting for the broker ends (from the outage's start, or now)."""
        with self._lock:
            start = self.since if self.since is not None else time.monotonic()
        return start + give_up_seconds()


OUTAGE = BrokerOutage()


_DOWN = re.compile(r"(\d+)/(\d+) brokers are down")


def client_error(err: KafkaError) -> None:
    """``error_cb`` of waxflow's clients: notes the broker going away (one line). A client
    being destroyed reports "0/N brokers are down": not an outage."""
    if err.code() == KafkaError._ALL_BROKERS_DOWN:
        m = _DOWN.search(err.str())
        if m is None or m.group(1) == m.group(2):
            OUTAGE.down("client", err.str())


def _text(value: str | bytes | None, limit: int = 80) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_record(topic: str, key: bytes | None, size: int | None,
                    headers: Headers | None) -> str:
    """A record for an error message: ``record to topic T (N bytes) of execution X`` (or
    ``for record t/p@o`` from DLQ headers, else ``key K``)."""
    found = {name: value for name, value in headers or ()
             if name == EXECUTION_HEADER or name in _SOURCE_HEADERS}
    what = f"record to topic {topic}" + (f" ({size} bytes)" if size is not None else "")
    if all(name in found for name in _SOURCE_HEADERS):
        t, p, o = (_text(found[name]) for name in _SOURCE_HEADERS)
        what += f" for record {t}/{p}@{o}"
    if EXECUTION_HEADER in found:
        what += f" of execution {_text(found[EXECUTION_HEADER])}"
    elif key is not None:
        what += f" with key {_text(key)!r}"
    return what


class Deliveries:
    """The deliveries of one unit of work (a batch, a task run)."""

    #: whether its owner may check it later (:meth:`settle`) instead of the task waiting for
    #: it; a task-own transaction must be committed by the task (:meth:`wait`)
    deferrable = True

    def __init__(self, producer: Producer | None, *,
                 cond: threading.Condition | None = None, quiet: bool = False) -> None:
        """``cond``: a condition to share instead of one of its own (~1.5 µs each), for
        owners that never wait on it (nothing is ever pending: records only buffered).
        ``quiet``: ``producer`` is a quiet one (:data:`QUIET`: Python hears only of failed
        deliveries), used by this tracker alone: nothing counts as pending, :meth:`wait`
        flushes the producer (everything sent is then acknowledged or failed) and
        :meth:`settle` must not be used."""
        self._producer = producer
        self.quiet = quiet
        self.sent = 0
        self._pending = 0
        self._errors: list[str] = []
        #: the failed deliveries: their error and record (owners redo outage failures)
        self.failures: list[tuple[KafkaError, Record]] = []
        self._cond = cond if cond is not None else threading.Condition()
        self._settled: Callable[[list[str]], None] | None = None

    @property
    def producer(self) -> Producer:
        assert self._producer is not None
        return self._producer

    def _refused(self, err: KafkaError, record: Record) -> bool:
        """The client refused ``record`` at once with ``err``: True when the owner takes
        care of it (it will be sent again after an outage); False raises DeliveryError."""
        return False

    def _abandoned(self) -> bool:
        """True when the owner gave up on this tracker's pending deliveries (an outage made
        it redo them elsewhere): :meth:`wait` returns at once."""
        return False

    def describe(self, topic: str, key: bytes | None, value: bytes | None,
                 headers: Headers | None) -> str:
        """What a record that failed is, for the error message (called only on failure)."""
        return describe_record(topic, key, len(value) if value is not None else None, headers)

    def _on_delivery(self, err: KafkaError | None, msg: Message,
                     record: Record | None = None, headers: Headers | None = None) -> None:
        if record is None:
            record = (msg.topic() or "?", msg.key(), msg.value(), headers, None, None)
        what = None
        if err is not None:
            try:
                what = self.describe(record[0], record[1], record[2], record[3])
            except Exception:  # never lose the error over its description
                what = f"record to topic {msg.topic()}"
        settled = None
        with self._cond:
            if not self.quiet:  # (a quiet producer reports failures only: none was counted)
                self._pending -= 1
            if err is not None:
                self._errors.append(f"{what}: {err.str()}")
                self.failures.append((err, record))
            self._cond.notify_all()
            if self._pending <= 0 and self._settled is not None:
                settled, self._settled = self._settled, None
                errors = list(self._errors)
        if settled is not None:
            settled(errors)

    def settle(self, callback: Callable[[list[str]], None]) -> None:
        """Call ``callback(errors)`` once every delivery sent so far is acknowledged (at once
        when none is pending; else from the thread that polls the producer): :meth:`wait`
        for work that must not block. ``errors`` is empty when every one succeeded."""
        with self._cond:
            if self._pending > 0:
                self._settled = callback
                return
            errors = list(self._errors)
        callback(errors)

    def take_failures(self) -> list[tuple[KafkaError, Record]]:
        """The failed deliveries so far, forgotten (to send them again)."""
        with self._cond:
            failures, self.failures, self._errors = self.failures, [], []
            return failures

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: Headers | None = None,
                *, partition: int | None = None,
                timestamp: int | None = None) -> None:
        """Send one record; its delivery report is awaited by :meth:`wait`. A record the
        client refuses at once (e.g. over ``message.max.bytes``) raises
        :class:`DeliveryError` naming it."""
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        # a delivery report carries no headers: the record is kept for the error (and to be
        # sent again after an outage)
        record: Record = (topic, key, value, headers, partition, timestamp)
        report = functools.partial(self._on_delivery, record=record)
        quiet = self.quiet
        if quiet:
            self.sent += 1
        else:
            with self._cond:
                self._pending += 1
                self.sent += 1
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,
                                      on_delivery=report, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)
            except Exception as exc:
                if not quiet:
                    with self._cond:
                        self._pending -= 1
                err = kafka_error(exc)
                if err is not None and self._refused(err, record):
                    return
                with self._cond:
                    self.sent -= 1
                if isinstance(exc, KafkaException):
                    reason = err.str() if err is not None else str(exc)
                    raise DeliveryError(f"cannot send {self.describe(topic, key, value, headers)}"
                                        f": {reason}") from None
                raise

    def produce_all(self, records: list[Record]) -> list[tuple[Record, str]]:
        """Send every record as :meth:`produce` does; those the client refused at once, with
        why (the others are sent, their reports awaited by :meth:`wait`)."""
        refused: list[tuple[Record, str]] = []
        for record in records:
            topic, key, value, headers, partition, timestamp = record
            try:
                self.produce(topic, key, value, headers, partition=partition,
                             timestamp=timestamp)
            except DeliveryError as exc:
                refused.append((record, str(exc)))
        return refused

    def wait(self, timeout: float | None = None) -> None:
        """Block until every delivery is acknowledged; raise if one failed or timed out
        (``timeout``: default the broker give-up, at least 120 s)."""
        if timeout is None:
            timeout = max(120.0, give_up_seconds())
        deadline = time.monotonic() + timeout
        if self.quiet:  # its reports: failures only, served by the flush
            if self._abandoned():
                return
            left = self.producer.flush(timeout)
            if self._abandoned():
                return
            if left:
                raise DeliveryError(f"{left} deliveries unacknowledged after {timeout:.0f}s")
        while not self.quiet:
            if self._abandoned():
                return
            # serve delivery reports without blocking; when another thread's poll serves
            # ours, its callback wakes us through the condition (no sleeping out a timeout)
            self.producer.poll(0)
            with self._cond:
                if self._pending <= 0:
                    break
                if time.monotonic() > deadline:
                    raise DeliveryError(f"{self._pending} deliveries unacknowledged after "
                                        f"{timeout:.0f}s")
                self._cond.wait(0.005)
        if self._errors:
            more = f" (and {len(self._errors) - 5} more)" if len(self._errors) > 5 else ""
            raise DeliveryError("delivery failed: " + "; ".join(self._errors[:5]) + more)


#: the condition of every :class:`QuietDeliveries` (none ever waits on it)
_QUIET_COND = threading.Condition()


class QuietDeliveries(Deliveries):
    """The deliveries of one task run on a *quiet* producer (:data:`QUIET`: Python hears only
    of failures). Nothing counts as pending: its owner knows every record acknowledged once
    the producer's queue emptied after the records were sent (``flush``) with no failure in
    :attr:`failures` — :meth:`wait` and :meth:`settle` must not be used to learn it. Used by
    the pipeline for a consumer-group flow's at-least-once Produce records, settled at the
    epoch's snapshot with its terminal documents (:mod:`waxflow.operators.pipeline`)."""

    def __init__(self, producer: Producer, *,
                 serve: Callable[[float], None] | None = None) -> None:
        """``serve(timeout)``: how to serve the producer's reports when its queue is full
        (the owner's, so that one thread at a time serves them); default ``poll``."""
        super().__init__(producer, cond=_QUIET_COND)
        self._serve = serve

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: Headers | None = None,
                *, partition: int | None = None,
                timestamp: int | None = None) -> None:
        """Send one record; a failure is recorded in :attr:`failures` when the owner serves
        the producer's reports. A record refused at once raises :class:`DeliveryError`."""
        record: Record = (topic, key, value, headers, partition, timestamp)
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        report = functools.partial(self._failed, record)
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,
                                      on_delivery=report, **kwargs)
                self.sent += 1
                return
            except BufferError:
                self._full()
            except KafkaException as exc:
                err = kafka_error(exc)
                reason = err.str() if err is not None else str(exc)
                raise DeliveryError(f"cannot send {self.describe(topic, key, value, headers)}"
                                    f": {reason}") from None

    def _full(self) -> None:
        """The producer's queue is full: serve its reports so it drains."""
        if self._serve is not None:
            self._serve(0.05)
        else:
            self.producer.poll(0.05)

    def _failed(self, record: Record, err: KafkaError | None, _msg: Message) -> None:
        if err is None:  # (a quiet producer reports failures only)
            return
        try:
            what = self.describe(record[0], record[1], record[2], record[3])
        except Exception:  # never lose the error over its description
            what = f"record to topic {record[0]}"
        with self._cond:
            self._errors.append(f"{what}: {err.str()}")
            self.failures.append((err, record))

    def errors(self) -> list[str]:
        """The failed deliveries reported so far, described (empty: none failed)."""
        with self._cond:
            return list(self._errors)
