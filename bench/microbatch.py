"""Micro-batch benchmark: ``kafka.Trigger`` into Parquet and DuckDB vs raw consume (not a test).

Run: ``.venv/bin/python bench/microbatch.py [--records 1000000] [--max-records 200000]
[--interval PT5S] [--targets ion,parquet,duckdb,postgres,postgres-again] [--repeat 1]
[--raw-batch 10000]``
against the broker at ``$WAXFLOW_BOOTSTRAP`` (default 127.0.0.1:9092). The ``postgres`` target
loads into ``$WAXFLOW_BENCH_PG_URL`` (a ``postgresql://`` URL with its password), else into a
PostgreSQL server it starts for the run (``tests/postgres_server.py``; Debian ``postgresql``).

One run, everything on fresh topics / consumer groups / log topics (deleted at the end):

1. ``--records`` JSON records of ~200 bytes (keyed) are produced round-robin to a fresh
   3-partition topic, *before* anything is timed.
2. **raw consume** (the floor of any batch pipeline): a plain confluent-kafka ``Consumer``
   (fresh group, the trigger's settings: ``read_committed``, ``earliest``, no auto commit,
   ``waxflow.connectors.kafka_batch.BULK_FETCH``),
   ``consume(--raw-batch, 0.5 s)`` in a loop, ``json.loads`` of every value, the decoded values
   kept in a list that is dropped every ``--max-records`` records (a batch pipeline holds its
   batch). Rate = records / (first record returned -> last record returned): connection and
   group set-up are excluded, as they are for the trigger below. It runs in this process.
3. **waxflow**, per target, ``waxflow run FLOW --stop-when-idle 2 -w 1`` (a child process, the
   way a user runs it) of a ``kafka.Trigger`` flow (``interval`` and ``maxRecords`` as given,
   JSON values) over the same topic with its own group:

   * ``ion``: the trigger alone (decode, store the ION file, RUNNING + terminal documents) with
     one trivial ``core.Set`` task: the cost the two targets below share;
   * ``parquet``: a ``core.Python`` task, :func:`parquet_task` below, that converts
     ``trigger.uri`` to Parquet with ``waxflow.connectors.tabular.to_parquet`` (one file per batch,
     named by the execution id);
   * ``duckdb``: ``duckdb.Load`` of ``trigger.uri`` into a fresh table, mode ``APPEND``;
   * ``postgres``: ``postgres.Load`` of ``trigger.uri`` into a fresh PostgreSQL table, mode
     ``MERGE`` on the Kafka coordinates (every key is new: COPY CSV straight into the table
     after one index probe per partition);
   * ``postgres-again`` (after ``postgres``): the same flow, with its own group, into the
     table ``postgres`` filled: every key exists already, as when a crashed run's batches are
     replayed (COPY into a staging table + ``INSERT … ON CONFLICT``, unchanged rows left as
     they are).

   For the postgres targets the server's side is printed too: the CPU seconds of all the
   server's processes during the run (when the bench started the server: its postmaster and
   the backends it reaped), and the execution time of each kind of statement
   (``pg_stat_statements``, enabled on the server the bench starts; on
   ``$WAXFLOW_BENCH_PG_URL`` when the extension is loaded there), per 100,000 records.

   Every run is checked: the terminal documents' ``messagesCount`` add up to ``--records``,
   all SUCCESS, and the Parquet files / DuckDB table hold exactly ``--records`` rows.

How waxflow time is taken (and why). The job is a single Bytewax worker: source, execute step
and sink run one after another on one thread, and librdkafka prefetches in the background. So
execution *k* ends, the source then consumes batch *k+1*, the step decodes and stores it,
runs the tasks, and execution *k+1* ends. **steady records/s = (records - records of batch 1)
/ (endDate of the last execution - endDate of the first)**: the interval covers exactly the
complete work (consume, decode, ION store, tasks, log writes, commit) of batches 2..K, and
nothing of process start-up (interpreter, imports, Bytewax, consumer set-up) or of the idle
wait of ``--stop-when-idle``. The alternative "first RUNNING document -> last endDate" is
wrong for a micro-batch source: the first RUNNING document is written only after batch 1 was
consumed, decoded and stored, so that span would count batch 1's records without its
consume time and overstate the rate. Also printed: records / (launch -> last endDate), which
includes start-up. ``endDate``/``startDate`` come from the documents (child's wall clock, same
host as this script). The per-batch breakdown splits each batch into *between executions*
(previous endDate -> this startDate: terminal-doc ack, commit, consume, decode, ION write)
and *execution* (startDate -> endDate: the tasks, from their attempt dates).

The machine may be small and shared (the broker runs on it too): the load average is printed;
``--repeat N`` runs the raw consume and every target N times and reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent

import benchkit  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]  # noqa: E402

from waxflow.connectors.kafka_batch import BULK_FETCH  # noqa: E402

IDLE = 2.0
TARGETS = ("ion", "parquet", "duckdb", "postgres", "postgres-again")
DEFAULT_TARGETS = ("ion", "parquet", "duckdb")
PG: dict[str, str] = {}  # the postgres target's "url" and "table" for this run


# --------------------------------------------------------------------------- the Parquet task
def parquet_task(context: Any, uri: str, dest: str) -> dict[str, Any]:
    """``core.Python`` task of the parquet target: the stored batch as one Parquet file."""
    import pyarrow.parquet as pq

    from waxflow.connectors.tabular import to_parquet

    path = to_parquet(uri, Path(dest))
    return {"path": str(path), "rows": pq.read_metadata(path).num_rows}


# --------------------------------------------------------------------------- flows
def flow_yaml(target: str, topic: str, group: str, interval: str, max_records: int,
              out_dir: Path) -> str:
    head = f"""\
