"""``kafka.Produce`` benchmark: transactional, non-transactional, raw confluent-kafka (not a test).

Run: ``.venv/bin/python bench/produce.py [--records 100000] [--workers 1] [--concurrency 64]
[--repeat 1]``
against the broker at ``$WAXFLOW_BOOTSTRAP`` (default 127.0.0.1:9092).

``--records`` keyed JSON records of ~200 bytes are produced to a 3-partition input topic
*before* anything is timed. Then, each on its own fresh output topic, consumer group and
execution-log topic (all deleted at the end):

1. **waxflow, transactional** (the default, G3): ``waxflow run FLOW --stop-when-idle 2`` of a
   flow whose one task is ``kafka.Produce`` with ``from: {key: "{{ trigger.key }}", value:
   "{{ trigger.value }}"}`` (STRING serdes: the output bytes equal the input bytes). The
   records of a batch and its consumed offsets commit in one Kafka transaction.
2. **waxflow, non-transactional**: the same flow with ``transactional: false`` (shared
   idempotent producer, at-least-once).
3. **raw producer loop**: this process produces the same (key, value) pairs, with a header of
   the same size as ``waxflow.execution.id``, through one idempotent ``Producer`` with the
   settings of waxflow's own (``acks=all``, ``linger.ms=5``), then ``flush()``; every delivery
   report checked. No consuming: the ceiling of the producing half alone. Its rate is taken
   over its own wall time (first ``produce()`` to ``flush()`` returned): librdkafka queues
   faster than the broker appends, so its append-time span would be a burst of a few ms.
4. **raw consume→produce, transactional** (reference): a confluent-kafka loop that consumes the
   input in batches of 500, produces each record, ``send_offsets_to_transaction`` and commits
   per batch: the same exactly-once work as (1) without the engine, templates and log.

How time is taken. Each output topic is created with ``message.timestamp.type=LogAppendTime``,
so every output record carries the broker's append time. **records/s = records / (append time
of the last output record - append time of the first)**: the steady producing rate, which
excludes process start-up (interpreter, Bytewax, consumer group join) and the idle wait of
``--stop-when-idle`` (the raw producer loop is the exception, see 3). Also printed: wall time
of the run, and wall minus the idle wait (which still includes start-up and the final
commit/close, so it understates the rate). Every output topic is read back
(``read_committed``) and must hold exactly ``--records`` distinct records: a rate over lost
or duplicated records is flagged INVALID. For a transactional run the append time is when the
record reached the log, before its transaction commits; the last commit follows within one
epoch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

IDLE = 2.0
HEADER = ("waxflow.execution.id", b"0" * 32)


def record(i: int) -> bytes:
    """One ~200-byte JSON record (all orders, no country: not ``benchkit.record``)."""
    return benchkit.padded({"id": i, "type": "order", "customer": f"cust-{i % 10007:05d}",
                            "amount": round(10 + (i % 9973) * 0.37, 2), "qty": 1 + i % 5,
                            "currency": "EUR", "sku": f"sku-{i % 997:06d}",
                            "ts": "2024-05-01T12:00:00.000Z", "note": ""})


def flow_yaml(src: str, dst: str, group: str, transactional: bool, concurrency: int) -> str:
    return f"""\
id: bench-produce
namespace: bench
triggers:
  - id: records
    type: kafka.RealtimeTrigger
    topic: {src}
    groupId: {group}
    maxConcurrency: {concurrency}
tasks:
  - id: out
    type: kafka.Produce
    topic: {dst}
    transactional: {str(transactional).lower()}
    from:
      key: "{{{{ trigger.key }}}}"
      value: "{{{{ trigger.value }}}}"
"""


def output_topic(res: benchkit.Resources, kind: str) -> str:
    """A fresh output topic whose records carry the broker's append time."""
    return res.create(res.name(f"out-{kind}"), benchkit.PARTITIONS,
                      {"message.timestamp.type": "LogAppendTime"})


def produce_input(bootstrap: str, topic: str, n: int) -> None:
    benchkit.produce_all(bootstrap, topic, n, value=record, key=lambda i: f"k{i}".encode())


