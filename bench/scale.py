"""Scale-out benchmark: ``waxflow run --processes 2`` vs one process (not a test).

Run: ``.venv/bin/python bench/scale.py [--records 100000] [--repeat 2] [--partitions 3]
[--independent] [--threads]`` against the broker at ``$WAXFLOW_BOOTSTRAP`` (default
127.0.0.1:9092).

The work: the CPU-bound realtime flow of ``bench/realtime.py`` (``core.Switch`` on
``{{ trigger.value.type }}``, each case a ``core.Set`` of two templates; no produce: the
executions are pipelined) over a backlog of ``--records`` ~200 B JSON records
(``benchkit.record``) on a ``--partitions``-partition topic (default 3, as in issue 16),
produced *before* anything is timed. Each run reads it with a fresh consumer group into a
fresh execution-log topic. Contenders, alternating in order every round:

* **1 process**: ``waxflow run FLOW --stop-when-idle 2 -w 1``;
* **--processes 2**: ``waxflow run FLOW --stop-when-idle 2 --processes 2`` (one Bytewax
  cluster of two processes on loopback; Bytewax spreads the Kafka partitions over them);
* with ``--cluster-of-one``, **1-member cluster**: ``waxflow run FLOW --addresses
  127.0.0.1:PORT --process-id 0``: one process and one worker as in the first, but run by
  Bytewax's ``cluster_main`` (a worker thread, the main thread waiting for it) instead of
  ``run_main`` (the worker on the main thread): the cost of cluster mode without a peer;
* with ``--independent``, **2 independent processes**: two ``waxflow run -w 1`` of the same
  flow, each with its own consumer group and a ``partitions:`` list splitting the input as
  evenly as it goes (first process the larger share): two processes without a Bytewax
  cluster, to tell the cluster's own cost from that of the partition split.

Measured (as bench/realtime.py): **rate** = records / (append time of the first log document
-> of the last terminal document), i.e. without start-up; **from launch** = records / (launch
-> last terminal document); **CPU** = user + system of the whole process tree (getrusage
RUSAGE_CHILDREN; with ``--processes 2`` the launcher and both members), per record. Every
record must have exactly one terminal execution, else the run is INVALID. With ``--threads``
the CPU of each process and of its busiest threads is sampled from /proc and printed (which
member did how much of the work; librdkafka's threads are ``rdk:*``). Targets (issue 16,
median of the rounds): throughput of ``--processes 2`` >= 1.25x one process, its total CPU
per record <= 1.15x one process.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
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


@dataclass
class Run:
    name: str
    records: int
    launch_ms: int
    cpu_s: float
    scan: realtime.LogScan
    load: str
    per_process: dict[int, float]
    threads: dict[tuple[int, str], float]

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
    def us_per_record(self) -> float:
        return self.cpu_s / self.records * 1e6

    def report(self, threads: bool) -> None:
        if not self.valid:
            print(f"    {self.name:22} INVALID: {len(self.scan.terminal_ids):,} executions "
                  f"terminal of {self.records:,} | load {self.load}")
            return
        print(f"    {self.name:22} {self.rate:8,.0f} rec/s (from launch {self.launch_rate:7,.0f})"
              f" | CPU {self.cpu_s:6.1f} s = {self.us_per_record:4.0f} us/rec | load {self.load}")
        if threads and self.per_process:
            procs = ", ".join(f"#{i} {cpu:.1f}s" for i, cpu in sorted(self.per_process.items()))
            print(f"      CPU by process (sampled; #0 is the one launched): {procs}")
            top = sorted(self.threads.items(), key=lambda kv: kv[1], reverse=True)[:10]
            print("      busiest threads: " + ", ".join(f"#{i} {name} {cpu:.1f}s"
                                                       for (i, name), cpu in top))


def run(name: str, res: benchkit.Resources, bootstrap: str, src: str, n: int, tmp: Path,
        plan: list[tuple[list[str], list[int] | None]], threads: bool, idle: float) -> Run:
    """Launch one process per ``plan`` entry (its ``waxflow run`` options and the partitions
    it reads, None: all) at once; wait for all; scan the shared log topic."""
    kind = name.replace(" ", "").replace("-", "")[:8]
    log = res.log_topic(kind)
    load = benchkit.load()
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    samplers: list[benchkit.ThreadCpu] = []
    cpu0 = benchkit.child_cpu()
    launch = time.time()
    for i, (options, parts) in enumerate(plan):
        group = res.group(kind)
        text = realtime.flow_yaml(src, group)
        flow = tmp / f"{kind}-{i}.yaml"
        flow.write_text(text if parts is None else with_partitions(text, parts))
        err = tmp / f"{kind}-{i}.err"
        with err.open("wb") as errf:
            proc = subprocess.Popen(benchkit.waxflow_cmd(flow, idle, *options),
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
    cpu = benchkit.child_cpu() - cpu0
    per_process: dict[int, float] = {}
    by_thread: dict[tuple[int, str], float] = {}
    for s in samplers:
        s.stop()
        base = len(per_process)
        for i, c in s.by_process().items():
            per_process[base + i] = c
        for (i, tname), c in s.by_thread().items():
            by_thread[(base + i, tname)] = c
    return Run(name, n, int(launch * 1000), cpu, realtime.scan_log(bootstrap, log), load,
               per_process, by_thread)


def split(parts: int, ways: int) -> list[list[int]]:
    """Partitions 0..parts-1 dealt round-robin into ``ways`` lists (the first the longest)."""
    return [list(range(w, parts, ways)) for w in range(ways)]


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
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
    print(f"scale bench: {n:,} records x ~{len(benchkit.record(12345))} B, {args.partitions} "
          f"partitions, broker {bootstrap}, {os.cpu_count()} CPUs, run {res.run_id}, "
          f"epoch {args.epoch_ms or 'default'} ms, load {benchkit.load()}")
    contenders: dict[str, list[tuple[list[str], list[int] | None]]] = {
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
    with benchkit.scratch(res, "waxflow-bench-scale-", announce=True) as tmp:
        src = res.create(res.name("in"), args.partitions)
        produce_spread(bootstrap, src, n, args.partitions)
        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat} (load {benchkit.load()})")
            names = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in names:
                result = run(name, res, bootstrap, src, n, tmp, contenders[name], args.threads,
                             args.idle)
                result.report(args.threads)
                runs[name].append(result)
    valid = all(x.valid for rs in runs.values() for x in rs)
    if not valid:
        print("\nSOME RUNS INVALID: no summary")
        return 1
    med = statistics.median
    one = runs["1 process"]
    print(f"\nSUMMARY (median of {args.repeat} round{'s' if args.repeat > 1 else ''}; targets: "
          "--processes 2 >= 1.25x the throughput of 1 process, <= 1.15x its CPU per record)")
    print(f"  {'':16} {'rec/s':>8} {'from launch':>11} {'us/rec':>7} | {'speed vs 1':>10} "
          f"{'CPU/rec vs 1':>12}")
    for name, rs in runs.items():
        speed = med(x.rate / o.rate for x, o in zip(rs, one, strict=True))
        cpu = med(x.us_per_record / o.us_per_record for x, o in zip(rs, one, strict=True))
        mark = ""
        if name == "--processes 2":
            mark = (f"  speed [{benchkit.verdict(speed >= 1.25)}], CPU "
                    f"[{benchkit.verdict(cpu <= 1.15)}]")
        print(f"  {name:16} {med(x.rate for x in rs):8,.0f} "
              f"{med(x.launch_rate for x in rs):11,.0f} {med(x.us_per_record for x in rs):7.0f}"
              f" | {speed:9.2f}x {cpu:11.2f}x{mark}")
    print(f"  load average at the end: {benchkit.load()} (1 min) on {os.cpu_count()} CPUs; "
          "the broker and other processes share them: ratios of the same run are what count")
    return 0


if __name__ == "__main__":
    sys.exit(main())
