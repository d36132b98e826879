"""The execution-log producer: documents keyed by execution id, every delivery checked.

An execution is *done* when its terminal document is acknowledged by the broker (format:
docs/execution-log.md).
:class:`LogBatch` collects the deliveries of one batch of executions; ``wait()`` returns only
when all were acknowledged and raises :class:`DeliveryError` if any failed: a document is
never silently dropped, and the error names the execution and what triggered it. Documents
always fit in a record (``Execution.to_json`` caps them at ``$WAXFLOW_DOC_MAX_BYTES``, default
900,000 bytes, below the producer's 1,000,000-byte ``message.max.bytes``). The topic is
created compacted on first use, with a compaction lag of 7 days so the history of replays
(several runs of one id) stays readable for a week.

Broker outages: the producer is idempotent and holds documents while the broker is away
(up to ``$WAXFLOW_BROKER_GIVE_UP``, default 300 s). A document that fails for want of the
broker (timed out, or the producer hit a fatal error) is sent again once it is back, on a
rebuilt producer when the old one is fatal (:meth:`ExecutionLog.rebuild`); a document the
broker refuses for itself still fails the batch.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from waxflow.connectors import metrics
from waxflow.connectors.deliveries import (
    EXECUTION_HEADER,
    OUTAGE,
    QUIET,
    Deliveries,
    Headers,
    Record,
    client_error,
    give_up_seconds,
    is_outage,
)
from waxflow.connectors.kafka_errors import check_access, raise_if_access
from waxflow.errors import DeliveryError

__all__ = ["LOG_HEADER", "ExecutionLog", "LogBatch", "log_topic"]

DEFAULT_TOPIC = "waxflow.executions"
LOG_HEADER = EXECUTION_HEADER


def log_topic() -> str:
    """``$WAXFLOW_EXECUTION_LOG`` or ``waxflow.executions``."""
    return os.environ.get("WAXFLOW_EXECUTION_LOG", DEFAULT_TOPIC)


def ensure_topic(conf: dict[str, Any], topic: str, partitions: int = 6) -> None:
    """Create the compacted log topic if it does not exist (idempotent, race-safe)."""
    check_access(conf, f"execution log {topic}", write=[topic])
    admin = AdminClient(conf)
    md = admin.list_topics(timeout=15)
    if topic in md.topics and md.topics[topic].error is None:
        return
    fut = admin.create_topics([NewTopic(topic, partitions, 1, config={
        "cleanup.policy": "compact", "min.compaction.lag.ms": str(7 * 24 * 3600 * 1000),
        "segment.ms": str(3600 * 1000)})])[topic]
    try:
        fut.result(timeout=30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise_if_access(exc.args[0], conf, "execution log", name=topic, operation="CREATE")
            raise


class LogBatch(Deliveries):
    """The deliveries of one batch of executions; ``wait`` blocks until all are acknowledged."""

    def __init__(self, log: ExecutionLog) -> None:
        super().__init__(None)
        self._log = log
        self._topic = log.topic

    @property
    def producer(self) -> Producer:
        return self._log.producer  # follows a rebuild after a fatal error

    def _refused(self, err: KafkaError, record: Record) -> bool:
        """A fatal producer refuses every record: rebuild it and send on the new one."""
        if not (err.fatal() or err.code() == KafkaError._FATAL):
            return False
        OUTAGE.down("execution log", err.str())
        if time.monotonic() > OUTAGE.deadline():
            return False
        self._log.rebuild(self._log.producer)
        self.produce(*record[:4], partition=record[4], timestamp=record[5])
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Block until every document is acknowledged. Documents that failed for want of the
        broker are sent again (on a rebuilt producer if it went fatal) until it is back or
        ``$WAXFLOW_BROKER_GIVE_UP`` has passed; any other failure raises at once."""
        deadline = time.monotonic() + (timeout if timeout is not None
                                       else max(120.0, give_up_seconds()))
        while True:
            try:
                super().wait(max(1.0, deadline - time.monotonic()))
                if self.failures:
                    raise DeliveryError("delivery failed")
                OUTAGE.up()
                return
            except DeliveryError:
                failures = self.failures
                if not failures or not all(is_outage(err) for err, _ in failures):
                    raise
                first = failures[0][0]
                OUTAGE.down("execution log", first.str())
                if time.monotonic() > min(deadline, OUTAGE.deadline()):
                    raise
                failures = self.take_failures()
                if any(err.fatal() for err, _ in failures):
                    self._log.rebuild(self._log.producer)
                time.sleep(0.5)
                for rec in failures:
                    record = rec[1]
                    self.produce(*record[:4], partition=record[4], timestamp=record[5])

    def write(self, execution_id: str, document: bytes) -> None:
        """Send one execution document to the log topic."""
        self.produce(self._topic, execution_id.encode(), document)

    def describe(self, topic: str, key: bytes | None, value: bytes | None,
                 headers: Headers | None) -> str:
        """A failed record: an execution document (its id, state and trigger) or, for any
        other record sent through this batch (a DLQ record), what its headers say."""
        if topic != self._topic:
            return super().describe(topic, key, value, headers)
        what = (f"execution document of {(key or b'').decode('utf-8', 'replace')} "
                f"({len(value or b'')} bytes, topic {topic})")
        try:
            doc = json.loads(value or b"")
            trigger = doc.get("trigger") or {}
            if trigger.get("offset") is not None:
                what += (f" for record {trigger.get('topic')}/{trigger.get('partition')}"
                         f"@{trigger.get('offset')}")
            elif trigger.get("offsets"):
                what += f" for batch {trigger.get('offsets')}"
            what += f" in state {doc.get('state')}"
        except (ValueError, AttributeError):
            pass
        return what