@dataclass
class Scan:
    count: int = 0
    distinct: int = 0
    first_ms: int = 0
    last_ms: int = 0


def scan_output(bootstrap: str, topic: str) -> Scan:
    """Read ``topic`` (read_committed) to its end: count, distinct keys, append-time span."""
    keys: set[bytes] = set()
    out = Scan()
    first: int | None = None
    last: int | None = None
    for m in benchkit.read_to_end(bootstrap, topic, isolation="read_committed"):
        ts = m.timestamp()[1]
        first = ts if first is None else min(first, ts)
        last = ts if last is None else max(last, ts)
        out.count += 1
        keys.add(m.key() or b"")
    out.distinct = len(keys)
    out.first_ms, out.last_ms = first or 0, last or 0
    return out


@dataclass
class Result:
    name: str
    records: int
    scan: Scan
    wall: float
    idle: float = 0.0
    cpu: float | None = None
    basis: str = "append"  # "append": first->last output append time; "wall": the loop's time

    @property
    def span(self) -> float:
        if self.basis == "wall":
            return self.wall
        return max(self.scan.last_ms - self.scan.first_ms, 1) / 1000

    @property
    def rate(self) -> float:
        return self.records / self.span

    @property
    def valid(self) -> bool:
        return self.scan.count == self.scan.distinct == self.records

    def report(self) -> None:
        ok = "ok" if self.valid else (f"INVALID: {self.scan.count} records, "
                                      f"{self.scan.distinct} distinct, want {self.records}")
        busy = self.wall - self.idle
        cpu = f", child CPU {self.cpu:.1f}s" if self.cpu is not None else ""
        basis = ("first->last output append" if self.basis == "append"
                 else "first produce() -> flush() done")
        print(f"  {self.name:<36} {self.rate:>8,.0f} records/s over {self.span:6.2f}s "
              f"({basis}) | wall {self.wall:6.2f}s, wall-idle {busy:6.2f}s "
              f"= {self.records / busy:,.0f}/s{cpu} | output {ok}")


def run_waxflow(res: benchkit.Resources, bootstrap: str, src: str, n: int, tmp: Path,
                transactional: bool, workers: int, concurrency: int) -> Result:
    kind = "txn" if transactional else "plain"
    dst, group, log = output_topic(res, kind), res.group(kind), res.name(f"log-{kind}")
    res.topics.append(log)  # created by the job (ensure_topic); deleted at the end
    flow = tmp / f"flow-{kind}.yaml"
    flow.write_text(flow_yaml(src, dst, group, transactional, concurrency))
    run = benchkit.run_child(benchkit.waxflow_cmd(flow, IDLE, "-w", str(workers)),
                             benchkit.child_env(bootstrap, log), timeout=1800, name="waxflow run")
    return Result(f"waxflow Produce {'transactional' if transactional else 'non-transactional'}",
                  n, scan_output(bootstrap, dst), run.wall, IDLE, run.cpu)


def run_raw_producer(res: benchkit.Resources, bootstrap: str, n: int) -> Result:
    dst = output_topic(res, "raw")
    pairs = [(f"k{i}".encode(), record(i)) for i in range(n)]
    errors: list[str] = []

    def report(err: Any, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5})
    cpu0 = time.process_time()
    t0 = time.monotonic()
    for i, (key, value) in enumerate(pairs):
        while True:
            try:
                p.produce(dst, value=value, key=key, headers=[HEADER], on_delivery=report)
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    if p.flush(120) != 0 or errors:
        raise RuntimeError(f"raw producer: undelivered records ({errors[:3]})")
    wall = time.monotonic() - t0
    return Result("raw confluent-kafka producer loop", n, scan_output(bootstrap, dst), wall,
                  0.0, time.process_time() - cpu0, basis="wall")


