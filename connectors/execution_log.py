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
"""

from __future__ import annotations

import json
import os
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from waxflow.connectors.deliveries import EXECUTION_HEADER, Deliveries, Headers

__all__ = ["LOG_HEADER", "ExecutionLog", "LogBatch", "log_topic"]

DEFAULT_TOPIC = "waxflow.executions"
LOG_HEADER = EXECUTION_HEADER


def log_topic() -> str:
    """``$WAXFLOW_EXECUTION_LOG`` or ``waxflow.executions``."""
    return os.environ.get("WAXFLOW_EXECUTION_LOG", DEFAULT_TOPIC)


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


class LogBatch(Deliveries):
    """The deliveries of one batch of executions; ``wait`` blocks until all are acknowledged."""

    def __init__(self, log: ExecutionLog) -> None:
        super().__init__(log.producer)
        self._topic = log.topic

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


class ExecutionLog:
    """One idempotent producer per process for execution documents and DLQ records."""

    def __init__(self, conf: dict[str, Any], topic: str | None = None) -> None:
        self.topic = topic or log_topic()
        ensure_topic(conf, self.topic)
        self.producer = Producer({
            **conf, "enable.idempotence": True, "acks": "all", "linger.ms": 1,
            "compression.type": "lz4", "batch.num.messages": 10000,
        })

    def batch(self) -> LogBatch:
        return LogBatch(self)

    def close(self) -> None:
        self.producer.flush(30)
