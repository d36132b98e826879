"""Scale-out benchmark: ``waxflow run --processes 2`` vs one process (not a test).

Run: ``.venv/bin/python bench/scale.py [--records 200000] [--repeat 2] [--partitions 3]
[--independent] [--cluster-of-one] [--threads]`` against the broker at ``$WAXFLOW_BOOTSTRAP``
(default 127.0.0.1:9092); the defaults take about 3 minutes on an idle 2-core machine.

The work: the CPU-bound realtime flow of ``bench/realtime.py`` (``core.Switch`` on
``{{ trigger.value.type }}``, each case a ``core.Set`` of two templates; no produce: the
executions are pipelined) over a backlog of ``--records`` ~200 B JSON records
(``benchkit.record``) on a ``--partitions``-partition topic (default 3, as in issue 16),
produced *before* anything is timed. Each run reads it with a fresh consumer group into a
fresh execution-log topic. Contenders, alternating in order every round:

* **1 process**: ``waxflow run FLOW --stop-when-idle 2 -w 1``;
* **--processes 2**: ``waxflow run FLOW --stop-when-idle 2 --processes 2``: for a realtime
  flow the launcher (which checks the flow and holds its instance lock) starts two
  independent processes, process *i* reading every 2nd partition from *i*
  (``$WAXFLOW_PARTITION_SHARE``); nothing crosses processes. With 3 partitions one process
  has 2 of them, so the best possible speed-up is 1.5x (printed as "ideal");
* with ``--cluster-of-one``, **1-member cluster**: ``waxflow run FLOW --addresses
  127.0.0.1:PORT --process-id 0``: one process as a 1-member Bytewax cluster
  (``cluster_main``: the worker on its own thread) instead of ``run_main``;
* with ``--independent``, **2 independent**: two ``waxflow run -w 1`` of the same flow
  started by this script, each with its own consumer group and a ``partitions:`` list
  (first process the larger share): what ``--processes 2`` does, without its launcher.

Start-up is measured apart from the steady state, so the targets are read where they mean
something: every round also runs each contender once on an **empty** topic of the same
partitions (same command, fresh group): its CPU is the fixed cost of a run (interpreters,
imports, flow check, instance lock, consumers, the ``--stop-when-idle`` wait, shutdown).

* **rate** = records / (append time of the first log document -> of the last terminal
  document): without start-up;
* **launch -> 1st doc**: seconds from the launch to the first log document (start-up wall);
* **CPU** = user + system of the whole process tree (getrusage RUSAGE_CHILDREN; with
  ``--processes 2`` the launcher and both processes) per record, in total and in the
  **steady state**: (CPU of the run - CPU of the same contender's empty run) / records;
* **fixed CPU**: the CPU of the empty run.

Every record must have exactly one terminal execution, else the run is INVALID. With
``--threads`` the CPU of each process and of its busiest threads is sampled from /proc and
printed (which process did how much; librdkafka's threads are ``rdk:*``). Targets (issue 16,
median of the rounds, ratios against 1 process of the same round): ``--processes 2`` rate
>= 1.25x, steady-state CPU per record <= 1.15x; the totals (with start-up) are printed too.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import benchkit
import realtime
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

IDLE = 2.0  # --stop-when-idle (as bench/realtime.py); --idle changes it


def produce_spread(bootstrap: str, topic: str, n: int, partitions: int) -> None:
    """Records 0..n-1 (``benchkit.record``, key ``str(i)``) round-robin over ``partitions``."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4",
                  "batch.num.messages": 10000, "queue.buffering.max.messages": 500000})
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=benchkit.record(i), key=str(i).encode(),
                          partition=i % partitions)
                break
            except BufferError:
                p.poll(0.01)
        if i % 10000 == 0:
            p.poll(0)
    if p.flush(120) != 0:
        raise RuntimeError("input records not delivered")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_partitions(flow_text: str, parts: list[int]) -> str:
    """The flow of ``realtime.flow_yaml`` reading only ``parts`` of its topic."""
    marker = "    valueDeserializer: JSON\n"
    return flow_text.replace(marker, f"{marker}    partitions: {parts}\n")