def run_raw_consume_produce(res: benchkit.Resources, bootstrap: str, src: str, n: int) -> Result:
    dst, group = output_topic(res, "rawtxn"), res.group("rawtxn")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "transactional.id": f"bench-raw-{res.run_id}"})
    producer.init_transactions(60)
    consumer.subscribe([src])
    errors: list[str] = []

    def report(err: Any, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    cpu0 = time.process_time()
    t0 = time.monotonic()
    done = 0
    last_seen = time.monotonic()
    while done < n and time.monotonic() - last_seen < 30:
        msgs = [m for m in consumer.consume(500, 0.5) if m.error() is None]
        if not msgs:
            continue
        last_seen = time.monotonic()
        producer.begin_transaction()
        ends: dict[int, int] = {}
        for m in msgs:
            while True:
                try:
                    producer.produce(dst, value=m.value(), key=m.key(), headers=[HEADER],
                                     on_delivery=report)
                    break
                except BufferError:
                    producer.poll(0.01)
            part, off = int(m.partition() or 0), int(m.offset() or 0)
            ends[part] = max(ends.get(part, 0), off + 1)
        producer.send_offsets_to_transaction(
            [TopicPartition(src, p, o) for p, o in ends.items()],
            consumer.consumer_group_metadata(), 60)
        producer.commit_transaction(60)
        done += len(msgs)
    wall = time.monotonic() - t0
    consumer.close()
    if errors:
        raise RuntimeError(f"raw consume->produce: failed deliveries ({errors[:3]})")
    return Result("raw consume->produce, transactional", n, scan_output(bootstrap, dst), wall,
                  0.0, time.process_time() - cpu0)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=1, help="waxflow worker threads")
    ap.add_argument("--concurrency", type=int, default=64,
                    help="the trigger's maxConcurrency (executions in flight per worker)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of all four contenders")
    benchkit.add_bootstrap(ap)
    args = ap.parse_args()
    n = args.records
    res = benchkit.Resources(AdminClient({"bootstrap.servers": args.bootstrap}), "bench-produce")
    print(f"kafka.Produce bench: {n:,} records x ~{len(record(12345))} B, {benchkit.PARTITIONS} "
          f"partitions, broker {args.bootstrap}, {os.cpu_count()} CPUs, waxflow -w "
          f"{args.workers}, maxConcurrency {args.concurrency}, run {res.run_id}")
    rounds: list[dict[str, Result]] = []
    with benchkit.scratch(res, "waxflow-bench-produce-", announce=True) as tmp:
        src = res.create(res.name("in"), benchkit.PARTITIONS)
        produce_input(args.bootstrap, src, n)
        for r in range(args.repeat):
            if args.repeat > 1:
                print(f"round {r + 1}/{args.repeat} (load {benchkit.load()})")
            results = {
                "txn": run_waxflow(res, args.bootstrap, src, n, tmp, True, args.workers,
                                   args.concurrency),
                "plain": run_waxflow(res, args.bootstrap, src, n, tmp, False, args.workers,
                                     args.concurrency),
                "raw": run_raw_producer(res, args.bootstrap, n),
                "rawtxn": run_raw_consume_produce(res, args.bootstrap, src, n),
            }
            for result in results.values():
                result.report()
            rounds.append(results)

    def med(kind: str) -> float:
        return statistics.median(r[kind].rate for r in rounds)

    txn, plain, raw, rawtxn = med("txn"), med("plain"), med("raw"), med("rawtxn")
    valid = all(res_.valid for r in rounds for res_ in r.values())
    note = f" (median of {len(rounds)} rounds)" if len(rounds) > 1 else ""
    print(f"\nSUMMARY records/s{note}: transactional {txn:,.0f} | non-transactional "
          f"{plain:,.0f} | raw producer {raw:,.0f} | raw consume->produce txn {rawtxn:,.0f}")
    print(f"  transactional / non-transactional     = {txn / plain:.2f}")
    print(f"  transactional / raw producer          = {txn / raw:.3f}")
    print(f"  non-transactional / raw producer      = {plain / raw:.3f}")
    print(f"  transactional / raw consume->produce  = {txn / rawtxn:.3f}")
    print(f"  every output complete, no duplicates: {'yes' if valid else 'NO'}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
