"""Where the time of a ``kafka.Trigger`` micro-batch goes (not a test).

Run: ``.venv/bin/python bench/profile_microbatch.py [--records 400000] [--max-records 200000]
[--target duckdb|parquet|ion|postgres] [--no-profile] [--whatif-awake] [--top 25]`` or
``.venv/bin/python bench/profile_microbatch.py --components [--records 200000]
[--target postgres]``. The postgres target uses the server of bench/microbatch.py
(``$WAXFLOW_BENCH_PG_URL``, else one started for the run).

Profile mode: the flow of bench/microbatch.py for ``--target`` runs in this process exactly
as ``waxflow run FLOW --stop-when-idle 2 -w 1`` does (``waxflow.dataflows.load_flow`` + Bytewax's
single-worker ``run_main``, 200 ms epochs) on a fresh topic / group / log topic (deleted at
the end). cProfile runs on the Bytewax worker thread (which is also where the tasks run: no
task has a timeout) with a **CPU-time** timer (``time.thread_time``), so percentages are of
the worker thread's CPU time; time spent *sleeping* is not CPU and is reported separately:
the batch source's ``next_batch`` is wrapped to count the calls that returned no batch and
the records they read, and the pauses Bytewax takes until ``next_awake()`` (the source asks
for 5 ms when a read came back short of 1,000 records, none after a full one).
``--whatif-awake`` clears, in this process only, the pause after any call that read 1,000
records or more (the source itself does that now; kept to check it).

Components mode (no Kafka, no Bytewax, no profiler): one batch of ``--records`` synthetic
records (the bench's ~200-byte JSON) through each stage of the product code, timed (wall
and the process's CPU, library threads included): the bulk path
(``waxflow.connectors.jsonbatch``) and the record-by-record path it falls back to, then the
Parquet and DuckDB targets (``duckdb.Load`` as the bench runs it, then the parts of its
insert with DuckDB's default threads and with the load's); with ``--target postgres`` also
``postgres.Load`` (MERGE on the coordinates) of that batch into a fresh table (every key new:
straight COPY), once more (every key seen: staging + ``INSERT … ON CONFLICT``, nothing
changed) and of the next batch (new keys again), each with the server's statement times.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import benchkit  # noqa: E402
import microbatch  # noqa: E402
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]  # noqa: E402

# --------------------------------------------------------------------------- profile mode
# C functions whose self time the module table shows by these names (the rest by their own)
BUILTINS = ("amazon", "_ion", "ionc", "cimpl.Consumer", "cimpl.Message", "cimpl.Producer",
            "json", "pyarrow", "duckdb", "posix")


STAGES = [  # (label, function key suffix) measured by cumulative time
    ("source: _BatchPartition.next_batch (consume, record tuples, cut)", "(next_batch)"),
    ("  of which _read (consume + a tuple per message)", "(_read)"),
    ("execute step: BatchExecutions (everything below)", "operators/microbatch.py"),
    ("  jsonbatch.encode (bulk path: one pyarrow parse + lines)", "(encode)"),
    ("  Storage.put_data (bulk path: write + fsync)", "(put_data)"),
    ("  decode() per record (json.loads + Decoded; per-record path)", "(decode)"),
    ("  jsonable() (recursive copy of each value)", "(jsonable)"),
    ("  Storage.put_records (ION write: simpleion.dumps + fsync)", "(put_records)"),
    ("  Engine.run (the tasks)", "operators/engine.py"),
    ("    waxflow.connectors.storage.read_records (ION read)", "(read_records)"),
    ("      waxflow.connectors.ion.to_python (IonPy -> plain values)", "(to_python)"),
    ("    waxflow.connectors.tabular.rows", "(rows)"),
    ("    waxflow.connectors.tabular.to_table (read + rows + from_pylist)", "(to_table)"),
    ("    pyarrow.parquet.write_table", "(write_table)"),
    ("    duckdb.Load.run (to_table + DuckDB)", "connectors/duckdb.py"),
    ("    postgres.Load.run (to_table, CSV, COPY, merge: client side)", "connectors/postgres.py"),
    ("      _copy_csv (Arrow's CSV writer + COPY; CPU only, not the wait for the server)",
     "(_copy_csv)"),
    ("      last_per_key (MERGE: the last record per key, in Python)", "(last_per_key)"),
    ("  LogBatch.write / wait (execution documents)", "(write)"),
    ("DoneSink / commit", "operators/checkpoint.py"),
]


def stage_table(st: pstats.Stats, total: float) -> None:
    print("\nSTAGES (cumulative CPU of the function, % of the worker thread's profiled CPU; "
          "nested rows are included in their parent)")
    stats = st.stats  # type: ignore[attr-defined]
    for label, suffix in STAGES:
        if suffix.endswith(".py"):
            # cumulative time of the file's outermost entry points: the max cum of its functions
            cands = [v[3] for k, v in stats.items() if k[0].endswith(suffix)]
            cum = max(cands) if cands else 0.0
        else:
            func = suffix.strip("()")
            cands = [(v[3], k) for k, v in stats.items()
                     if k[2] == func and ("main" in Path(k[0]).parts or func == "write_table")]
            cum = max(cands)[0] if cands else 0.0
        print(f"  {cum / total:6.1%} {cum:7.2f} s  {label}")


class SourceStats:
    def __init__(self) -> None:
        self.calls = 0
        self.empty_with_buffer = 0
        self.records_read_in_empty = 0
        self.seconds = 0.0
        self.paused = 0
        self.asleep = 0.0  # the pauses asked for by next_awake(), s


def instrument_source(whatif_awake: bool) -> SourceStats:
    """Count next_batch calls that emit nothing, and those followed by a pause (the source's
    ``next_awake()`` in the future: it read less than a full consume)."""
    from datetime import datetime

    from waxflow.connectors import kafka_batch

    stats = SourceStats()
    cls = kafka_batch._BatchPartition
    original = cls.next_batch

    def next_batch(self: Any) -> list[Any]:
        before = len(self._buffer.records)
        t0 = time.perf_counter()
        out = original(self)
        stats.seconds += time.perf_counter() - t0
        stats.calls += 1
        if not out and self._buffer.records:
            stats.empty_with_buffer += 1
            grew = len(self._buffer.records) - before
            stats.records_read_in_empty += grew
            if whatif_awake and grew >= 1000:
                self._awake = None  # the consumer had more: come back at once
        if self._awake is not None:
            stats.paused += 1
            stats.asleep += max(0.0, (self._awake - datetime.now().astimezone()
                                      ).total_seconds())
        return out

    cls.next_batch = next_batch  # type: ignore[method-assign]
    return stats


def profile(args: argparse.Namespace) -> int:
    server = microbatch.postgres_server() if args.target.startswith("postgres") else None
    try:
        return _profile(args)
    finally:
        if server is not None:
            server.remove()


def _profile(args: argparse.Namespace) -> int:
    bootstrap = args.bootstrap
    res = benchkit.Resources(AdminClient({"bootstrap.servers": bootstrap}))
    with benchkit.scratch(res, "waxflow-prof-mb-") as tmp:
        inp = benchkit.fresh_inputs(res, bootstrap, "prof", args.records)
        out_dir = tmp / "out"
        out_dir.mkdir()
        flow_path = tmp / "flow.yaml"
        flow_path.write_text(microbatch.flow_yaml(args.target, inp.topic, inp.group,
                                                  args.interval, args.max_records, out_dir))
        flow = benchkit.compile_flow(flow_path, bootstrap, inp.log, idle=microbatch.IDLE,
                                     extra_env={"WAXFLOW_STORAGE": str(tmp / "storage")})
        src = instrument_source(args.whatif_awake)
        prof = cProfile.Profile(time.thread_time)
        run = benchkit.run_in_process(flow, None if args.no_profile else prof)
        wall, thread_cpu, cpu = run.wall, run.thread_cpu, run.cpu

        docs = microbatch.terminal_docs(bootstrap, inp.log)
        counts = [d["trigger"]["messagesCount"] for d in docs]
        ends = [benchkit.iso_seconds(d["endDate"]) for d in docs]
        states = {d["state"] for d in docs}
        steady = ((sum(counts) - counts[0]) / (ends[-1] - ends[0])) if len(docs) > 1 else 0.0
        print(f"{args.records:,} records, target {args.target}, {len(docs)} batches "
              f"{counts} states {sorted(states)}; "
              f"{'cProfile (CPU timer)' if not args.no_profile else 'no profiler'}"
              f"{', what-if: no pause while reads are full' if args.whatif_awake else ''}")
        print(f"  steady rate (batches 2..K, endDate to endDate): {steady:,.0f} records/s; "
              f"run_main wall {wall:.2f} s (incl. {microbatch.IDLE:g} s idle stop)")
        print(f"  worker-thread CPU {thread_cpu:.2f} s = {thread_cpu / args.records * 1e6:.1f} "
              f"us/record; process CPU {cpu:.2f} s (librdkafka, Arrow/DuckDB threads included)")
        print(f"  source: {src.calls:,} next_batch calls, {src.seconds:.2f} s inside; "
              f"{src.empty_with_buffer:,} returned no batch while buffering "
              f"({src.records_read_in_empty:,} records read by those calls); "
              f"{src.paused:,} calls were followed by a pause (next_awake) = "
              f"{src.asleep:.2f} s asleep")
        if args.no_profile:
            return 0
        st = pstats.Stats(prof)
        total = st.total_tt  # type: ignore[attr-defined]
        print(f"  profiled CPU {total:.2f} s (cProfile inflates call-heavy Python code)")
        if args.out:
            st.dump_stats(args.out)
        stage_table(st, total)
        benchkit.module_table(st, total, BUILTINS, top=15, title="SELF TIME BY MODULE / LIBRARY")
        benchkit.table(st, total, 3, args.top, "TOP BY CUMULATIVE TIME")
        benchkit.table(st, total, 2, args.top, "TOP BY SELF TIME")
    return 0


# --------------------------------------------------------------------------- components mode
def components(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from waxflow.connectors import jsonbatch
    from waxflow.connectors.serdes import deserializer
    from waxflow.connectors.storage import Storage
    from waxflow.connectors.tabular import to_table
    from waxflow.operators.deserialize import decode
    from waxflow.records import RawRecord, RecordFields, headers_text

    n = args.records
    tmp = Path(tempfile.mkdtemp(prefix="waxflow-comp-mb-"))
    results: list[tuple[str, float, float]] = []

    def timed(name: str, fn: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        results.append((name, (time.perf_counter() - t0) / n * 1e6,
                        (time.process_time() - c0) / n * 1e6))
        return out

    try:
        recs: list[RecordFields] = [("topic", i % 3, i // 3, str(i).encode(),
                                    benchkit.record(i), 1_700_000_000_000 + i, ())
                                   for i in range(n)]
        storage = Storage(str(tmp / "storage"))
        timed("[floor] json.loads of each value",
              lambda: [json.loads(r[4] or b"null") for r in recs])

        # the bulk path (waxflow.operators.microbatch for JSON values with STRING keys)
        bulk = timed("bulk: jsonbatch.encode (one pyarrow parse + Ion-text lines)",
                     lambda: jsonbatch.encode(recs))
        timed("  of which jsonbatch.parse of the values", lambda: jsonbatch.parse(
            b"\n".join(r[4] for r in recs) + b"\n"))  # type: ignore[misc]
        uri = timed("bulk: Storage.put_data (write + fsync)",
                    lambda: storage.put_data("b/x.ion", bulk.data, bulk.table))
        table = timed("bulk: to_table, same process (kept table)", lambda: to_table(uri))
        timed("bulk: jsonbatch.read_table (another process / a retry after restart)",
              lambda: jsonbatch.read_table(Path(uri.removeprefix("file://")).read_bytes()))

        # the record-by-record path (other deserializers, or a batch bulk cannot prove)
        kde, vde = deserializer("STRING"), deserializer("JSON")

        def per_record() -> list[dict[str, Any]]:
            out = []
            for fields in recs:
                raw = RawRecord(*fields)
                d = decode(raw, kde, vde, fail=False, filters={})
                out.append({"key": d.key, "value": d.value, "topic": raw.topic,
                            "partition": raw.partition, "offset": raw.offset,
                            "timestamp": raw.timestamp, "headers": headers_text(raw.headers)})
            return out

        good = timed("per record: decode() into record dicts", per_record)
        uri2, _ = timed("per record: Storage.put_records (binary ION + fsync)",
                        lambda: storage.put_records("b/y.ion", good))
        timed("per record: to_table, same process (kept records -> Arrow)",
              lambda: to_table(uri2))

        # the tasks of bench/microbatch.py
        timed("pq.write_table (Parquet, default snappy)",
              lambda: pq.write_table(table, tmp / "x.parquet"))

        duckdb_components(timed, storage, table, n, tmp)
        server_lines = postgres_components(args, timed, storage, uri, n) if (
            args.target.startswith("postgres")) else []
        print(f"per-record cost of each stage, {n:,} records in one batch (us/record; wall "
              f"on this loaded machine, and the process's CPU; no profiler); load "
              f"{benchkit.load()} on {os.cpu_count()} CPUs")
        print(f"  Ion-text file {len(bulk.data) / n:.0f} B/record; binary ION file "
              f"{Path(uri2.removeprefix('file://')).stat().st_size / n:.0f} B/record")
        print(f"  {'wall':>8} {'cpu':>8}")
        for name, wall, cpu in results:
            print(f"  {wall:8.2f} {cpu:8.2f}  {name}")
        print("  ('cpu' is the process's CPU: pyarrow.json and DuckDB threads included)")
        for line in server_lines:
            print(line)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def duckdb_components(timed: Any, storage: Any, table: Any, n: int, tmp: Path) -> None:
    """Time ``duckdb.Load`` (APPEND, as bench/microbatch.py runs it) of a batch into a table
    that exists (the steady state: an earlier batch created it), then the same insert with
    DuckDB's default threads (one per core) and its parts (connect, INSERT, commit, close)."""
    import duckdb

    sys.path.insert(0, str(BENCH.parent))
    from tests.task_helpers import FakeContext, parse_task
    from waxflow.connectors import jsonbatch
    from waxflow.connectors.duckdb import LOAD_THREADS
    from waxflow.records import RecordFields

    def next_uri(k: int) -> str:
        recs: list[RecordFields] = [("topic", i % 3, i // 3, str(i).encode(),
                                     benchkit.record(i), 1_700_000_000_000 + i, ())
                                    for i in range(k * n, (k + 1) * n)]
        bulk = jsonbatch.encode(recs)
        assert bulk is not None, "the bench's records always take the bulk path"
        return str(storage.put_data(f"b/d{k}.ion", bulk.data, bulk.table))

    db = tmp / "load.duckdb"
    task = parse_task({"id": "load", "type": "duckdb.Load", "from": "{{ uri }}",
                       "database": str(db), "table": "events", "mode": "APPEND"})
    for k in range(3):  # batch 0 creates the table
        uri = next_uri(k + 1)
        ctx = FakeContext({"uri": uri, "flow": {"namespace": "bench", "id": "prof"},
                           "execution": {"id": f"e-{k}"}})
        label = "creates the table" if k == 0 else f"existing table, batch {k + 1}"
        timed(f"duckdb.Load APPEND ({LOAD_THREADS} DuckDB thread), {label}",
              lambda c=ctx: task.run(c))

    raw = tmp / "default.duckdb"
    with duckdb.connect(str(raw)) as con:
        con.register("b", table)
        con.execute("CREATE TABLE e AS SELECT * FROM b LIMIT 0")
    for threads in (None, LOAD_THREADS, None, LOAD_THREADS):
        name = "default threads" if threads is None else f"threads={threads}"
        con = timed(f"  DuckDB {name}: connect", lambda t=threads: duckdb.connect(
            str(raw), config={} if t is None else {"threads": t}))
        con.register("b", table)
        con.begin()
        timed(f"  DuckDB {name}: INSERT BY NAME from Arrow",
              lambda c=con: c.execute("INSERT INTO e BY NAME SELECT * FROM b").fetchall())
        timed(f"  DuckDB {name}: commit", con.commit)
        timed(f"  DuckDB {name}: close", con.close)


