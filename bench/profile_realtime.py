"""Profile the realtime flow of bench/realtime.py in-process (not a test).

Run: ``.venv/bin/python bench/profile_realtime.py [--records 50000]
[--flow realtime|produce|produce-txn] [--no-profile]``.

``--flow realtime`` (default) is the Switch + Set flow of bench/realtime.py; ``--flow produce``
the at-least-once ``kafka.Produce`` flow of bench/peers.py (consume -> add a field -> produce
JSON to a fresh output topic), ``--flow produce-txn`` the same exactly-once (transactional).
The job is the same as ``waxflow run FLOW --stop-when-idle 2 -w 1``
(``waxflow.dataflows.load_flow`` plus Bytewax's single-worker ``run_main`` in this
thread, 200 ms epochs), on fresh topics and group (deleted at the end). cProfile runs with a
**per-thread CPU-time timer** (``time.thread_time``), on the main thread (Bytewax worker:
source, deserialize, execute step, sink) and on every Python thread the job starts (execution
pool, the pipeline's delivery poller (which serves the delivery reports of producers that
report every delivery; the quiet ones, which report failures only, are settled on the main
thread at each snapshot), and its timer: ``threading.Thread.run`` is wrapped, one profiler per
thread). CPU time, not wall time: with ~64 pool threads sharing the GIL a wall-clock profile
would charge GIL waits to whatever function was waiting. The profiles are
merged; percentages are of the total profiled CPU time of all Python threads. CPU spent in
librdkafka's own threads and in Bytewax's Rust code outside Python calls is not in the
profile; the process CPU (getrusage) is printed next to it. cProfile inflates call-heavy
code, so the executions/s under the profiler are lower than without (``--no-profile``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchkit
import peers
import realtime
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

# C functions whose self time the module table shows by name (the rest: "builtin (other)")
BUILTINS = ("cimpl.Producer", "cimpl.Consumer", "cimpl.Message", "json", "_json", "_thread",
            "datetime", "_hashlib", "uuid", "posix")


def install_thread_profiling() -> list[cProfile.Profile]:
    """Profile every Python thread started from now on (pool workers, the delivery poller,
    the timer) with its own CPU-time profiler, enabled for the thread's whole run. A daemon
    thread still running at the end is read as it is (its profiler is not stopped)."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(prof)
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    return profiles


