"""Peer benchmark: waxflow vs Quix Streams on consume -> add a field -> produce (not a test).

Run: ``.venv/bin/python bench/peers.py [--records 100000] [--repeat 2]
[--guarantee both|exactly-once|at-least-once] [--quix-version 3.28.1]``
against the broker at ``$WAXFLOW_BOOTSTRAP`` (default 127.0.0.1:9092).

The work (issue 16), the same for both, one process each: a backlog of ``--records`` ~200 B
JSON records (``benchkit.record``, key ``str(i)``) on a 3-partition topic, produced *before*
anything is timed; consume each record, add ``total = amount * qty``, produce the JSON with
the input key to a fresh 3-partition output topic.

* **waxflow**: ``waxflow run FLOW -w 1`` of a RealtimeTrigger flow (``valueDeserializer:
  JSON``) whose one task is ``kafka.Produce`` with ``from: {key: "{{ trigger.key }}", value:
  "{{ dict(trigger.value, total=trigger.value.amount * trigger.value.qty) }}"}`` and
  ``valueSerializer: JSON``; ``transactional: true`` is exactly-once (outputs and consumed
  offsets in one transaction per batch), ``false`` at-least-once. Full history on: every
  execution writes its documents to a fresh execution-log topic.
* **Quix Streams** (``bench/peers_quix_app.py``): ``app.dataframe(topic).apply(lambda v:
  {**v, "total": ...}).to_topic(out)`` with ``processing_guarantee`` ``"exactly-once"`` /
  ``"at-least-once"`` (its defaults otherwise: 5 s commit interval). It runs in its own venv,
  ``.waxflow/peers-venv`` (created on demand: its pins may conflict with ours).

How it is measured. Each contender is launched as a child process; this process reads the
output topic (``read_committed``: for exactly-once, an output counts once its transaction
committed) until it holds ``--records`` distinct keys, then sends SIGTERM (both stop
gracefully) and waits. **time** = launch -> all outputs visible (includes start-up, as in the
issue); **rec/s** = records / time; **steady rec/s** = records / (first output seen -> all
seen; exactly-once outputs become visible a whole transaction at a time, Quix's every 5 s
checkpoint, so read it for at-least-once); **CPU** = user + system CPU of the child from its
launch to its exit (getrusage RUSAGE_CHILDREN deltas; includes start-up and shutdown);
**us/rec** = CPU / records. A run whose output lacks a key, or whose values lack the right
``total``, is INVALID and fails the bench (a broken run cannot look fast). Rounds alternate
the order of the contenders; the summary is the median over ``--repeat`` rounds, with the
issue's targets: waxflow CPU per record <= 2x Quix's, throughput >= 50% of Quix's.
``--threads`` adds, per run, the CPU of the child's threads by name (sampled from /proc;
``rdk:*`` are librdkafka's); ``--only`` runs one contender (for profiling).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import benchkit
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

GUARANTEES = ("exactly-once", "at-least-once")
QUIX_VERSION = "3.28.1"
VENV = benchkit.REPO / ".waxflow" / "peers-venv"
QUIX_APP = Path(__file__).resolve().with_name("peers_quix_app.py")
TOTAL = "{{ dict(trigger.value, total=trigger.value.amount * trigger.value.qty) }}"


def flow_yaml(src: str, dst: str, group: str, transactional: bool,
              concurrency: int | None) -> str:
    conc = f"    maxConcurrency: {concurrency}\n" if concurrency is not None else ""
    return f"""\
id: bench-peers
namespace: bench
triggers:
  - id: records
    type: kafka.RealtimeTrigger
    topic: {src}
    groupId: {group}
    valueDeserializer: JSON
{conc}tasks:
  - id: out
    type: kafka.Produce
    topic: {dst}
    transactional: {str(transactional).lower()}
    valueSerializer: JSON
    from:
      key: "{{{{ trigger.key }}}}"
      value: {json.dumps(TOTAL)}
"""


@dataclass
class Watch:
    """What the reader of an output topic saw."""

    distinct: int = 0
    count: int = 0
    bad_values: int = 0
    first_s: float | None = None  # perf_counter when the first output was seen
    all_s: float | None = None    # ... when the last missing key was seen


def expected_total(i: int) -> float:
    doc = json.loads(benchkit.record(i))
    return float(doc["amount"] * doc["qty"])


def watch_output(bootstrap: str, topic: str, n: int, proc: subprocess.Popen[bytes],
                 timeout: float) -> Watch:
    """Read ``topic`` (read_committed) from the beginning until it holds ``n`` distinct keys
    (or the child exits / ``timeout`` passes); every 97th value is checked in full."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-peers-w-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "fetch.wait.max.ms": 50})
    out = Watch()
    keys: set[bytes] = set()
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
        deadline = time.monotonic() + timeout
        while len(keys) < n and time.monotonic() < deadline:
            msgs = c.consume(10000, 0.2)
            now = time.perf_counter()
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"reading {topic}: {err.str()}")
                    continue
                key = m.key() or b""
                out.count += 1
                if key not in keys:
                    keys.add(key)
                    if len(keys) % 97 == 1 or b'"total":' not in (m.value() or b""):
                        doc = json.loads(m.value() or b"null")
                        if not isinstance(doc, dict) or doc.get("total") != expected_total(
                                int(key)):
                            out.bad_values += 1
            if msgs and out.first_s is None:
                out.first_s = now
            if len(keys) >= n:
                out.all_s = now
            elif not msgs and proc.poll() is not None:
                break  # the child is gone: nothing more will come
    finally:
        c.close()
    out.distinct = len(keys)
    return out


