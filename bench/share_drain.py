"""Share-group drain benchmark: one partition, a backlog, 1 vs N share consumers vs a consumer
group (not a test).

Run: ``.venv/bin/python bench/share_drain.py [--records 2000] [--work-ms 20] [--consumers 4]``
against the broker at ``$WAXFLOW_BOOTSTRAP`` (default 127.0.0.1:9092).

Each phase gets a fresh one-partition topic holding the whole backlog *before* any consumer
starts, a fresh group and a fresh execution-log topic (all deleted at the end). The flow runs
one ``core.Python`` task per record that sleeps ``--work-ms`` (I/O-like work: a 2-core machine
can still overlap it) with ``maxConcurrency: 1``, i.e. every consumer works one record at a
time like a classic queue worker; without that cap one process would already overlap the
sleeps and the comparison would measure Python overhead instead.

Phases, in one run:
1. share group, 1 consumer: one ``waxflow run`` process;
2. share group, N consumers: N independent ``waxflow run`` processes on the same flow;
3. consumer group, N processes: ``waxflow run --processes N`` (one Bytewax cluster): the
   single partition goes to one worker, the other processes idle.

Times: *drain* = last terminal document's ``endDate`` minus the first execution's
``startDate`` (the work itself, without process start-up or group join); *launch→done* =
last ``endDate`` minus the moment the processes were launched (includes interpreter start,
imports, and the share group's join: the first member of a new share group gets its
assignment one heartbeat, 5 s, after joining; by default the bench creates each share group
with one short-lived member before the backlog, as when a running queue scales out; see
``--new-group``). Speed-ups are drain ratios against phase 1. CPU = user + system seconds of
the waxflow processes (their share of the machine's cores is printed too).
Share-group records are produced in producer batches of ``--batch`` records: the broker hands
out whole producer batches (``max.poll.records``, set to ``--batch``, is a soft limit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchkit
from confluent_kafka import AcknowledgeType, Producer, ShareConsumer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

IDLE = 3.0

FLOW = """\
id: bench-share-drain
namespace: bench
triggers:
  - id: queue
    type: kafka.RealtimeTrigger
    topic: {topic}
    groupId: {group}
    groupType: {group_type}
    valueDeserializer: JSON
    maxConcurrency: 1
{properties}tasks:
  - id: work
    type: core.Python
    function: "tests.flow_funcs:whoami"
    args: {{ms: {work_ms}}}
