"""Small AdminClient/consumer helpers for tests against the real broker."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create_topic(admin: AdminClient, name: str, partitions: int = 1,
                 config: dict[str, str] | None = None) -> None:
    """Create a topic and wait until its metadata shows every partition with a leader."""
    fut = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name]
    fut.result(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=5).topics.get(name)
        if md and md.error is None and len(md.partitions) == partitions and all(
            p.leader >= 0 for p in md.partitions.values()
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {name} not ready")


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
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                for tp in parts}
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
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                           cached=False)[1] for p in range(partitions)}
    finally:
        c.close()