@dataclass
class Run:
    who: str          # "waxflow" / "quix"
    guarantee: str
    records: int
    watch: Watch
    time_s: float     # launch -> all outputs visible
    cpu_s: float      # child user + system, launch -> exit
    load: str

    @property
    def valid(self) -> bool:
        return self.watch.distinct == self.records and self.watch.bad_values == 0

    @property
    def rate(self) -> float:
        return self.records / self.time_s

    @property
    def steady(self) -> float:
        w = self.watch
        assert w.first_s is not None and w.all_s is not None
        return self.records / max(1e-3, w.all_s - w.first_s)

    @property
    def us_per_record(self) -> float:
        return self.cpu_s / self.records * 1e6

    def report(self) -> None:
        w = self.watch
        if self.valid:
            dup = f", {w.count - w.distinct:,} duplicates" if w.count > w.distinct else ""
            print(f"    {self.who:8} {self.guarantee:13} {self.time_s:7.2f} s launch->all out "
                  f"= {self.rate:8,.0f} rec/s (steady {self.steady:8,.0f}) | CPU "
                  f"{self.cpu_s:6.2f} s = {self.us_per_record:5.0f} us/rec | load {self.load}"
                  f" | output ok{dup}")
        else:
            print(f"    {self.who:8} {self.guarantee:13} INVALID: {w.distinct:,} distinct keys "
                  f"of {self.records:,} ({w.count:,} records, {w.bad_values} bad values) "
                  f"| load {self.load}")


def print_threads(sampler: benchkit.ThreadCpu, top: int = 8) -> None:
    """The CPU of a child's threads by name (how many, busiest one), from /proc samples."""
    print("      threads: " + ", ".join(
        f"{name} {cpu:.1f}s" + (f" ({n} threads, busiest {most:.1f}s)" if n > 1 else "")
        for name, n, cpu, most in sampler.by_name()[:top] if cpu >= 0.05))


def run_one(who: str, cmd: list[str], env: dict[str, str], bootstrap: str, dst: str,
            guarantee: str, n: int, tmp: Path, timeout: float, threads: bool = False) -> Run:
    """Launch ``cmd``, watch ``dst`` until ``n`` distinct keys, SIGTERM it, wait
    (``threads``: print the CPU of its busiest threads)."""
    load = benchkit.load()
    errf = (tmp / f"{who}-{uuid.uuid4().hex[:6]}.err").open("w+b")
    cpu0 = benchkit.child_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errf)
    sampler = benchkit.ThreadCpu(proc.pid) if threads else None
    try:
        watch = watch_output(bootstrap, dst, n, proc, timeout)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cpu = benchkit.child_cpu() - cpu0
    if sampler is not None:
        sampler.stop()
        print_threads(sampler)
    errf.seek(0)
    tail = errf.read().decode(errors="replace")[-3000:]
    errf.close()
    if rc not in (0, -signal.SIGTERM, 128 + signal.SIGTERM) or watch.all_s is None:
        print(f"    {who} {guarantee}: exit {rc}, {watch.distinct:,}/{n:,} outputs; stderr "
              f"tail:\n{tail}")
    end = watch.all_s if watch.all_s is not None else time.perf_counter()
    return Run(who, guarantee, n, watch, end - t0, cpu, load)


@dataclass
class Bench:
    bootstrap: str
    res: benchkit.Resources
    src: str
    n: int
    tmp: Path
    quix_python: Path
    concurrency: int | None
    timeout: float
    threads: bool = False
    runs: list[Run] = field(default_factory=list)

    def output(self, kind: str) -> str:
        return self.res.create(self.res.name(f"out-{kind}"), benchkit.PARTITIONS)

    def waxflow(self, guarantee: str) -> Run:
        kind = "wax-eo" if guarantee == "exactly-once" else "wax-alo"
        dst, group, log = self.output(kind), self.res.group(kind), self.res.log_topic(kind)
        flow = self.tmp / f"flow-{kind}.yaml"
        flow.write_text(flow_yaml(self.src, dst, group, guarantee == "exactly-once",
                                  self.concurrency))
        # --stop-when-idle only as a safety net: the bench stops it with SIGTERM
        cmd = benchkit.waxflow_cmd(flow, self.timeout, "-w", "1")
        return run_one("waxflow", cmd, benchkit.child_env(self.bootstrap, log), self.bootstrap,
                       dst, guarantee, self.n, self.tmp, self.timeout, self.threads)

    def quix(self, guarantee: str) -> Run:
        kind = "quix-eo" if guarantee == "exactly-once" else "quix-alo"
        dst, group = self.output(kind), self.res.group(kind)
        cmd = [str(self.quix_python), str(QUIX_APP), "--bootstrap", self.bootstrap,
               "--input", self.src, "--output", dst, "--group", group,
               "--guarantee", guarantee]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return run_one("quix", cmd, env, self.bootstrap, dst, guarantee, self.n, self.tmp,
                       self.timeout, self.threads)


