"""``send_offsets`` bounds librdkafka's ``send_offsets_to_transaction``, which can block past
its own timeout after a broker restart (librdkafka #5456/#5511): a call that does not
return in time becomes a retriable ``_TIMED_OUT`` the batch's commit treats as an outage."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from waxflow.connectors import kafka_output
from waxflow.connectors.deliveries import is_outage


class _Producer:
    """Stands in for the stuck client: the call blocks until released."""

    def __init__(self, block: bool, error: KafkaError | None = None) -> None:
        self.release = threading.Event()
        self.block, self.error, self.calls = block, error, 0

    def send_offsets_to_transaction(self, tps: Any, group: Any, timeout: float) -> None:
        self.calls += 1
        if self.block:
            self.release.wait()
        if self.error is not None:
            raise KafkaException(self.error)


TPS = [TopicPartition("t", 0, 5)]


def test_a_call_that_returns_passes_through() -> None:
    producer = _Producer(block=False)
    kafka_output.send_offsets(producer, TPS, None, 1.0)  # type: ignore[arg-type]
    assert producer.calls == 1


def test_its_own_error_reaches_the_caller() -> None:
    producer = _Producer(block=False, error=KafkaError(KafkaError._FENCED))
    with pytest.raises(KafkaException) as info:
        kafka_output.send_offsets(producer, TPS, None, 1.0)  # type: ignore[arg-type]
    assert info.value.args[0].code() == KafkaError._FENCED


def test_a_stuck_call_becomes_a_retriable_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_output, "STUCK_GRACE", 0.2)
    producer = _Producer(block=True)
    started = time.monotonic()
    try:
        with pytest.raises(KafkaException) as info:
            kafka_output.send_offsets(producer, TPS, None, 0.3)  # type: ignore[arg-type]
    finally:
        producer.release.set()
    err = info.value.args[0]
    assert err.code() == KafkaError._TIMED_OUT and err.retriable()
    assert is_outage(err)  # so BatchScope.commit redoes the transaction on a new producer
    assert time.monotonic() - started < 5
