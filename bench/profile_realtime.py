"""Profile the realtime flow of bench/realtime.py in-process (not a test).

Run: ``.venv/bin/python bench/profile_realtime.py [--records 50000] [--no-profile]``.

The job is the same as ``waxflow run FLOW --stop-when-idle 2 -w 1`` (``waxflow.dataflows.load_flow``
plus Bytewax's single-worker ``run_main`` in this thread, 200 ms epochs), on fresh topics and
group (deleted at the end). cProfile runs with a **per-thread CPU-time timer**
(``time.thread_time``), on the main thread (Bytewax worker: source, deserialize, execute
step, sink) and on every execution-pool thread (``concurrent.futures`` work items are wrapped,
one profiler per thread). CPU time, not wall time: with ~64 pool threads sharing the GIL a
wall-clock profile would charge GIL waits to whatever function was waiting. The profiles are
merged; percentages are of the total profiled CPU time of all Python threads. CPU spent in
librdkafka's own threads and in Bytewax's Rust code outside Python calls is not in the
profile; the process CPU (getrusage) is printed next to it. cProfile inflates call-heavy
code, so the executions/s under the profiler are lower than without (``--no-profile``).
"""

from __future__ import annotations

import argparse
import concurrent.futures.thread as cft
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
import realtime
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

# C functions whose self time the module table shows by name (the rest: "builtin (other)")
BUILTINS = ("cimpl.Producer", "cimpl.Consumer", "cimpl.Message", "json", "_json", "_thread",
            "datetime", "_hashlib", "uuid", "posix")


def install_pool_profiling() -> list[cProfile.Profile]:
    """Profile every ThreadPoolExecutor work item with its thread's own CPU-time profiler."""
    profiles: list[cProfile.Profile] = []
    local = threading.local()
    lock = threading.Lock()
    original = cft._WorkItem.run

    def run(self: Any) -> None:
        prof = getattr(local, "prof", None)
        if prof is None:
            prof = local.prof = cProfile.Profile(time.thread_time)
            with lock:
                profiles.append(prof)
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    cft._WorkItem.run = run  # type: ignore[method-assign]
    return profiles


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
        jobs = timed("RecordExecutions.job (sha256 id, uuid4 runId, TriggerInfo)",
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
        # the whole execute step, as Bytewax calls it, with its pool vs without
        batches = [decoded[i:i + 500] for i in range(0, n, 500)]
        timed("RecordExecutions on 500-record batches, inline (no task of the flow blocks)",
              lambda: [runner(b) for b in batches])
        pooled = build_runner(flow)
        pooled.executor.inline = False  # its pool is created on first use
        timed("RecordExecutions on 500-record batches, pool of 64 threads",
              lambda: [pooled(b) for b in batches])
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
        return components(args)

    bootstrap = args.bootstrap
    res = benchkit.Resources(AdminClient({"bootstrap.servers": bootstrap}))
    with benchkit.scratch(res, "waxflow-prof-") as tmp:
        inp = benchkit.fresh_inputs(res, bootstrap, "prof", args.records)
        log = inp.log
        flow_path = tmp / "flow.yaml"
        flow_path.write_text(realtime.flow_yaml(inp.topic, inp.group))
        flow = benchkit.compile_flow(flow_path, bootstrap, log, idle=realtime.IDLE)
        pool_profiles = [] if args.no_profile else install_pool_profiling()
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
            return 0

        st = pstats.Stats(main_prof)
        main_cpu = st.total_tt  # type: ignore[attr-defined]
        for p in pool_profiles:
            st.add(p)
        total = st.total_tt  # type: ignore[attr-defined]
        print(f"  profiled Python CPU {total:.2f} s: Bytewax worker (main) thread "
              f"{main_cpu:.2f} s ({main_cpu / total:.0%}), {len(pool_profiles)} execution-pool "
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
