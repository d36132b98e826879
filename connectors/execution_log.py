"""The execution-log producer: documents keyed by execution id, every delivery checked.

An execution is *done* when its terminal document is acknowledged by the broker (DESIGN §3).
:class:`LogBatch` collects the deliveries of one batch of executions; ``wait()`` returns only
when all were acknowledged and raises :class:`DeliveryError` if any failed: a document is
never silently dropped. The topic is created compacted on first use, with a compaction lag
of 7 days so the history of replays (several runs of one id) stays readable for a week.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

DEFAULT_TOPIC = "waxflow.executions"
LOG_HEADER = "waxflow.execution.id"


def log_topic() -> str:
    """``$WAXFLOW_EXECUTION_LOG`` or ``waxflow.executions``."""
    return os.environ.get("WAXFLOW_EXECUTION_LOG", DEFAULT_TOPIC)


class DeliveryError(RuntimeError):
    """The broker did not acknowledge a document or record; the batch is not done."""


def ensure_topic(conf: dict[str, Any], topic: str, partitions: int = 6) -> None:
    """Create the compacted log topic if it does not exist (idempotent, race-safe)."""
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
            raise


class LogBatch:
    """The deliveries of one batch; ``wait`` blocks until every one was acknowledged."""

    def __init__(self, log: ExecutionLog) -> None:
        self._log = log
        self._pending = 0
        self._errors: list[str] = []
        self._cond = threading.Condition()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._cond:
            self._pending -= 1
            if err is not None:
                self._errors.append(f"{msg.topic()}: {err.str()}")
            self._cond.notify_all()

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        with self._cond:
            self._pending += 1
        self._log.produce(topic, key, value, headers, self._on_delivery)

    def write(self, execution_id: str, document: bytes) -> None:
        """Send one execution document to the log topic."""
        self.produce(self._log.topic, execution_id.encode(), document)

    def wait(self, timeout: float = 120.0) -> None:
        """Block until every delivery of this batch is acknowledged; raise if one failed."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if self._pending <= 0:
                    break
            if time.monotonic() > deadline:
                raise DeliveryError(f"{self._pending} deliveries unacknowledged after "
                                    f"{timeout:.0f}s")
            self._log.producer.poll(0.05)
        if self._errors:
            raise DeliveryError("delivery failed: " + "; ".join(self._errors[:5]))


class ExecutionLog:
    """One idempotent producer per process for execution documents and DLQ records."""

    def __init__(self, conf: dict[str, Any], topic: str | None = None) -> None:
        self.topic = topic or log_topic()
        ensure_topic(conf, self.topic)
        self.producer = Producer({
            **conf, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            "compression.type": "lz4", "batch.num.messages": 10000,
        })

    def batch(self) -> LogBatch:
        return LogBatch(self)

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]] | None, callback: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key,
                                      headers=headers,  # type: ignore[arg-type]
                                      on_delivery=callback)
                return
            except BufferError:
                self.producer.poll(0.05)

    def close(self) -> None:
        self.producer.flush(30)