class _MeteredProducer(Producer):  # type: ignore[misc]
    """The log producer when metrics are on (``waxflow run --metrics-port``): every record
    goes through it, whichever code path sends it, so it sees each execution's documents: a
    RUNNING one when sent (in flight), a terminal one when the broker acknowledged it (the
    execution is done: :func:`waxflow.connectors.metrics.document_done`); any other record
    it delivers is a DLQ record."""

    def __init__(self, conf: dict[str, Any], topic: str) -> None:
        super().__init__(conf)
        self.log_topic = topic

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        report = kwargs.pop("on_delivery", None) or kwargs.pop("callback", None)
        if topic == self.log_topic:
            value = kwargs.get("value", args[0] if args else None)
            key = kwargs.get("key", args[1] if len(args) > 1 else None)
            if isinstance(value, bytes):
                metrics.document_written(_text(key), value)
        kwargs["on_delivery"] = functools.partial(self._delivered, report)
        super().produce(topic, *args, **kwargs)

    def _delivered(self, report: Any, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            if msg.topic() != self.log_topic:
                metrics.dlq_records(msg.topic() or "")
            else:
                value = msg.value()
                if value is not None and metrics.is_terminal(value):
                    metrics.document_done(_text(msg.key()), value)
        if report is not None:
            report(err, msg)


def _text(key: Any) -> str:
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


class ExecutionLog:
    """One idempotent producer per process for execution documents and DLQ records."""

    def __init__(self, conf: dict[str, Any], topic: str | None = None) -> None:
        self.topic = topic or log_topic()
        ensure_topic(conf, self.topic)
        self._conf = conf
        self._lock = threading.Lock()
        self._retired: list[Producer] = []
        self.producer = self._new_producer()
        #: the quiet producer (:meth:`quiet_producer`), made on first use
        self.quiet: Producer | None = None

    def quiet_producer(self) -> Producer:
        """A second producer of the log that calls Python back only for failed deliveries
        (:data:`~waxflow.connectors.deliveries.QUIET`): its owner learns that documents are
        acknowledged by emptying its queue (``flush``). Never metered: with metrics on, use
        :attr:`producer`."""
        quiet = self.quiet
        if quiet is None:
            with self._lock:
                if self.quiet is None:
                    self.quiet = Producer({**self._producer_conf(), **QUIET})
                quiet = self.quiet
        return quiet

    def _producer_conf(self) -> dict[str, Any]:
        # linger 5 ms (librdkafka's default; was 1): documents go out a batch per ~5 ms, not
        # per ~1 ms. Measured on a 50k at-least-once Produce run: the broker's CPU 1.9-2.1 ->
        # 1.1-1.5 s and the job's 3.5-4.1 -> 3.3-4.0 s, which on 2 cores leaves the job's
        # worker thread more of them; a document reaches the log up to 4 ms later (a
        # snapshot's flush sends at once)
        return {
            "message.timeout.ms": int(max(120.0, give_up_seconds()) * 1000),
            "error_cb": client_error, **self._conf,
            "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            "compression.type": "lz4", "batch.num.messages": 10000,
        }

    def _new_producer(self) -> Producer:
        conf = self._producer_conf()
        return _MeteredProducer(conf, self.topic) if metrics.STATE.enabled else Producer(conf)

    def rebuild(self, old: Producer) -> None:
        """Replace a producer that hit a fatal error (once, whichever batch notices first):
        its undelivered documents fail (purged) and their batches send them again."""
        with self._lock:
            if self.quiet is not None and self.quiet is old:
                self.quiet = Producer({**self._producer_conf(), **QUIET})
            elif self.producer is old:
                self.producer = self._new_producer()
            else:
                return
            self._retired = [*self._retired[-7:], old]  # never destroyed mid-call
        try:
            old.purge(in_queue=True, in_flight=True, blocking=False)
            deadline = time.monotonic() + 5
            while len(old) and time.monotonic() < deadline:
                old.poll(0.1)  # the purged deliveries fail now: their batches resend them
        except (KafkaException, RuntimeError):
            pass

    def batch(self) -> LogBatch:
        return LogBatch(self)

    def close(self) -> None:
        self.producer.flush(30)
        if self.quiet is not None:
            self.quiet.flush(30)
