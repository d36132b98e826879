"""What the benches share: the ~200-byte JSON record, the broker resources one run creates
(deleted at the end), bulk producing of the input, load average and child CPU time, and
the cProfile table of the profile_* scripts."""

from __future__ import annotations

import json
import os
import pstats
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

PARTITIONS = 3
LOG_PARTITIONS = 6


def record(i: int) -> bytes:
    """One ~200-byte JSON record; 3 in 4 are orders, 1 in 4 refunds."""
    doc = {
        "id": i, "type": "refund" if i % 4 == 3 else "order",
        "customer": f"cust-{i % 10007:05d}", "amount": round(10 + (i % 9973) * 0.37, 2),
        "qty": 1 + i % 5, "currency": "EUR", "country": "DE", "sku": f"sku-{i % 997:06d}",
        "ts": "2024-05-01T12:00:00.000Z", "note": "",
    }
    raw = json.dumps(doc, separators=(",", ":"))
    doc["note"] = "x" * max(0, 200 - len(raw))
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Resources:
    """Everything this run created on the broker, deleted at the end."""

    admin: AdminClient
    prefix: str = "bench"
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def name(self, kind: str) -> str:
        return f"{self.prefix}-{kind}-{self.run_id}-{uuid.uuid4().hex[:4]}"

    def group(self, kind: str) -> str:
        g = self.name(f"g-{kind}")
        self.groups.append(g)
        return g

    def create(self, topic: str, partitions: int, config: dict[str, str] | None = None) -> str:
        self.topics.append(topic)
        self.admin.create_topics([NewTopic(topic, partitions, 1, config=config or {})]
                                 )[topic].result(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            md = self.admin.list_topics(topic, timeout=5).topics.get(topic)
            if md and md.error is None and len(md.partitions) == partitions and all(
                    p.leader >= 0 for p in md.partitions.values()):
                return topic
            time.sleep(0.1)
        raise TimeoutError(f"topic {topic} not ready")

    def log_topic(self, kind: str) -> str:
        """An execution-log topic as ``ensure_topic`` creates it, plus LogAppendTime
        timestamps (the job then finds and keeps it)."""
        return self.create(self.name(f"log-{kind}"), LOG_PARTITIONS, {
            "cleanup.policy": "compact", "min.compaction.lag.ms": str(7 * 24 * 3600 * 1000),
            "segment.ms": str(3600 * 1000), "message.timestamp.type": "LogAppendTime"})

    def cleanup(self) -> None:
        if self.topics:
            for t, fut in self.admin.delete_topics(self.topics).items():
                try:
                    fut.result(timeout=30)
                except KafkaException as exc:
                    print(f"  (could not delete topic {t}: {exc})")
        if self.groups:
            for g, fut in self.admin.delete_consumer_groups(self.groups).items():
                try:
                    fut.result(timeout=30)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                        print(f"  (could not delete group {g}: {exc})")


def produce_all(bootstrap: str, topic: str, n: int, *,
                value: Callable[[int], bytes] = record,
                key: Callable[[int], bytes] = lambda i: str(i).encode()) -> float:
    """Produce records 0..n-1 round-robin over the partitions (not timed by the benches:
    the input is in place before anything is measured); returns seconds taken."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4",
                  "batch.num.messages": 10000, "queue.buffering.max.messages": 500000})
    start = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=value(i), key=key(i), partition=i % PARTITIONS)
                break
            except BufferError:
                p.poll(0.01)
        if i % 10000 == 0:
            p.poll(0)
    if p.flush(120) != 0:
        raise RuntimeError("input records not delivered")
    return time.perf_counter() - start


def load() -> str:
    """The 1-minute load average."""
    return f"{os.getloadavg()[0]:.1f}"


def child_cpu() -> float:
    """CPU seconds of every waited-for child process so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def where(key: tuple[str, int, str]) -> str:
    """A cProfile function key as ``path-below-site-packages-or-repo:line(function)``."""
    file, line, func = key
    if file == "~":
        return func
    parts = Path(file).parts
    for anchor in ("site-packages", "main", "python3.11"):
        if anchor in parts:
            idx = len(parts) - 1 - parts[::-1].index(anchor)
            return f"{'/'.join(parts[idx + 1:])}:{line}({func})"
    return f"{file}:{line}({func})"


def table(st: pstats.Stats, total: float, sort: int, top: int, title: str) -> None:
    """Print the ``top`` functions of a profile by column ``sort`` (2 self, 3 cumulative)."""
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][sort], reverse=True)[:top]  # type: ignore[attr-defined]
    print(f"\n{title}")
    print(f"  {'self%':>6} {'cum%':>6} {'self s':>7} {'cum s':>7} {'calls':>9}  function")
    for key, (_cc, nc, tt, ct, _callers) in rows:
        print(f"  {tt / total:6.1%} {ct / total:6.1%} {tt:7.2f} {ct:7.2f} {nc:9,}  {where(key)}")