"""


@dataclass
class Phase:
    name: str
    consumers: int
    drain: float = 0.0
    launch_to_done: float = 0.0
    executions: int = 0
    cpu: float = 0.0
    redelivered: list[str] = field(default_factory=list)
    per_process: Counter[str] = field(default_factory=Counter)
    first_after_launch: dict[str, float] = field(default_factory=dict)


def produce_backlog(bootstrap: str, topic: str, n: int, batch: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": batch})
    for i in range(n):
        p.produce(topic, value=json.dumps({"id": i}).encode())
    if p.flush(60) != 0:
        raise RuntimeError("backlog not delivered")


def prejoin(res: benchkit.Resources, bootstrap: str, topic: str, group: str) -> None:
    """Create the share group the way a running queue has it: start position earliest, one
    consumer joined (assignment) and left. Uses a sentinel record, accepted and archived."""
    config = ConfigResource(ResourceType.GROUP, group, incremental_configs=[ConfigEntry(
        "share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET)])
    for fut in res.admin.incremental_alter_configs([config]).values():
        fut.result(timeout=30)
    sentinel = Producer({"bootstrap.servers": bootstrap})
    sentinel.produce(topic, value=b'{"sentinel": true}')
    if sentinel.flush(30) != 0:
        raise RuntimeError("sentinel not delivered")
    c = ShareConsumer({"bootstrap.servers": bootstrap, "group.id": group,
                       "share.acknowledgement.mode": "explicit"})
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 60
        got: list[Any] = []
        while not got:
            if time.monotonic() > deadline:
                raise TimeoutError(f"share group {group} did not deliver the sentinel")
            got = list(c.poll(0.1))
        for m in got:
            c.acknowledge(m, AcknowledgeType.ACCEPT)
        c.commit_sync()
    finally:
        c.close()


def run_phase(res: benchkit.Resources, bootstrap: str, phase: Phase, share: bool,
              args: argparse.Namespace, tmp: Path) -> Phase:
    topic = res.create(res.name("in"), 1)
    log = res.create(res.name("log"), 1)
    group = res.group("share" if share else "consumer")
    if share and not args.new_group:
        prejoin(res, bootstrap, topic, group)
    produce_backlog(bootstrap, topic, args.records, args.batch)
    props = f"    properties: {{max.poll.records: {args.batch}}}\n" if share else ""
    flow = tmp / f"{phase.name.replace(' ', '_')}.yaml"
    flow.write_text(FLOW.format(topic=topic, group=group, work_ms=args.work_ms,
                                group_type="SHARE" if share else "CONSUMER",
                                properties=props))
    env = benchkit.child_env(bootstrap, log)
    cmd = benchkit.waxflow_cmd(flow, IDLE)
    cpu0 = benchkit.child_cpu()
    launched = time.time()
    if share:
        procs = [subprocess.Popen(cmd, env={**env, "WAXFLOW_WORKER_NAME": f"c{i}"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for i in range(phase.consumers)]
    else:
        procs = [subprocess.Popen([*cmd, "--processes", str(phase.consumers)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"{phase.name}: waxflow run failed: {err[-2000:]}")
    phase.cpu = benchkit.child_cpu() - cpu0
    docs = benchkit.read_docs(bootstrap, log, isolation="read_uncommitted", timeout=30)
    done = [d for d in docs if d["terminal"]]
    ids = {d["taskRuns"][0]["outputs"]["id"] for d in done if d["state"] == "SUCCESS"}
    if len(ids) != args.records:
        raise RuntimeError(f"{phase.name}: {len(ids)} of {args.records} records done")
    first = min(benchkit.iso_seconds(d["startDate"]) for d in done)
    last = max(benchkit.iso_seconds(d["endDate"]) for d in done)
    phase.drain = last - first
    phase.launch_to_done = last - launched
    phase.executions = len(done)
    phase.per_process = Counter(d["taskRuns"][0]["outputs"]["worker"] for d in done)
    runs = Counter(d["id"] for d in done)
    for d in done:
        if runs[d["id"]] > 1 and d["trigger"]["deliveryCount"] == 1:
            started = benchkit.iso_seconds(d["startDate"]) - launched
            phase.redelivered.append(f"{d['taskRuns'][0]['outputs']['worker']}@{started:.1f}s")
    for d in done:
        worker = d["taskRuns"][0]["outputs"]["worker"]
        start = benchkit.iso_seconds(d["startDate"]) - launched
        phase.first_after_launch[worker] = min(phase.first_after_launch.get(worker, 1e9), start)
    return phase


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--work-ms", type=float, default=20.0)
    ap.add_argument("--consumers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=10,
                    help="max.poll.records and producer batch size (share phases)")
    ap.add_argument("--new-group", action="store_true",
                    help="start the share phases on a brand-new group (its first member "
                         "waits one heartbeat, 5 s, for its assignment)")
    args = ap.parse_args()
    bootstrap = os.environ.get("WAXFLOW_BOOTSTRAP", "127.0.0.1:9092")
    res = benchkit.Resources(AdminClient({"bootstrap.servers": bootstrap}), "bench-share",
                             report_group_errors=False)
    n = args.consumers
    print(f"{args.records} records, {args.work_ms:g} ms of work each, one partition, "
          f"maxConcurrency 1, {os.cpu_count()} cores, broker {bootstrap}")
    phases: list[Phase] = []
    with benchkit.scratch(res, "waxflow-bench-share-") as tmp:
        for phase, share in ((Phase("share group", 1), True),
                             (Phase("share group", n), True),
                             (Phase("consumer group", n), False)):
            run_phase(res, bootstrap, phase, share, args, tmp)
            phases.append(phase)
            print(f"  {phase.name:15} x{phase.consumers}: drain {phase.drain:6.2f}s  "
                  f"launch->done {phase.launch_to_done:6.2f}s  "
                  f"executions {phase.executions}  CPU {phase.cpu:5.1f}s "
                  f"({phase.cpu / phase.launch_to_done:.2f} cores)", flush=True)
            if phase.redelivered:
                print(f"      {len(phase.redelivered)} records ran twice (record lock ran "
                      f"out; first run by worker@start): "
                      f"{sorted(Counter(phase.redelivered).items())}")
            for worker, count in sorted(phase.per_process.items()):
                print(f"      {worker}: {count} executions, first one "
                      f"{phase.first_after_launch[worker]:.1f}s after launch")
    base = phases[0]
    print("\nspeed-up against 1 share consumer (drain / launch->done):")
    for p in phases[1:]:
        print(f"  {p.name:15} x{p.consumers}: {base.drain / p.drain:4.2f}x / "
              f"{base.launch_to_done / p.launch_to_done:4.2f}x")
    target = base.drain / phases[1].drain
    verdict = "meets" if target >= 3.5 else "MISSES"
    print(f"\n{n} share consumers: {target:.2f}x drain speed-up ({verdict} the 3.5x target)")


if __name__ == "__main__":
    main()