Plan = list[tuple[list[str], list[int] | None]]


@dataclass
class Run:
    """One contender's run over the backlog, and its empty run of the same round."""

    name: str
    records: int
    launch_ms: int
    cpu_s: float
    scan: realtime.LogScan
    load: str
    per_process: dict[int, float]
    threads: dict[tuple[int, str], float]
    fixed_cpu_s: float = 0.0  # CPU of the same contender on an empty topic
    fixed_wall_s: float = 0.0  # its launch -> exit, minus the idle wait

    @property
    def valid(self) -> bool:
        s = self.scan
        return len(s.terminal_ids) == self.records and s.last_terminal_ms is not None

    @property
    def rate(self) -> float:
        s = self.scan
        assert s.first_ms is not None and s.last_terminal_ms is not None
        return self.records / max(1e-3, (s.last_terminal_ms - s.first_ms) / 1000)

    @property
    def launch_rate(self) -> float:
        assert self.scan.last_terminal_ms is not None
        return self.records / max(1e-3, (self.scan.last_terminal_ms - self.launch_ms) / 1000)

    @property
    def first_doc_s(self) -> float:
        """Launch -> first log document (start-up, wall)."""
        assert self.scan.first_ms is not None
        return (self.scan.first_ms - self.launch_ms) / 1000

    @property
    def us_per_record(self) -> float:
        return self.cpu_s / self.records * 1e6

    @property
    def steady_us_per_record(self) -> float:
        """CPU per record without the fixed cost (that of the empty run)."""
        return (self.cpu_s - self.fixed_cpu_s) / self.records * 1e6

    def report(self, threads: bool) -> None:
        if not self.valid:
            print(f"    {self.name:18} INVALID: {len(self.scan.terminal_ids):,} executions "
                  f"terminal of {self.records:,} | load {self.load}")
            return
        print(f"    {self.name:18} {self.rate:7,.0f} rec/s (from launch {self.launch_rate:6,.0f}"
              f"; 1st doc {self.first_doc_s:4.2f} s) | CPU {self.cpu_s:5.1f} s = "
              f"{self.us_per_record:4.0f} us/rec, steady {self.steady_us_per_record:4.0f} "
              f"us/rec (empty run: {self.fixed_cpu_s:4.2f} s CPU, {self.fixed_wall_s:4.2f} s "
              f"wall) | load {self.load}")
        if threads and self.per_process:
            procs = ", ".join(f"#{i} {cpu:.1f}s" for i, cpu in sorted(self.per_process.items()))
            print(f"      CPU by process (sampled; #0 is the one launched): {procs}")
            top = sorted(self.threads.items(), key=lambda kv: kv[1], reverse=True)[:10]
            print("      busiest threads: " + ", ".join(f"#{i} {name} {cpu:.1f}s"
                                                       for (i, name), cpu in top))


@dataclass
class Launched:
    """What :func:`launch` measured: CPU of the process tree, launch time, samplers."""

    cpu_s: float
    launch: float
    wall_s: float
    samplers: list[benchkit.ThreadCpu]


