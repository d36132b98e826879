"""Quiet deliveries (a producer that calls Python back only for failures), the settle hook
the source calls before its commit point, and the pipeline's GC threshold.

Real librdkafka producers, no broker: a producer pointed at a closed port fails its record
after ``message.timeout.ms``, which is the failure a quiet producer must still report.
"""

from __future__ import annotations

import gc
import socket

from confluent_kafka import KafkaError, Producer

from waxflow.connectors.deliveries import EXECUTION_HEADER, QUIET, QuietDeliveries
from waxflow.operators.pipeline import GC_GEN0, tune_gc
from waxflow.progress import Progress


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_quiet_producer_reports_a_failed_record_naming_its_execution() -> None:
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{closed_port()}",
                         "message.timeout.ms": 300, "socket.connection.setup.timeout.ms": 1000,
                         "log_level": 0, **QUIET})
    deliveries = QuietDeliveries(producer)
    deliveries.produce("t-out", b"k", b"v", [(EXECUTION_HEADER, b"exec-1")])
    assert deliveries.sent == 1
    assert deliveries.errors() == []  # nothing reported before its timeout
    assert producer.flush(10) == 0  # the queue empties: the failure has been served
    assert [err.code() for err, _ in deliveries.failures] == [KafkaError._MSG_TIMED_OUT]
    (error,) = deliveries.errors()
    assert "record to topic t-out" in error and "of execution exec-1" in error


def test_a_full_queue_is_served_through_the_owner() -> None:
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{closed_port()}",
                         "message.timeout.ms": 200, "queue.buffering.max.messages": 1,
                         "log_level": 0, **QUIET})
    served: list[float] = []

    def serve(timeout: float) -> None:
        served.append(timeout)
        producer.poll(timeout)

    deliveries = QuietDeliveries(producer, serve=serve)
    deliveries.produce("t-out", b"1", b"v")
    deliveries.produce("t-out", b"2", b"v")  # waits for the first to fail and leave
    assert served and deliveries.sent == 2
    producer.flush(10)
    assert len(deliveries.failures) == 2


def test_the_settle_hook_runs_before_a_commit_point_is_taken() -> None:
    progress = Progress()
    progress.settle_point()  # no pipeline: nothing to do
    calls: list[str] = []
    progress.settle = lambda: calls.append("settle")
    progress.settle_point()
    assert calls == ["settle"]


def test_the_pipeline_raises_the_young_gc_threshold_and_never_lowers_one() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0, 10, 10)
        gc.set_threshold(GC_GEN0 * 2, 5, 5)
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0 * 2, 5, 5)
    finally:
        gc.set_threshold(*before)
