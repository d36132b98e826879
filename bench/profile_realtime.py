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
import resource
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realtime
from benchkit import table
from confluent_kafka.admin import AdminClient


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


def module_of(key: tuple[str, int, str]) -> str:
    file, _, func = key
    if file == "~":
        name = func.strip("<>")
        for known in ("cimpl.Producer", "cimpl.Consumer", "cimpl.Message", "json", "_json",
                      "_thread", "datetime", "_hashlib", "uuid", "posix"):
            if known in name:
                return f"builtin {known}"
        return "builtin (other)"
    parts = Path(file).parts
    if "site-packages" in parts:
        i = parts.index("site-packages")
        return parts[i + 1].removesuffix(".py")
    if "main" in parts:
        i = len(parts) - 1 - parts[::-1].index("main")
        return "/".join(parts[i + 1:])
    return "stdlib " + Path(file).stem


def components(args: argparse.Namespace) -> int:
    """Time each stage of one execution single-threaded, with the product's own objects.

    No profiler: plain perf_counter around N repetitions of each stage. The stages add up to
    the per-record work of the execute step minus thread-pool and Bytewax overhead, which are
    timed separately (ExecuteBatch on 500-record batches with the flow's pool of 64 threads
    vs a pool of 1).
    """
    from waxflow.connectors.serdes import deserializer
    from waxflow.dataflows.compiler import build_runner
    from waxflow.dataflows.spec import parse_flow
    from waxflow.operators.deserialize import decode
    from waxflow.records import RawRecord
    from waxflow.retry import RetryPolicy

    n = args.records
    bootstrap = args.bootstrap
    res = realtime.Resources(AdminClient({"bootstrap.servers": bootstrap}))
    tmp = Path(tempfile.mkdtemp(prefix="waxflow-comp-"))
    try:
        log_topic = res.log_topic("comp")
        flow_path = tmp / "flow.yaml"
        flow_path.write_text(realtime.flow_yaml("unused", "unused"))
        os.environ.update({"WAXFLOW_BOOTSTRAP": bootstrap, "WAXFLOW_EXECUTION_LOG": log_topic})
        flow = parse_flow(flow_path)
        runner = build_runner(flow)
        engine, exprs = runner.engine, runner.engine.exprs
        log = (getattr(runner, "resources", None) or runner._resources)()[0]
        raws = [RawRecord("in", i % 3, i, str(i).encode(), realtime.record(i),
                          1_700_000_000_000 + i, ()) for i in range(n)]
        jde, sde = deserializer("JSON"), deserializer("STRING")
        results: list[tuple[str, float]] = []

        def timed(name: str, fn: Any) -> Any:
            t0 = time.perf_counter()
            out = fn()
            results.append((name, (time.perf_counter() - t0) / n * 1e6))
            return out

        decoded = timed("deserialize: decode() (json.loads + Decoded)",
                        lambda: [decode(r, sde, jde, False, {}) for r in raws])
        execs = timed("ExecuteBatch._new_execution (sha256 id, uuid4 runId, dicts)",
                      lambda: [runner._new_execution(d) for d in decoded])

        def running_json() -> list[bytes]:
            out = []
            for e in execs:
                e.state = "RUNNING"
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
        timed("ExecuteBatch.__call__ on 500-record batches, pool of 64 threads",
              lambda: [runner(b) for b in batches])
        single = build_runner(flow)
        single.max_concurrency = 1  # its pool is created on first use
        timed("ExecuteBatch.__call__ on 500-record batches, pool of 1 thread",
              lambda: [single(b) for b in batches])
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
    finally:
        res.cleanup()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--bootstrap", default=os.environ.get("WAXFLOW_BOOTSTRAP", "127.0.0.1:9092"))
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
    res = realtime.Resources(AdminClient({"bootstrap.servers": bootstrap}))
    tmp = Path(tempfile.mkdtemp(prefix="waxflow-prof-"))
    try:
        topic = res.create(res.name("prof-in"), realtime.PARTITIONS)
        log = res.log_topic("prof")
        group = res.group("prof")
        realtime.produce_all(bootstrap, topic, args.records)
        flow_path = tmp / "flow.yaml"
        flow_path.write_text(realtime.flow_yaml(topic, group))
        os.environ.update({"WAXFLOW_BOOTSTRAP": bootstrap, "WAXFLOW_EXECUTION_LOG": log})

        from bytewax.testing import run_main

        from waxflow.dataflows import load_flow

        flow = load_flow(str(flow_path), stop_when_idle=realtime.IDLE)
        pool_profiles = [] if args.no_profile else install_pool_profiling()
        if args.gc_freeze:
            import gc

            gc.collect()
            gc.freeze()
        gc_pauses = install_gc_timing() if args.gc else None
        main_prof = cProfile.Profile(time.thread_time)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        if not args.no_profile:
            main_prof.enable()
        try:
            run_main(flow, epoch_interval=timedelta(milliseconds=200))
        finally:
            if not args.no_profile:
                main_prof.disable()
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        scan = realtime.scan_log(bootstrap, log)
        assert scan.first_ms is not None and scan.last_terminal_ms is not None
        busy = (scan.last_terminal_ms - scan.first_ms) / 1000
        print(f"{args.records:,} records, {len(scan.terminal_ids):,} executions terminal "
              f"({scan.success:,} SUCCESS); {'no profiler' if args.no_profile else 'cProfile'}")
        print(f"  first document -> last terminal {busy:.2f} s = {args.records / busy:,.0f} "
              f"executions/s; run_main wall {wall:.2f} s (incl. {realtime.IDLE:g} s idle stop)")
        user, system = ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime
        print(f"  process CPU {cpu:.2f} s = {cpu / args.records * 1e6:.0f} us/record "
              f"(user {user:.2f} s, sys {system:.2f} s)")
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

        by_module: dict[str, float] = defaultdict(float)
        for key, (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
            by_module[module_of(key)] += tt
        print("\nSELF TIME BY MODULE / LIBRARY (of profiled CPU)")
        for mod, tt in sorted(by_module.items(), key=lambda kv: kv[1], reverse=True)[:20]:
            print(f"  {tt / total:6.1%} {tt:7.2f} s  {mod}")
        table(st, total, 3, args.top, "TOP BY CUMULATIVE TIME (per thread profile; % of all "
              "profiled CPU)")
        table(st, total, 2, args.top, "TOP BY SELF TIME")
    finally:
        res.cleanup()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