def launch(name: str, kind: str, res: benchkit.Resources, bootstrap: str, src: str,
           log: str, tmp: Path, plan: Plan, *, threads: bool, idle: float) -> Launched:
    """Launch one process per ``plan`` entry (its ``waxflow run`` options and the partitions
    it reads, None: all) at once, each in a fresh group, writing to ``log``; wait for all."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    samplers: list[benchkit.ThreadCpu] = []
    flows = []
    for i, (_options, parts) in enumerate(plan):
        text = realtime.flow_yaml(src, res.group(kind))
        flow = tmp / f"{kind}-{i}.yaml"
        flow.write_text(text if parts is None else with_partitions(text, parts))
        flows.append(flow)
    cpu0 = benchkit.child_cpu()
    start = time.time()
    t0 = time.perf_counter()
    for i, (options, _parts) in enumerate(plan):
        err = tmp / f"{kind}-{i}.err"
        with err.open("wb") as errf:
            proc = subprocess.Popen(benchkit.waxflow_cmd(flows[i], idle, *options),
                                    env=benchkit.child_env(bootstrap, log),
                                    stdout=subprocess.DEVNULL, stderr=errf)
        procs.append((proc, err))
        if threads:
            samplers.append(benchkit.ThreadCpu(proc.pid))
    try:
        for proc, err in procs:
            if proc.wait(timeout=3600) != 0:
                raise RuntimeError(f"{name} exited {proc.returncode}: "
                                   f"{err.read_text(errors='replace')[-3000:]}")
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall = time.perf_counter() - t0
    return Launched(benchkit.child_cpu() - cpu0, start, wall, samplers)


def run(name: str, res: benchkit.Resources, bootstrap: str, src: str, empty: str, n: int,
        tmp: Path, plan: Plan, threads: bool, idle: float) -> Run:
    """The contender over the backlog ``src`` (``n`` records), then on the empty topic
    ``empty`` (its fixed cost); the log topic of the first is scanned."""
    kind = name.replace(" ", "").replace("-", "")[:8]
    log = res.log_topic(kind)
    load = benchkit.load()
    full = launch(name, kind, res, bootstrap, src, log, tmp, plan, threads=threads, idle=idle)
    per_process: dict[int, float] = {}
    by_thread: dict[tuple[int, str], float] = {}
    for s in full.samplers:
        s.stop()
        base = len(per_process)
        for i, c in s.by_process().items():
            per_process[base + i] = c
        for (i, tname), c in s.by_thread().items():
            by_thread[(base + i, tname)] = c
    scan = realtime.scan_log(bootstrap, log)
    fixed = launch(f"{name} (empty)", f"{kind}0", res, bootstrap, empty,
                   res.log_topic(f"{kind}0"), tmp, plan, threads=False, idle=idle)
    return Run(name, n, int(full.launch * 1000), full.cpu_s, scan, load, per_process,
               by_thread, fixed_cpu_s=fixed.cpu_s, fixed_wall_s=fixed.wall_s - idle)


def split(parts: int, ways: int) -> list[list[int]]:
    """Partitions 0..parts-1 dealt round-robin into ``ways`` lists (the first the longest)."""
    return [list(range(w, parts, ways)) for w in range(ways)]


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=2, help="rounds (contenders alternate)")
    ap.add_argument("--partitions", type=int, default=benchkit.PARTITIONS,
                    help="partitions of the input topic")
    ap.add_argument("--independent", action="store_true",
                    help="also run two independent processes splitting the partitions")
    ap.add_argument("--idle", type=float, default=IDLE,
                    help="--stop-when-idle seconds (a partition that has not fetched its first "
                         "records within it stops: raise it on a very loaded machine)")
    ap.add_argument("--epoch-ms", type=int, default=None,
                    help="waxflow run --epoch-ms for every contender (default: waxflow's)")
    ap.add_argument("--cluster-of-one", action="store_true",
                    help="also run one process as a 1-member Bytewax cluster")
    ap.add_argument("--threads", action="store_true",
                    help="print the CPU of each process and of its busiest threads")
    benchkit.add_bootstrap(ap)
    args = ap.parse_args()
    n, bootstrap = args.records, args.bootstrap
    res = benchkit.Resources(AdminClient({"bootstrap.servers": bootstrap}), "bench-scale")
    ideal = args.partitions / len(split(args.partitions, 2)[0])
    print(f"scale bench: {n:,} records x ~{len(benchkit.record(12345))} B, {args.partitions} "
          f"partitions (2 processes: at best {ideal:.2f}x), broker {bootstrap}, "
          f"{os.cpu_count()} CPUs, run {res.run_id}, epoch {args.epoch_ms or 'default'} ms, "
          f"load {benchkit.load()}")
    contenders: dict[str, Plan] = {
        "1 process": [(["-w", "1"], None)],
        "--processes 2": [(["--processes", "2"], None)],
    }
    if args.cluster_of_one:
        contenders["1-member cluster"] = [(["--addresses", f"127.0.0.1:{free_port()}",
                                           "--process-id", "0"], None)]
    if args.independent:
        contenders["2 independent"] = [(["-w", "1"], parts)
                                       for parts in split(args.partitions, 2)]
    if args.epoch_ms is not None:
        contenders = {name: [([*opts, "--epoch-ms", str(args.epoch_ms)], parts)
                             for opts, parts in plan] for name, plan in contenders.items()}
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    loads = [benchkit.load()]
    with benchkit.scratch(res, "waxflow-bench-scale-", announce=True) as tmp:
        src = res.create(res.name("in"), args.partitions)
        empty = res.create(res.name("empty"), args.partitions)
        produce_spread(bootstrap, src, n, args.partitions)
        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat} (load {benchkit.load()})")
            names = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in names:
                result = run(name, res, bootstrap, src, empty, n, tmp, contenders[name],
                             args.threads, args.idle)
                result.report(args.threads)
                runs[name].append(result)
                loads.append(result.load)
    valid = all(x.valid for rs in runs.values() for x in rs)
    if not valid:
        print("\nSOME RUNS INVALID: no summary")
        return 1
    summary(runs, args.repeat, ideal)
    loads.append(benchkit.load())
    print(f"  load average (1 min) during the run: {min(loads, key=float)}-"
          f"{max(loads, key=float)} on "
          f"{os.cpu_count()} CPUs; the broker and other processes share them: ratios of the "
          "same round are what count")
    return 0


def summary(runs: dict[str, list[Run]], repeat: int, ideal: float) -> None:
    """Medians over the rounds; each ratio is taken against 1 process of the same round."""
    med = statistics.median
    one = runs["1 process"]
    print(f"\nSUMMARY (median of {repeat} round{'s' if repeat > 1 else ''}; targets: "
          "--processes 2 rate >= 1.25x 1 process (at best "
          f"{ideal:.2f}x with this partition split), steady-state CPU per record <= 1.15x)")
    print(f"  {'':16} {'rec/s':>7} {'from launch':>11} {'1st doc':>7} {'fixed CPU':>9} "
          f"{'us/rec':>6} {'steady':>6} | {'speed':>6} {'CPU/rec':>7} {'steady':>6}")
    for name, rs in runs.items():
        def ratio(get: Callable[[Run], float], rs: list[Run] = rs) -> float:
            return med(get(x) / get(o) for x, o in zip(rs, one, strict=True))

        speed = ratio(lambda x: x.rate)
        cpu = ratio(lambda x: x.us_per_record)
        steady = ratio(lambda x: x.steady_us_per_record)
        mark = ""
        if name == "--processes 2":
            mark = (f"  speed [{benchkit.verdict(speed >= 1.25)}], steady CPU "
                    f"[{benchkit.verdict(steady <= 1.15)}], total CPU "
                    f"[{benchkit.verdict(cpu <= 1.15)}]")
        rate, from_launch = med(x.rate for x in rs), med(x.launch_rate for x in rs)
        first, fixed = med(x.first_doc_s for x in rs), med(x.fixed_cpu_s for x in rs)
        us, us_steady = med(x.us_per_record for x in rs), med(x.steady_us_per_record for x in rs)
        print(f"  {name:16} {rate:7,.0f} {from_launch:11,.0f} {first:6.2f}s {fixed:8.2f}s"
              f" {us:6.0f} {us_steady:6.0f} | {speed:5.2f}x {cpu:6.2f}x {steady:5.2f}x{mark}")
    print("  (rec/s: first document -> last terminal; 1st doc: launch -> first document; "
          "fixed CPU: the same command on an empty topic; steady: us/rec without it)")


if __name__ == "__main__":
    sys.exit(main())