def report_threads(main_cpu: float) -> None:
    """CPU s of this process's Python threads still alive (Linux /proc), by thread name: where
    the work runs without a profiler (the Bytewax worker is the main thread)."""
    tick = os.sysconf("SC_CLK_TCK")
    by_name: dict[str, list[float]] = defaultdict(list)
    for t in threading.enumerate():
        if t is threading.main_thread() or t.native_id is None:
            continue
        try:
            stat = Path(f"/proc/self/task/{t.native_id}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        name = t.name.rstrip("0123456789_-") or t.name
        by_name[name].append((int(fields[11]) + int(fields[12])) / tick)
    rows = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    print(f"  Python threads (CPU s): main (Bytewax worker) {main_cpu:.2f}, " + ", ".join(
        f"{name} {sum(cpu):.2f}" + (f" ({len(cpu)} threads)" if len(cpu) > 1 else "")
        for name, cpu in rows if sum(cpu) >= 0.01))


def flow_text(kind: str, res: benchkit.Resources, inp: benchkit.Inputs) -> str:
    """The flow file of ``--flow kind`` reading ``inp`` (``produce``: a fresh output topic)."""
    if kind == "realtime":
        return realtime.flow_yaml(inp.topic, inp.group)
    out = res.create(res.name("out"), benchkit.PARTITIONS)
    return peers.flow_yaml(inp.topic, out, inp.group, kind == "produce-txn", None)


def install_gc_timing() -> dict[int, list[tuple[float, float, int]]]:
    """Record every cyclic-GC run by generation: (wall ms, CPU ms, objects collected)."""
    import gc

    pauses: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    started: list[float] = [0.0, 0.0]
    sizes = pauses[-1]  # (objects tracked in gen 2 when a gen-2 run starts, 0, 0)

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            if info["generation"] == 2:
                sizes.append((float(len(gc.get_objects(2))), 0.0, 0))
            started[0], started[1] = time.perf_counter(), time.thread_time()
        else:
            pauses[info["generation"]].append(((time.perf_counter() - started[0]) * 1000,
                                               (time.thread_time() - started[1]) * 1000,
                                               info["collected"]))

    gc.callbacks.append(callback)
    return pauses


def report_gc(pauses: dict[int, list[tuple[float, float, int]]]) -> None:
    import gc

    print(f"  cyclic GC (thresholds {gc.get_threshold()}, {len(gc.get_objects()):,} tracked "
          "objects at the end; a collection holds the GIL: every thread waits):")
    sizes = sorted(r[0] for r in pauses.get(-1, []))
    if sizes:
        print(f"    objects in gen 2 when a gen-2 run starts: median {sizes[len(sizes) // 2]:,.0f},"
              f" max {sizes[-1]:,.0f}")
    for gen in sorted(g for g in pauses if g >= 0):
        runs = pauses[gen]
        wall = sorted(r[0] for r in runs)
        cpu = sorted(r[1] for r in runs)
        print(f"    gen {gen}: {len(runs):6,} runs, wall total {sum(wall):7.1f} ms (median "
              f"{wall[len(wall) // 2]:.2f}, max {wall[-1]:.1f}), CPU total {sum(cpu):7.1f} ms "
              f"(median {cpu[len(cpu) // 2]:.2f}, max {cpu[-1]:.1f}), "
              f"{sum(r[2] for r in runs):,} objects collected")


def components(args: argparse.Namespace) -> int:
    """Time each stage of one execution single-threaded, with the product's own objects.

    No profiler: plain perf_counter around N repetitions of each stage. The stages add up to
    the per-record work of the execute step minus thread-pool and Bytewax overhead, which are
    timed separately (RecordExecutions on 500-record batches with the flow's pool of 64 threads
    vs a pool of 1).
    """
    from waxflow.connectors.serdes import deserializer
    from waxflow.dataflows.compiler import build_runner
    from waxflow.dataflows.spec import parse_flow
    from waxflow.execution import State
    from waxflow.operators.deserialize import decode
    from waxflow.records import RawRecord
    from waxflow.retry import RetryPolicy

    n = args.records
    bootstrap = args.bootstrap
    res = benchkit.Resources(AdminClient({"bootstrap.servers": bootstrap}))
    with benchkit.scratch(res, "waxflow-comp-") as tmp:
        log_topic = res.log_topic("comp")
        flow_path = tmp / "flow.yaml"
        flow_path.write_text(realtime.flow_yaml("unused", "unused"))
        os.environ.update({"WAXFLOW_BOOTSTRAP": bootstrap, "WAXFLOW_EXECUTION_LOG": log_topic})
        flow = parse_flow(flow_path)
        runner = build_runner(flow)
        engine, exprs = runner.executor.engine, runner.executor.engine.exprs
        log = runner.executor.resources()[0]
        raws = [RawRecord("in", i % 3, i, str(i).encode(), benchkit.record(i),
                          1_700_000_000_000 + i, ()) for i in range(n)]
        jde, sde = deserializer("JSON"), deserializer("STRING")
        results: list[tuple[str, float]] = []

        def timed(name: str, fn: Any) -> Any:
            t0 = time.perf_counter()
            out = fn()
            results.append((name, (time.perf_counter() - t0) / n * 1e6))
            return out

        decoded = timed("deserialize: decode() (json.loads + Decoded)",
                        lambda: [decode(r, sde, jde, fail=False, filters={}) for r in raws])
        scratch_batch = log.batch()
        jobs = timed("RecordExecutions.job (sha256 id, random runId, TriggerInfo)",
                     lambda: [runner.job(d, scratch_batch) for d in decoded])
        execs = [j.execution for j in jobs if j is not None]

        def running_json() -> list[bytes]:
            out = []
            for e in execs:
                e.state = State.RUNNING
                out.append(e.to_json())
            return out

        timed("Execution.to_json() RUNNING document", running_json)
        tvars = [{"key": d.key, "value": d.value, "topic": d.raw.topic,
                  "partition": d.raw.partition, "offset": d.raw.offset,
                  "timestamp": d.raw.timestamp, "headers": {}} for d in decoded]
        timed("Engine.run (Switch + Set: 3 renders, 2 task runs)",
              lambda: [engine.run(e, t) for e, t in zip(execs, tvars, strict=True)])
        timed("Execution.to_json() terminal document (2 task runs)",
              lambda: [e.to_json() for e in execs])
        # pieces of Engine.run
        ctxs = [{"trigger": t, "outputs": {}, "flow": {"id": "f", "namespace": "n"}}
                for t in tvars]
        sources = [realtime.SWITCH_VALUE, *realtime.CASES["order"][1].values()]
        timed("  of which: 3 x Expressions.render_value (the templates alone)",
              lambda: [[exprs.render_value(s, c) for s in sources] for c in ctxs])
        timed("  of which: 2 x RetryPolicy(None) (random.Random() seeded from urandom)",
              lambda: [(RetryPolicy(None), RetryPolicy(None)) for _ in range(n)])
        docs = [e.to_json() for e in execs]

        def produce_docs() -> None:
            batch = log.batch()
            for e, d in zip(execs, docs, strict=True):
                batch.write(e.id, d)
                batch.write(e.id, d)
            batch.wait()

        timed("LogBatch.write x2 + wait (produce 2 docs, delivery callbacks)", produce_docs)
        # the whole execute step, as Bytewax calls it (pipelined: it returns at once and the
        # executions are done once their documents are delivered), with its pool vs without
        batches = [decoded[i:i + 500] for i in range(0, n, 500)]

        def step(execute: Any) -> None:
            progress, _ = execute.pipelined()
            parts = set()
            for b in batches:
                offsets: dict[tuple[str, int], list[int]] = defaultdict(list)
                for d in b:
                    offsets[(d.raw.topic, d.raw.partition)].append(d.raw.offset)
                for (topic, part), offs in offsets.items():
                    progress.part(topic, part).read(offs, offs[-1] + 1)
                    parts.add((topic, part))
                execute(b)
            while any(progress.part(t, p).in_flight for t, p in parts):
                progress.settle_point()  # (quiet mode: executions are done as a snapshot
                progress.check()         # settles them, which this loop stands in for)
                time.sleep(0.001)

        timed("RecordExecutions on 500-record batches, inline, until all delivered (wall)",
              lambda: step(build_runner(flow)))
        pooled = build_runner(flow)
        pooled.executor.inline = False  # its pool is created on first use
        timed("RecordExecutions on 500-record batches, pool of 64 threads, until all "
              "delivered (wall)", lambda: step(pooled))
        from concurrent.futures import ThreadPoolExecutor, wait

        pool = ThreadPoolExecutor(64)

        def pool_only() -> None:
            for b in batches:
                wait([pool.submit(len, [r]) for r in b])

        timed("  thread pool alone: submit(no-op) per record + wait, 64 threads", pool_only)
        pool.shutdown()
        print(f"per-record cost of each stage, single-threaded, {n:,} records "
              "(us/record; no profiler)")
        for name, us in results:
            print(f"  {us:8.1f} us  {name}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--flow", choices=("realtime", "produce", "produce-txn"),
                    default="realtime",
                    help="realtime: Switch + Set (bench/realtime.py); produce: the "
                         "at-least-once kafka.Produce flow of bench/peers.py; produce-txn: "
                         "its exactly-once (transactional) variant")
    benchkit.add_bootstrap(ap)
    ap.add_argument("--no-profile", action="store_true", help="same run, no profiler")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", default=None, help="write the merged pstats here")
    ap.add_argument("--gc", action="store_true",
                    help="also time every garbage collection (pauses stop all threads)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="what-if: gc.freeze() the start-up objects before the run")
    ap.add_argument("--components", action="store_true",
                    help="time each stage single-threaded instead (no Bytewax, no profiler)")
    args = ap.parse_args()
    if args.components:
        if args.flow != "realtime":
            ap.error("--components times the realtime flow's stages only (--flow realtime)")
        return components(args)

    bootstrap = args.bootstrap
    res = benchkit.Resources(AdminClient({"bootstrap.servers": bootstrap}))
    with benchkit.scratch(res, "waxflow-prof-") as tmp:
        inp = benchkit.fresh_inputs(res, bootstrap, "prof", args.records)
        log = inp.log
        flow_path = tmp / "flow.yaml"
        flow_path.write_text(flow_text(args.flow, res, inp))
        flow = benchkit.compile_flow(flow_path, bootstrap, log, idle=realtime.IDLE)
        pool_profiles = [] if args.no_profile else install_thread_profiling()
        if args.gc_freeze:
            import gc

            gc.collect()
            gc.freeze()
        gc_pauses = install_gc_timing() if args.gc else None
        main_prof = cProfile.Profile(time.thread_time)
        run = benchkit.run_in_process(flow, None if args.no_profile else main_prof)
        wall, cpu = run.wall, run.cpu
        scan = realtime.scan_log(bootstrap, log)
        assert scan.first_ms is not None and scan.last_terminal_ms is not None
        busy = (scan.last_terminal_ms - scan.first_ms) / 1000
        print(f"{args.records:,} records, {len(scan.terminal_ids):,} executions terminal "
              f"({scan.success:,} SUCCESS); {'no profiler' if args.no_profile else 'cProfile'}")
        print(f"  first document -> last terminal {busy:.2f} s = {args.records / busy:,.0f} "
              f"executions/s; run_main wall {wall:.2f} s (incl. {realtime.IDLE:g} s idle stop)")
        print(f"  process CPU {cpu:.2f} s = {cpu / args.records * 1e6:.0f} us/record "
              f"(user {run.user:.2f} s, sys {run.system:.2f} s)")
        if gc_pauses is not None:
            report_gc(gc_pauses)
        if args.no_profile:
            report_threads(run.thread_cpu)
            return 0

        st = pstats.Stats(main_prof)
        main_cpu = st.total_tt  # type: ignore[attr-defined]
        for p in pool_profiles:
            st.add(p)
        total = st.total_tt  # type: ignore[attr-defined]
        print(f"  profiled Python CPU {total:.2f} s: Bytewax worker (main) thread "
              f"{main_cpu:.2f} s ({main_cpu / total:.0%}), {len(pool_profiles)} other Python "
              f"threads {total - main_cpu:.2f} s ({(total - main_cpu) / total:.0%}); "
              f"the rest of the process CPU ({max(0.0, cpu - total):.2f} s) is librdkafka/Rust "
              "threads and profiler overhead outside the hooks")
        if args.out:
            st.dump_stats(args.out)
            print(f"  merged stats written to {args.out}")

        benchkit.module_table(st, total, BUILTINS, top=20, other="builtin (other)",
                              title="SELF TIME BY MODULE / LIBRARY (of profiled CPU)")
        benchkit.table(st, total, 3, args.top,
                       "TOP BY CUMULATIVE TIME (per thread profile; % of all profiled CPU)")
        benchkit.table(st, total, 2, args.top, "TOP BY SELF TIME")
    return 0


if __name__ == "__main__":
    sys.exit(main())
