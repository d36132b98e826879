"""Small AdminClient/consumer helpers for tests against the real broker."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from waxflow.connectors.broker import LocalBroker


def create_topic(admin: AdminClient, name: str, partitions: int = 1,
                 config: dict[str, str] | None = None) -> None:
    """Create a topic and wait until its metadata shows every partition with a leader."""
    fut = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name]
    fut.result(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(name, timeout=5).topics.get(name)
        except KafkaException:  # a loaded, freshly started broker can be slow to answer
            continue
        if md and md.error is None and len(md.partitions) == partitions and all(
            p.leader >= 0 for p in md.partitions.values()
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {name} not ready")


_NOT_READY = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT}


def high_watermark(c: Consumer, tp: TopicPartition, *, timeout: float = 30.0) -> int:
    """The partition's end offset (the last stable offset for a read_committed consumer),
    asked of its leader. A topic the job under test has just created can answer "not leader"
    until its leadership is known everywhere; that is retried for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(c.get_watermark_offsets(tp, timeout=10, cached=False)[1])
        except KafkaException as e:
            if e.args[0].code() not in _NOT_READY or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_all(bootstrap: str, topic: str, *, isolation: str = "read_uncommitted",
             timeout: float = 30.0, extra: dict[str, Any] | None = None) -> list[Message]:
    """Every record of ``topic`` from the beginning up to the end offsets seen at the start."""
    conf = {"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "isolation.level": isolation,
            "enable.partition.eof": True, **(extra or {})}
    c = Consumer(conf)
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p, 0) for p in md.partitions]
        ends = {tp.partition: high_watermark(c, tp) for tp in parts}
        todo = {p for p, end in ends.items() if end > 0}
        c.assign(parts)
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    todo.discard(m.partition())
                    continue
                raise RuntimeError(str(m.error()))
            out.append(m)
            if m.offset() + 1 >= ends[m.partition()]:
                todo.discard(m.partition())
        if todo:
            raise TimeoutError(f"did not reach the end of {topic} partitions {sorted(todo)}")
        return out
    finally:
        c.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets per partition (-1001 when none); retries while the group
    coordinator loads (NOT_COORDINATOR right after a broker restart is normal)."""
    from waxflow.connectors.kafka_source import committed_offsets

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = committed_offsets(c, [TopicPartition(topic, p) for p in range(partitions)],
                                timeout=60)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "end-offsets"})
    try:
        return {p: high_watermark(c, TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        c.close()


def lso_hwm(bootstrap: str, topic: str, parts: int) -> tuple[dict[int, int], dict[int, int]]:
    """(last stable offsets, high watermarks) per partition: equal unless a transaction is
    left open."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                  "isolation.level": "read_committed"})
    try:
        hwm = end_offsets(bootstrap, topic, parts)
        lso = {p: high_watermark(c, TopicPartition(topic, p)) for p in range(parts)}
        return lso, hwm
    finally:
        c.close()


def kill_hard(broker: LocalBroker) -> None:
    """SIGKILL a test's own broker (no clean shutdown: open transactions, unflushed state)."""
    pid = broker.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while broker.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not broker.running()


class Feeder(threading.Thread):
    """Produces ``n`` records keyed ``k<i>`` at ``rate``/s round-robin over ``parts``
    partitions (fewer when :meth:`stop` is called: ``sent`` says how many); keeps buffering
    while the broker is down (idempotent, long delivery timeout), so every record lands
    exactly once."""

    def __init__(self, bootstrap: str, topic: str, n: int, rate: int = 1000, parts: int = 3,
                 value: Callable[[int], bytes] = lambda i: f"v{i}".encode()) -> None:
        super().__init__(daemon=True)
        self.topic, self.n, self.rate, self.parts, self.value = topic, n, rate, parts, value
        self.p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                           "linger.ms": 5, "message.timeout.ms": 300000})
        self.failed: list[str] = []
        self.sent = 0
        self._halt = threading.Event()

    def _report(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failed.append(str(err))

    def run(self) -> None:
        t0 = time.monotonic()
        for i in range(self.n):
            if self._halt.is_set():
                break
            while True:
                try:
                    self.p.produce(self.topic, key=f"k{i}".encode(), value=self.value(i),
                                   partition=i % self.parts, on_delivery=self._report)
                    break
                except BufferError:
                    self.p.poll(0.1)
            self.sent = i + 1
            self.p.poll(0)
            ahead = (i + 1) / self.rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        self.p.flush(300)

    def stop(self) -> None:
        """Produce no more records (those sent are still delivered)."""
        self._halt.set()

    def finish(self) -> None:
        """Wait until every record is delivered (fails on any delivery error)."""
        self.join(timeout=330)
        assert not self.is_alive(), "feeder did not finish"
        # (once, after a broker SIGKILL under load, the thread's flush returned with records
        # still counted: flush again, which serves their delivery reports)
        left = self.p.flush(60)
        assert not self.failed, self.failed[:3]
        assert left == 0, f"{left} records not delivered"