def summary(runs: list[Run], guarantees: list[str], rounds: int) -> bool:
    med = statistics.median
    print(f"\nSUMMARY (median of {rounds} round{'s' if rounds > 1 else ''}; targets: waxflow "
          "CPU/record <= 2x Quix, throughput >= 50% of Quix)")
    print(f"  {'guarantee':13} | {'waxflow rec/s':>13} {'us/rec':>6} | {'Quix rec/s':>10} "
          f"{'us/rec':>6} | {'speed wax/Quix':>14} | {'CPU wax/Quix':>12}")
    all_met, compared = True, False
    for g in guarantees:
        wax = [r for r in runs if r.who == "waxflow" and r.guarantee == g]
        qx = [r for r in runs if r.who == "quix" and r.guarantee == g]
        if not wax or not qx:
            continue
        w_rate, q_rate = med(r.rate for r in wax), med(r.rate for r in qx)
        w_cpu, q_cpu = med(r.us_per_record for r in wax), med(r.us_per_record for r in qx)
        speed = med(w.rate / q.rate for w, q in zip(wax, qx, strict=True))
        cpu = med(w.us_per_record / q.us_per_record for w, q in zip(wax, qx, strict=True))
        compared = True
        all_met = all_met and speed >= 0.5 and cpu <= 2.0
        print(f"  {g:13} | {w_rate:13,.0f} {w_cpu:6.0f} | {q_rate:10,.0f} {q_cpu:6.0f} | "
              f"{speed:5.2f} [{benchkit.verdict(speed >= 0.5):7}] | {cpu:5.1f}x "
              f"[{benchkit.verdict(cpu <= 2.0)}]")
        pairs = list(zip(wax, qx, strict=True))
        print(f"  {'':13}   steady (first->all out) rec/s: waxflow "
              f"{med(r.steady for r in wax):,.0f}, Quix {med(r.steady for r in qx):,.0f}; "
              f"per round: speed {', '.join(f'{w.rate / q.rate:.2f}' for w, q in pairs)}, "
              f"CPU {', '.join(f'{w.us_per_record / q.us_per_record:.1f}x' for w, q in pairs)}")
    return all_met and compared


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2, help="rounds (contenders alternate)")
    ap.add_argument("--guarantee", choices=("both", *GUARANTEES), default="both")
    ap.add_argument("--quix-version", default=QUIX_VERSION)
    ap.add_argument("--concurrency", type=int, default=None,
                    help="the trigger's maxConcurrency (default: the flow's default)")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds one contender may take to produce every output")
    ap.add_argument("--threads", action="store_true",
                    help="also print each child's busiest threads (CPU s, sampled from /proc)")
    ap.add_argument("--only", choices=("waxflow", "quix"), default=None,
                    help="run one contender only (no ratios; for profiling)")
    benchkit.add_bootstrap(ap)
    args = ap.parse_args()
    n = args.records
    guarantees = list(GUARANTEES) if args.guarantee == "both" else [args.guarantee]
    quix_python = benchkit.ensure_venv(VENV, f"quixstreams=={args.quix_version}", "quixstreams",
                                       args.quix_version)
    res = benchkit.Resources(AdminClient({"bootstrap.servers": args.bootstrap}), "bench-peers")
    print(f"peers bench: {n:,} records x ~{len(benchkit.record(12345))} B, "
          f"{benchkit.PARTITIONS} partitions, broker {args.bootstrap}, {os.cpu_count()} CPUs, "
          f"Quix Streams {args.quix_version}, run {res.run_id}, load {benchkit.load()}")
    with benchkit.scratch(res, "waxflow-bench-peers-", announce=True) as tmp:
        src = res.create(res.name("in"), benchkit.PARTITIONS)
        took = benchkit.produce_all(args.bootstrap, src, n)
        print(f"  produced {n:,} records to {src} in {took:.1f} s")
        bench = Bench(args.bootstrap, res, src, n, tmp, quix_python, args.concurrency,
                      args.timeout, args.threads)
        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat} (load {benchkit.load()})")
            for g in guarantees:
                order = (bench.waxflow, bench.quix) if r % 2 == 0 else (bench.quix, bench.waxflow)
                for contender in order:
                    if args.only is not None and contender.__name__ != args.only:
                        continue
                    run = contender(g)
                    run.report()
                    bench.runs.append(run)
    valid = all(r.valid for r in bench.runs)
    met = summary([r for r in bench.runs if r.valid], guarantees, args.repeat) if valid else False
    print(f"  every output complete and correct: {'yes' if valid else 'NO'}")
    print(f"  load average at the end: {benchkit.load()} (1 min) on {os.cpu_count()} CPUs; "
          "other processes on the machine skew the absolute numbers, the ratios less")
    print(f"  targets: {'all met' if met else 'NOT all met'}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
