"""Checked deliveries: produce records and wait until the broker acknowledged every one.

A :class:`Deliveries` counts what it sent through one confluent-kafka ``Producer``;
``wait()`` polls until each delivery report arrived and raises :class:`DeliveryError` if any
failed. Nothing is ever dropped silently, and a failure names the record: its topic, and the
execution it belongs to (header ``waxflow.execution.id``) or the record it stands for (a DLQ
record's ``waxflow.source.*`` headers), else its key (:meth:`Deliveries.describe`, which
subclasses refine; it runs only on failure). Thread-safe: several threads may produce into one
tracker, and several trackers may share one producer (``poll`` serves every tracker's
callbacks, each of which only touches its own counters).
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from waxflow.errors import DeliveryError

#: header naming the execution a record belongs to (also the execution log's, LOG_HEADER)
EXECUTION_HEADER = "waxflow.execution.id"
_SOURCE_HEADERS = ("waxflow.source.topic", "waxflow.source.partition", "waxflow.source.offset")
Headers = list[tuple[str, str | bytes | None]]


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

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.sent = 0
        self._pending = 0
        self._errors: list[str] = []
        self._cond = threading.Condition()

    def describe(self, topic: str, key: bytes | None, value: bytes | None,
                 headers: Headers | None) -> str:
        """What a record that failed is, for the error message (called only on failure)."""
        return describe_record(topic, key, len(value) if value is not None else None, headers)

    def _on_delivery(self, err: KafkaError | None, msg: Message,
                     headers: Headers | None = None) -> None:
        what = None
        if err is not None:
            try:
                what = self.describe(msg.topic() or "?", msg.key(), msg.value(), headers)
            except Exception:  # never lose the error over its description
                what = f"record to topic {msg.topic()}"
        with self._cond:
            self._pending -= 1
            if err is not None:
                self._errors.append(f"{what}: {err.str()}")
            self._cond.notify_all()

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
        # a delivery report carries no headers: a record with some keeps them for the error
        report = (self._on_delivery if not headers
                  else functools.partial(self._on_delivery, headers=headers))
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
                with self._cond:
                    self._pending -= 1
                    self.sent -= 1
                if isinstance(exc, KafkaException):
                    err = exc.args[0] if exc.args else exc
                    reason = err.str() if isinstance(err, KafkaError) else str(err)
                    raise DeliveryError(f"cannot send {self.describe(topic, key, value, headers)}"
                                        f": {reason}") from None
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
            more = f" (and {len(self._errors) - 5} more)" if len(self._errors) > 5 else ""
            raise DeliveryError("delivery failed: " + "; ".join(self._errors[:5]) + more)