def postgres_components(args: argparse.Namespace, timed: Any, storage: Any, uri: str,
                        n: int) -> list[str]:
    """Time ``postgres.Load`` (MERGE) of the batch at ``uri``: into a fresh table, again, and
    the next batch; return the server's side as printable lines."""
    import psycopg

    from tests.task_helpers import FakeContext, parse_task
    from waxflow.connectors import jsonbatch
    from waxflow.records import RecordFields

    server = microbatch.postgres_server()
    lines = []
    try:
        nxt: list[RecordFields] = [("topic", i % 3, i // 3, str(i).encode(),
                                    benchkit.record(i), 1_700_000_000_000 + i, ())
                                   for i in range(n, 2 * n)]
        bulk = jsonbatch.encode(nxt)
        assert bulk is not None, "the bench's records always take the bulk path"
        uri2 = storage.put_data("b/z.ion", bulk.data, bulk.table)
        table = f"events_{os.getpid()}_{int(time.time())}"
        task = parse_task({"id": "load", "type": "postgres.Load", "from": "{{ uri }}",
                           "url": microbatch.PG["url"], "table": table, "mode": "MERGE"})
        for label, batch in [("every key new (creates the table)", uri),
                             ("again: every key seen, nothing changed", uri),
                             ("next batch: every key new", uri2)]:
            ctx = FakeContext({"uri": batch, "flow": {"namespace": "bench", "id": "prof"},
                               "execution": {"id": f"e-{label}"}})
            cpu0 = microbatch.server_begin()
            timed(f"postgres.Load MERGE, {label}", lambda c=ctx: task.run(c))
            side = microbatch.server_end(cpu0)
            per = 1e6 / n
            times = ", ".join(f"{k} {v * per:.2f}" for k, v in side.statements.items() if v)
            cpu = f"CPU {side.cpu * per:.2f}; " if side.cpu is not None else ""
            lines.append(f"  server, {label} (us/record): {cpu}{times or 'n/a'}")
        with psycopg.connect(microbatch.PG["url"], autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        if server is not None:
            server.remove()
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--records", type=int, default=None)
    ap.add_argument("--max-records", type=int, default=200_000)
    ap.add_argument("--interval", default="PT5S")
    ap.add_argument("--target", default="duckdb", choices=microbatch.TARGETS)
    benchkit.add_bootstrap(ap)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--whatif-awake", action="store_true")
    ap.add_argument("--components", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None, help="write the pstats here")
    args = ap.parse_args()
    if args.components:
        args.records = args.records or 200_000
        return components(args)
    args.records = args.records or 400_000
    return profile(args)


if __name__ == "__main__":
    sys.exit(main())
