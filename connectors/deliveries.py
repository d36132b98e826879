"""Checked deliveries: produce records and wait until the broker acknowledged every one.

A :class:`Deliveries` counts what it sent through one confluent-kafka ``Producer``;
``wait()`` polls until each delivery report arrived and raises :class:`DeliveryError` if any
failed. Nothing is ever dropped silently. Thread-safe: several threads may produce into one
tracker, and several trackers may share one producer (``poll`` serves every tracker's
callbacks, each of which only touches its own counters).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from waxflow.errors import DeliveryError


class Deliveries:
    """The deliveries of one unit of work (a batch, a task run)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.sent = 0
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
                headers: list[tuple[str, str | bytes | None]] | None = None,
                *, partition: int | None = None,
                timestamp: int | None = None) -> None:
        """Send one record; its delivery report is awaited by :meth:`wait`."""
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        with self._cond:
            self._pending += 1
            self.sent += 1
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,
                                      on_delivery=self._on_delivery, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)
            except Exception:
                with self._cond:
                    self._pending -= 1
                    self.sent -= 1
                raise

    def wait(self, timeout: float = 120.0) -> None:
        """Block until every delivery is acknowledged; raise if one failed or timed out."""
        deadline = time.monotonic() + timeout
        while True:
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
            raise DeliveryError("delivery failed: " + "; ".join(self._errors[:5]))