id: bench-microbatch-{target}
namespace: bench
triggers:
  - id: batches
    type: kafka.Trigger
    topic: {topic}
    groupId: {group}
    keyDeserializer: STRING
    valueDeserializer: JSON
    interval: {interval}
    maxRecords: {max_records}
tasks:
"""
    if target == "ion":
        return head + """\
  - id: stored
    type: core.Set
    values:
      count: "{{ trigger.messagesCount }}"
"""
    if target == "parquet":
        return head + f"""\
  - id: parquet
    type: core.Python
    function: microbatch:parquet_task
    args:
      uri: "{{{{ trigger.uri }}}}"
      dest: "{out_dir}/{{{{ execution.id }}}}.parquet"
"""
    if target == "duckdb":
        return head + f"""\
  - id: load
    type: duckdb.Load
    from: "{{{{ trigger.uri }}}}"
    database: {out_dir / 'bench.duckdb'}
    table: events
    mode: APPEND
"""
    if target.startswith("postgres"):
        if target == "postgres" or "table" not in PG:
            PG["table"] = f"events_{uuid.uuid4().hex[:8]}"
        return head + f"""\
  - id: load
    type: postgres.Load
    from: "{{{{ trigger.uri }}}}"
    url: "{PG['url']}"
    table: {PG['table']}
    mode: MERGE
"""
    raise ValueError(target)


# --------------------------------------------------------------------------- the log
def terminal_docs(bootstrap: str, log_topic: str) -> list[dict[str, Any]]:
    """The last terminal document of every execution, by ``startDate``."""
    latest: dict[str, dict[str, Any]] = {}
    for d in benchkit.read_docs(bootstrap, log_topic, timeout=120):
        if d.get("terminal"):
            latest[d["id"]] = d
    return sorted(latest.values(), key=lambda d: benchkit.iso_seconds(d["startDate"]))


# --------------------------------------------------------------------------- raw consume
@dataclass
class RawResult:
    records: int
    span: float      # first record returned -> last record returned
    setup: float     # consumer created -> first record returned
    cpu: float

    @property
    def rate(self) -> float:
        return self.records / self.span

    def report(self) -> None:
        print(f"  raw consume + json.loads: {self.rate:>10,.0f} records/s "
              f"({self.records:,} records in {self.span:.2f} s, first record "
              f"{self.setup:.2f} s after start; CPU {self.cpu:.1f} s = "
              f"{self.cpu / self.records * 1e6:.1f} us/record)")


def raw_consume(bootstrap: str, topic: str, group: str, n: int, batch: int,
                hold: int) -> RawResult:
    loads = json.loads
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False, "enable.auto.offset.store": False,
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                  **BULK_FETCH})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(benchkit.PARTITIONS)])
    held: list[Any] = []
    done = 0
    first = last = 0.0
    deadline = time.monotonic() + 600
    try:
        while done < n and time.monotonic() < deadline:
            msgs = c.consume(batch, 0.5)
            if not msgs:
                continue
            for m in msgs:
                if m.error() is not None:
                    continue
                held.append(loads(m.value() or b"null"))
            done += len(msgs)
            if not first:
                first = time.perf_counter()
            last = time.perf_counter()
            if len(held) >= hold:
                held = []
    finally:
        c.close()
    if done < n:
        raise TimeoutError(f"raw consume read {done} of {n} records")
    return RawResult(done, last - first, first - t0, time.process_time() - cpu0)


# --------------------------------------------------------------------------- waxflow runs
@dataclass
class BatchDoc:
    count: int
    start: float
    end: float
    tasks: dict[str, float]


@dataclass
class WaxResult:
    target: str
    records: int
    launch: float
    exit_s: float
    cpu: float
    batches: list[BatchDoc]
    check: str
    server: ServerSide | None = None

    @property
    def steady_span(self) -> float:
        return self.batches[-1].end - self.batches[0].end

    @property
    def steady_records(self) -> int:
        return self.records - self.batches[0].count

    @property
    def rate(self) -> float:
        if len(self.batches) < 2:
            return float("nan")
        return self.steady_records / self.steady_span

    @property
    def launch_rate(self) -> float:
        return self.records / (self.batches[-1].end - self.launch)

    def report(self) -> None:
        b = self.batches
        print(f"  waxflow {self.target:<8} {self.rate:>10,.0f} records/s steady "
              f"({self.steady_records:,} records of batches 2..{len(b)} in "
              f"{self.steady_span:.2f} s) | from launch {self.launch_rate:,.0f}/s (first "
              f"execution started {b[0].start - self.launch:.2f} s after launch) | exit "
              f"{self.exit_s:.1f} s, child CPU {self.cpu:.1f} s = "
              f"{self.cpu / self.records * 1e6:.1f} us/record | {self.check}")
        prev = None
        for i, d in enumerate(b, 1):
            between = f"{d.start - prev:6.2f}" if prev is not None else "   n/a"
            tasks = ", ".join(f"{k} {v:.2f}" for k, v in d.tasks.items())
            print(f"    batch {i}: {d.count:>7,} records | between executions {between} s "
                  f"| execution {d.end - d.start:6.2f} s ({tasks})")
            prev = d.end
        if self.server is not None:
            self.server.report(self.records)


def run_waxflow(res: benchkit.Resources, bootstrap: str, topic: str, n: int, target: str,
                args: argparse.Namespace, tmp: Path) -> WaxResult:
    group = res.group(target)
    log = res.log_topic(target)
    out_dir = tmp / f"out-{target}-{uuid.uuid4().hex[:6]}"
    out_dir.mkdir()
    storage = tmp / f"storage-{target}-{uuid.uuid4().hex[:6]}"
    flow = tmp / f"flow-{target}.yaml"
    flow.write_text(flow_yaml(target, topic, group, args.interval, args.max_records, out_dir))
    env = benchkit.child_env(bootstrap, log, {"WAXFLOW_STORAGE": str(storage)}, paths=[BENCH])
    pg_cpu0 = server_begin() if target.startswith("postgres") else None
    run = benchkit.run_child(benchkit.waxflow_cmd(flow, IDLE, "-w", "1"), env, timeout=3600,
                             name=f"waxflow run ({target})")
    server = server_end(pg_cpu0) if target.startswith("postgres") else None
    docs = terminal_docs(bootstrap, log)
    ts = benchkit.iso_seconds
    batches = []
    for d in docs:
        tasks = {}
        for tr in d["taskRuns"]:
            att = tr["attempts"][-1] if tr["attempts"] else None
            if att and att["endDate"]:
                tasks[tr["taskId"]] = ts(att["endDate"]) - ts(att["startDate"])
        batches.append(BatchDoc(d["trigger"]["messagesCount"], ts(d["startDate"]),
                                ts(d["endDate"]), tasks))
    problems = []
    bad = [d["state"] for d in docs if d["state"] != "SUCCESS"]
    if bad:
        problems.append(f"{len(bad)} executions not SUCCESS "
                        f"({[d.get('error') for d in docs if d['state'] != 'SUCCESS'][:1]})")
    total = sum(b.count for b in batches)
    if total != n:
        problems.append(f"messagesCount sum {total:,} != {n:,}")
    rows = count_rows(target, out_dir)
    if rows is not None and rows != n:
        problems.append(f"{target} holds {rows:,} rows, want {n:,}")
    check = ("ok: " + (f"{rows:,} rows landed" if rows is not None else f"{total:,} records")
             ) if not problems else "INVALID: " + "; ".join(problems)
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(storage, ignore_errors=True)
    return WaxResult(target, n, run.launch, run.wall, run.cpu, batches, check, server)


def count_rows(target: str, out_dir: Path) -> int | None:
    if target == "parquet":
        import pyarrow.parquet as pq

        return sum(int(pq.read_metadata(p).num_rows) for p in out_dir.glob("*.parquet"))
    if target == "duckdb":
        import duckdb

        with duckdb.connect(str(out_dir / "bench.duckdb"), read_only=True) as con:
            row = con.execute("select count(*), count(distinct id) from events").fetchone()
        assert row is not None
        return int(row[0]) if row[0] == row[1] else -1
    if target.startswith("postgres"):
        import psycopg

        with psycopg.connect(PG["url"]) as conn:
            got = conn.execute(f"select count(*), count(distinct id) from {PG['table']}"
                               ).fetchone()
        assert got is not None
        return int(got[0]) if got[0] == got[1] else -1
    return None


def postgres_server() -> Any:
    """A PostgreSQL server for the postgres target (None when $WAXFLOW_BENCH_PG_URL is set),
    with ``pg_stat_statements`` where it can be had."""
    import psycopg

    if os.environ.get("WAXFLOW_BENCH_PG_URL"):
        PG["url"] = os.environ["WAXFLOW_BENCH_PG_URL"]
        server = None
    else:
        sys.path.insert(0, str(BENCH.parent))
        from tests.postgres_server import PostgresServer

        server = PostgresServer()
        print(f"postgres server started in {server.start():.1f} s on port {server.port}")
        PG["url"] = server.url
        PG["data"] = str(server.data)
        try:
            with psycopg.connect(server.url, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            server.stop()
            server.start()
        except (psycopg.Error, OSError) as exc:
            print(f"  (pg_stat_statements not enabled: {exc})")
    try:
        with psycopg.connect(PG["url"], autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
        PG["statements"] = "1"
    except psycopg.Error as exc:
        print(f"  (no server-side statement times: {str(exc).splitlines()[0]})")
    return server


# --------------------------------------------------------------------------- server side
STATEMENTS = [  # (label, how the statement's text starts), in pg_stat_statements
    ("COPY straight into the table", 'COPY "events_'),
    ("COPY into the staging table", 'COPY "waxflow_stage_'),
    ("INSERT … ON CONFLICT from staging", "WITH done AS (INSERT"),
    ("index probe (keys seen?)", "SELECT EXISTS (SELECT"),
]


@dataclass
class ServerSide:
    cpu: float | None             # CPU s of all the server's processes during the run
    statements: dict[str, float]  # label -> execution s (pg_stat_statements)

    def report(self, n: int) -> None:
        per = 100_000 / n
        cpu = (f"server CPU {self.cpu:.2f} s = {self.cpu * per:.2f} s per 100k records"
               if self.cpu is not None else "server CPU n/a (not the bench's own server)")
        times = ", ".join(f"{k} {v * per:.3f} s" for k, v in self.statements.items())
        print(f"    postgres: {cpu}; statement time per 100k records: {times or 'n/a'}")


def server_cpu() -> float | None:
    """CPU seconds so far of the bench's own PostgreSQL server: its postmaster, the children
    it reaped (backends that ended) and the running ones (Linux ``/proc``)."""
    if "data" not in PG:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    try:
        pid = int((Path(PG["data"]) / "postmaster.pid").read_text().split()[0])
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:  # a running child: user + system
                total += (int(fields[11]) + int(fields[12])) / tick
            elif stat.parent.name == str(pid):  # the postmaster, with its reaped children
                total += sum(int(f) for f in fields[11:15]) / tick
        return total
    except (OSError, ValueError, IndexError):
        return None


def server_begin() -> float | None:
    """Reset the statement statistics; the server's CPU seconds so far."""
    if PG.get("statements"):
        import psycopg

        with psycopg.connect(PG["url"], autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
    return server_cpu()


def server_end(cpu0: float | None) -> ServerSide:
    cpu1 = server_cpu()
    times: dict[str, float] = {}
    if PG.get("statements"):
        import psycopg

        with psycopg.connect(PG["url"], autocommit=True) as conn:
            rows = conn.execute("SELECT query, total_exec_time FROM pg_stat_statements "
                                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = "
                                "current_database())").fetchall()
        times = dict.fromkeys([lb for lb, _ in STATEMENTS] + ["everything else"], 0.0)
        for query, ms in rows:
            label = next((lb for lb, start in STATEMENTS if query.lstrip().startswith(start)),
                         "everything else")
            times[label] += ms / 1000
    return ServerSide(None if cpu0 is None or cpu1 is None else cpu1 - cpu0, times)


# --------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--max-records", type=int, default=200_000, help="trigger maxRecords")
    ap.add_argument("--interval", default="PT5S", help="trigger interval (ISO-8601)")
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help=f"comma-separated, of {', '.join(TARGETS)}")
    ap.add_argument("--raw-batch", type=int, default=10_000,
                    help="max records per consume() call of the raw consumer")
    ap.add_argument("--repeat", type=int, default=1)
    benchkit.add_bootstrap(ap)
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    if unknown := set(targets) - set(TARGETS):
        ap.error(f"unknown targets {sorted(unknown)}")
    n, bootstrap = args.records, args.bootstrap
    res = benchkit.Resources(AdminClient({"bootstrap.servers": bootstrap}), "bench-mb")
    print(f"micro-batch bench: {n:,} records x {len(benchkit.record(12345))} B JSON, "
          f"{benchkit.PARTITIONS} partitions, kafka.Trigger interval {args.interval} maxRecords "
          f"{args.max_records:,}, broker {bootstrap}, {os.cpu_count()} CPUs, "
          f"load {benchkit.load()}, run {res.run_id}")
    raws: list[RawResult] = []
    wax: dict[str, list[WaxResult]] = {t: [] for t in targets}
    if "postgres-again" in targets and ("postgres" not in targets or targets.index(
            "postgres") > targets.index("postgres-again")):
        ap.error("postgres-again loads into the table of postgres: list postgres first")
    pg_server = postgres_server() if any(t.startswith("postgres") for t in targets) else None
    with benchkit.scratch(res, "waxflow-bench-mb-", announce=True) as tmp:
        topic = res.create(res.name("in"), benchkit.PARTITIONS)
        secs = benchkit.produce_all(bootstrap, topic, n)
        print(f"produced {n:,} records to {topic} in {secs:.1f} s")
        for r in range(args.repeat):
            if args.repeat > 1:
                print(f"round {r + 1}/{args.repeat}")
            print(f"raw consume (consume({args.raw_batch}) + json.loads; load {benchkit.load()})")
            raws.append(raw_consume(bootstrap, topic, res.group("raw"), n, args.raw_batch,
                                    args.max_records))
            raws[-1].report()
            for target in targets:
                print(f"waxflow kafka.Trigger -> {target} (load {benchkit.load()})")
                wax[target].append(run_waxflow(res, bootstrap, topic, n, target, args, tmp))
                wax[target][-1].report()
    if pg_server is not None:
        pg_server.remove()

    med = statistics.median
    raw = med(r.rate for r in raws)
    note = f" (medians of {args.repeat} rounds)" if args.repeat > 1 else ""
    print(f"\nSUMMARY{note}; targets: >= 100,000 records/s and >= 70% of raw consume")
    raw_cpu = med(r.cpu for r in raws) / n * 100_000
    print(f"  raw consume + json.loads         {raw:>10,.0f} records/s"
          f"{'':>37} | CPU {raw_cpu:.2f} s per 100k records")
    valid = True
    for target, results in wax.items():
        rate = med(w.rate for w in results)
        ratio = rate / raw
        ok = all(w.check.startswith("ok") for w in results)
        valid &= ok
        runs = ", ".join(f"{w.rate:,.0f}" for w in results) if len(results) > 1 else ""
        cpu = med(w.cpu for w in results) / n * 100_000
        server = [w.server.cpu for w in results if w.server and w.server.cpu is not None]
        more = f" + server {med(server) / n * 100_000:.2f}" if server else ""
        goal = (f"; issue 17: >= 50,000 [{benchkit.verdict(rate >= 50_000)}]"
                if target == "postgres" else "")
        print(f"  waxflow -> {target:<14} {rate:>10,.0f} records/s  {ratio:6.1%} of raw "
              f"[{benchkit.verdict(rate >= 100_000)} / {benchkit.verdict(ratio >= 0.7)}{goal}]"
              f" | CPU {cpu:.2f}{more} s per 100k records"
              f"{'  runs: ' + runs if runs else ''}{'' if ok else '  INVALID'}")
    print(f"  load average at the end: {benchkit.load()} on {os.cpu_count()} CPUs (the broker "
          "shares them; other processes skew every number)")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
