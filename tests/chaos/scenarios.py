"""The chaos scenarios of issue 11, sized by their caller: ``tests/chaos`` runs them at CI
size, ``bench/chaos.py`` at full size and prints the dicts they return.

Each scenario asserts what waxflow promises and returns what it measured:

- :func:`broker_kill`: four jobs at once (realtime → core.Set, realtime → transactional
  ``kafka.Produce``, ``kafka.Trigger`` → ``duckdb.Load`` MERGE, share group → core.Set)
  while a steady producer writes; the broker is SIGKILLed and started again. Every job is
  still running afterwards, catches up and exits 0 at idle; one SUCCESS history per record;
  exactly-once ``read_committed`` output, no open transaction; committed offsets at the end.
- :func:`job_kills`: SIGKILLs of the job at random moments over a backlog (realtime with
  ``--processes 2``, and a transactional Produce flow): one SUCCESS id per record, no
  duplicate in the read_committed output, LSO == HWM, committed offsets at the end.
- :func:`network_stall`: a TCP proxy between job and broker stops forwarding (connections
  stay open) for longer than the consumer's session timeout, then forwards again: the job
  recovers and finishes, one SUCCESS per record.
- :func:`give_up`: the broker is killed and not restarted: batch and share-group jobs stop
  with one line once ``$WAXFLOW_BROKER_GIVE_UP`` has passed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from tests.chaos.tcp_proxy import TcpProxy
from tests.flow_helpers import (
    FlowProcess,
    finish,
    flow_env,
    job_lines,
    latest_by_id,
    log_documents,
    new_log_topic,
    produce_json,
    runs_by_id,
    start_flow,
    write_flow,
)
from tests.kafka_helpers import (
    Feeder,
    committed,
    create_topic,
    end_offsets,
    kill_hard,
    lso_hwm,
    read_all,
)
from waxflow.connectors.broker import LocalBroker, free_port
from waxflow.execution import execution_id

REPO = Path(__file__).resolve().parents[2]
PARTS = 3
NS = "chaos"

REALTIME_SET = """
id: {id}
namespace: chaos
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {src}
    groupId: {group}
    groupType: {group_type}
    valueDeserializer: JSON
    maxConcurrency: 32
    properties: {props}
tasks:
  - id: s
    type: core.Set
    values: {{n: "{{{{ trigger.value.id }}}}"}}
"""

REALTIME_PRODUCE = """
id: {id}
namespace: chaos
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {src}
    groupId: {group}
    maxConcurrency: 32
tasks:
  - id: out
    type: kafka.Produce
    topic: {dst}
    properties: {props}
    from: {{key: "{{{{ trigger.key }}}}", value: "{{{{ trigger.value }}}}"}}
"""

REALTIME_SLOW = """
id: {id}
namespace: chaos
triggers:
  - id: t
    type: kafka.RealtimeTrigger
    topic: {src}
    groupId: {group}
    valueDeserializer: JSON
    maxConcurrency: 8
tasks:
  - id: work
    type: core.Python
    function: "tests.flow_funcs:slow"
    args: {{ms: {ms}}}
"""

BATCH_DUCKDB = """
id: {id}
namespace: chaos
triggers:
  - id: t
    type: kafka.Trigger
    topic: {src}
    groupId: {group}
    valueDeserializer: JSON
    interval: PT1S
    maxRecords: 2000
tasks:
  - id: load
    type: duckdb.Load
    from: "{{{{ trigger.uri }}}}"
    database: {db}
    table: records
    mode: MERGE
    mergeKeys: [id]
"""


def _txn_props(txn_ms: int | None) -> str:
    return "{}" if txn_ms is None else f"{{transaction.timeout.ms: {txn_ms}}}"


def _json_value(i: int) -> bytes:
    return json.dumps({"id": i, "v": f"v{i}"}).encode()


@contextmanager
def own_broker(data_dir: Path | None = None, *, port: int | None = None,
               advertised_port: int | None = None) -> Iterator[LocalBroker]:
    """A broker of the scenario's own (free ports, 1 s share lock), stopped and wiped at the
    end: scenarios kill brokers and must never touch the shared one."""
    tmp = None
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="waxflow-chaos-broker-")
        data_dir = Path(tmp)
    broker = LocalBroker(data_dir / "broker", port=port or free_port(),
                         controller_port=free_port(), share_lock_ms=1000,
                         advertised_port=advertised_port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(wipe=True)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _log_topic(admin: AdminClient) -> str:
    """A fresh execution-log topic created up front as waxflow creates it (creating it inside
    a share group's first batch can take longer than the 1 s record lock)."""
    topic = new_log_topic()
    create_topic(admin, topic, 6, {"cleanup.policy": "compact",
                                   "min.compaction.lag.ms": str(7 * 24 * 3600 * 1000),
                                   "segment.ms": str(3600 * 1000)})
    return topic


@dataclass
class Job:
    """One flow of a scenario: its file, groups, log topic and process."""

    name: str
    flow_id: str
    path: Path
    group: str
    log_topic: str
    env: dict[str, str]
    proc: FlowProcess | None = None
    err: str = ""
    started: float = 0.0
    wall: float = 0.0

    def start(self, *args: str, idle: float | None = None) -> FlowProcess:
        self.started = time.monotonic()
        self.proc = start_flow(self.path, self.env, *args, idle=idle)
        return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _death(job: Job) -> str:
    """How a job ended: exit code and the tail of its stderr (librdkafka lines left out)."""
    assert job.proc is not None
    err = job.proc.captured()[1]
    tail = [ln for ln in err.splitlines() if not ln.startswith("%")][-40:]
    return f"exit {job.proc.poll()}\n" + "\n".join(tail)[-4000:]


def _job(name: str, template: str, tmp: Path, bootstrap: str, admin: AdminClient,
         **fields: Any) -> Job:
    flow_id = f"{name}-{uuid.uuid4().hex[:6]}"
    group = _uid(f"g-{name}")
    text = template.format(id=flow_id, group=group, **fields)
    path = write_flow(tmp, text, name=f"{flow_id}.yaml")
    env = flow_env(bootstrap, _log_topic(admin), PYTHONPATH=str(REPO),
                   WAXFLOW_LOG_LEVEL="INFO")
    return Job(name, flow_id, path, group, env["WAXFLOW_EXECUTION_LOG"], env)


# ---- checks --------------------------------------------------------------------------------

def record_ids(flow_id: str, topic: str, ends: dict[int, int]) -> set[str]:
    """The execution ids of every record of ``topic`` below ``ends`` (one per record)."""
    return {execution_id(NS, flow_id, topic, p, o) for p, end in ends.items()
            for o in range(end)}


def check_record_history(bootstrap: str, job: Job, topic: str, ends: dict[int, int]
                         ) -> dict[str, int]:
    """One execution id per record, each latest state SUCCESS; returns run counts."""
    docs = log_documents(bootstrap, job.log_topic)
    latest = latest_by_id(docs)
    expected = record_ids(job.flow_id, topic, ends)
    missing, extra = expected - set(latest), set(latest) - expected
    assert not missing and not extra, (
        f"{job.name}: {len(missing)} records without history, {len(extra)} unexpected ids;"
        f" job log:\n{job_lines(job.err)}")
    states = Counter(d["state"] for d in latest.values())
    bad = [d for d in latest.values() if d["state"] != "SUCCESS"]
    assert not bad, (f"{job.name}: {states}; first: {json.dumps(bad[0])[:2500]}\n"
                     f"job log:\n{job_lines(job.err)}")
    runs = runs_by_id(docs)
    return {"records": len(expected), "success": states["SUCCESS"],
            "rerun": sum(1 for r in runs.values() if len(r) > 1)}


def check_batch_history(bootstrap: str, job: Job, topic: str, ends: dict[int, int],
                        db: Path, n: int) -> dict[str, int]:
    """The SUCCESS batches cover every record exactly once (no gap, no overlap) and the
    DuckDB table holds each id once."""
    import duckdb

    latest = latest_by_id(log_documents(bootstrap, job.log_topic))
    states = Counter(d["state"] for d in latest.values())
    assert set(states) == {"SUCCESS"}, f"{job.name}: {states}"
    covered: dict[int, list[tuple[int, int]]] = {p: [] for p in ends}
    for d in latest.values():
        for key, (first, last) in d["trigger"]["offsets"].items():
            t, p = key.rsplit("/", 1)
            assert t == topic
            covered[int(p)].append((int(first), int(last)))
    for p, ranges in covered.items():
        ranges.sort()
        nxt = 0
        for first, last in ranges:
            assert first == nxt, f"{job.name}: partition {p} batches {ranges[:10]}..."
            nxt = last + 1
        assert nxt == ends[p], f"{job.name}: partition {p} covered to {nxt}, end {ends[p]}"
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows, distinct = con.execute(
            "select count(*), count(distinct id) from records").fetchone() or (0, 0)
    finally:
        con.close()
    assert rows == distinct == n, f"{job.name}: duckdb rows {rows}, distinct ids {distinct}"
    return {"records": n, "batches": len(latest), "success": states["SUCCESS"]}


def check_exactly_once(bootstrap: str, dst: str, n: int) -> dict[str, int]:
    """Every key ``k0..k{n-1}`` exactly once in the read_committed output; LSO == HWM."""
    keys = {f"k{i}".encode() for i in range(n)}
    seen = Counter(m.key() for m in read_all(bootstrap, dst, isolation="read_committed",
                                              timeout=120))
    raw = sum(1 for _ in read_all(bootstrap, dst, timeout=120))
    missing = keys - set(seen)
    dups = sum(c - 1 for c in seen.values() if c > 1)
    assert not missing and not dups, f"{len(missing)} inputs missing, {dups} duplicates"
    assert set(seen) == keys
    lso, hwm = lso_hwm(bootstrap, dst, PARTS)
    assert lso == hwm, f"a transaction was left open: LSO {lso} HWM {hwm}"
    return {"output": sum(seen.values()), "duplicates": dups, "aborted": raw - n}


def check_committed(bootstrap: str, job: Job, topic: str) -> dict[int, int]:
    ends = end_offsets(bootstrap, topic, PARTS)
    got = committed(bootstrap, job.group, topic, PARTS)
    assert got == ends, f"{job.name}: committed {got}, end {ends}"
    return ends


def _finish_all(jobs: list[Job], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for job in jobs:
        assert job.proc is not None
        job.err = finish(job.proc, timeout=max(5.0, deadline - time.monotonic()))
        job.wall = time.monotonic() - job.started


# ---- scenario (a): broker SIGKILL + restart under load ---------------------------------------

def broker_kill(tmp: Path, *, rate: int, down_s: float, kill_after: float = 5.0,
                feed_after: float = 10.0, idle: float = 30.0, txn_ms: int | None = None
                ) -> dict[str, Any]:
    """Four jobs at once on one topic; SIGKILL the broker ``kill_after`` s after they start,
    keep it down ``down_s`` s, start it again. See the module doc for what is asserted.
    The producer writes ``rate`` records/s from the jobs' start until ``feed_after`` s after
    the broker is back (however long the jobs take to start and the broker to restart), so
    the jobs are under load before, during and after the outage.
    ``txn_ms``: the Produce task's ``transaction.timeout.ms`` (default: waxflow's, 10 s)."""
    with own_broker(tmp) as broker:
        bootstrap = broker.bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap})
        src, dst = _uid("src"), _uid("dst")
        create_topic(admin, src, PARTS)
        create_topic(admin, dst, PARTS)
        db = tmp / "chaos.duckdb"
        rt = _job("rt-set", REALTIME_SET, tmp, bootstrap, admin, src=src,
                  group_type="CONSUMER", props="{}")
        prod = _job("rt-produce", REALTIME_PRODUCE, tmp, bootstrap, admin, src=src, dst=dst,
                    props=_txn_props(txn_ms))
        batch = _job("batch-duckdb", BATCH_DUCKDB, tmp, bootstrap, admin, src=src, db=db)
        share = _job("share-set", REALTIME_SET, tmp, bootstrap, admin, src=src,
                     group_type="SHARE", props="{}")
        jobs = [rt, prod, batch, share]
        feeder = Feeder(bootstrap, src, 10**9, rate=rate, parts=PARTS, value=_json_value)
        try:
            for job in jobs:
                job.start(idle=idle)
            feeder.start()
            started = time.monotonic()
            # the consumer-group jobs are working (a job still starting when the broker dies
            # fails its set-up, e.g. the instance-lock topic); the share job may still be
            # joining: a kill while its group initialises is part of the scenario
            _wait_terminal(bootstrap, [rt, prod, batch], timeout=120)
            time.sleep(max(0.0, kill_after - (time.monotonic() - started)))
            for job in jobs:
                assert job.alive(), f"{job.name} exited before the kill:\n" \
                                    f"{job_lines(job.proc.captured()[1] if job.proc else '')}"
            sent_at_kill = feeder.sent
            # whether the share job had done work (so had a client up) when the broker died
            share_worked = _has_terminal(bootstrap, share)
            kill_hard(broker)
            time.sleep(down_s)
            # log recovery after a SIGKILL, on a loaded 2-core machine, took over 90 s once
            restart_s = broker.start(timeout=300)
            time.sleep(3)
            for job in jobs:  # every job rode the outage out
                assert job.alive(), f"{job.name} died in the outage:\n{_death(job)}"
            time.sleep(max(0.0, feed_after - 3))
            feeder.stop()
            feeder.finish()
            n = feeder.sent
            _finish_all(jobs, timeout=300)
        finally:
            for job in jobs:
                job.kill()
        ends = check_committed(bootstrap, rt, src)
        assert sum(ends.values()) == n
        check_committed(bootstrap, prod, src)
        check_committed(bootstrap, batch, src)
        out: dict[str, Any] = {"records": n, "rate": rate, "down_s": down_s,
                               "restart_s": round(restart_s, 1), "sent_at_kill": sent_at_kill,
                               "share_worked_at_kill": share_worked}
        out["rt-set"] = check_record_history(bootstrap, rt, src, ends)
        out["rt-produce"] = {**check_record_history(bootstrap, prod, src, ends),
                             **check_exactly_once(bootstrap, dst, n)}
        out["batch-duckdb"] = check_batch_history(bootstrap, batch, src, ends, db, n)
        out["share-set"] = check_record_history(bootstrap, share, src, ends)
        for job in jobs:
            out[job.name]["wall_s"] = round(job.wall, 1)
            lines = job_lines(job.err, limit=len(job.err))  # every line, not the last 3 KB
            out[job.name]["outage_lines"] = (lines.count("broker unreachable"),
                                             lines.count("broker reachable again"))
        return out


# ---- scenario (b): SIGKILL the job at random moments ----------------------------------------

def _kill_loop(job: Job, kills: int, rng: random.Random, args: tuple[str, ...],
               window: tuple[float, float], kill_log: list[float]) -> None:
    for _ in range(kills):
        proc = job.start(*args)
        time.sleep(rng.uniform(*window))
        assert proc.poll() is None, f"{job.name} exited by itself:\n" \
                                    f"{job_lines(proc.captured()[1])}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_log.append(time.monotonic())


def job_kills(tmp: Path, bootstrap: str, *, n: int, kills: int, seed: int = 11,
              window: tuple[float, float] = (2.0, 7.0), work_ms: int = 5) -> dict[str, Any]:
    """Two jobs over a backlog of ``n`` records each, SIGKILLed ``kills`` times at random
    moments (``window`` s after each start), then run to idle."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    src_rt, src_p, dst = _uid("src-rt"), _uid("src-p"), _uid("dst")
    for topic in (src_rt, src_p, dst):
        create_topic(admin, topic, PARTS)
    produce_json(bootstrap, src_rt, [{"id": i} for i in range(n)], partitions=PARTS)
    Feeder(bootstrap, src_p, n, rate=10**9, parts=PARTS, value=_json_value).run()
    rt = _job("rt-procs", REALTIME_SLOW, tmp, bootstrap, admin, src=src_rt, ms=work_ms)
    prod = _job("produce", REALTIME_PRODUCE, tmp, bootstrap, admin, src=src_p, dst=dst,
                props=_txn_props(None))
    rng = random.Random(seed)
    kill_times: dict[str, list[float]] = {"rt-procs": [], "produce": []}
    errors: list[BaseException] = []

    def loop(job: Job, args: tuple[str, ...], r: random.Random) -> None:
        try:
            _kill_loop(job, kills, r, args, window, kill_times[job.name])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(rt, ("--processes", "2"),
                                                   random.Random(rng.random()))),
               threading.Thread(target=loop, args=(prod, ("-w", "2"),
                                                   random.Random(rng.random())))]
    t0 = time.monotonic()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        rt.start("--processes", "2", idle=5)
        prod.start("-w", "2", idle=5)
        _finish_all([rt, prod], timeout=300)
    finally:
        rt.kill()
        prod.kill()
    ends_rt = check_committed(bootstrap, rt, src_rt)
    ends_p = check_committed(bootstrap, prod, src_p)
    assert sum(ends_rt.values()) == sum(ends_p.values()) == n
    return {"records": n, "kills": {k: len(v) for k, v in kill_times.items()},
            "wall_s": round(time.monotonic() - t0, 1),
            "rt-procs": check_record_history(bootstrap, rt, src_rt, ends_rt),
            "produce": {**check_record_history(bootstrap, prod, src_p, ends_p),
                        **check_exactly_once(bootstrap, dst, n)}}


# ---- scenario (c): the network path stalls (no connection closed) ---------------------------

def network_stall(tmp: Path, *, n: int, rate: int, pause_s: float, session_ms: int,
                  pause_after: float = 6.0, idle: float = 20.0) -> dict[str, Any]:
    """A realtime job reaches its broker only through a proxy that stops forwarding for
    ``pause_s`` (longer than the consumer's ``session.timeout.ms``) and then forwards again."""
    upstream = free_port()
    with TcpProxy(upstream) as proxy, own_broker(tmp, port=upstream,
                                                 advertised_port=proxy.port) as broker:
        bootstrap = f"127.0.0.1:{proxy.port}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        src = _uid("src")
        create_topic(admin, src, PARTS)
        job = _job("stall", REALTIME_SET, tmp, bootstrap, admin, src=src,
                   group_type="CONSUMER", props=f"{{session.timeout.ms: {session_ms}}}")
        feeder = Feeder(bootstrap, src, n, rate=rate, parts=PARTS, value=_json_value)
        try:
            job.start(idle=idle)
            feeder.start()
            time.sleep(pause_after)
            assert job.alive(), job_lines(job.proc.captured()[1] if job.proc else "")
            sent_at_pause = feeder.sent
            proxy.pause()
            time.sleep(pause_s)
            assert job.alive(), "the job died while the path was stalled:\n" + \
                job_lines(job.proc.captured()[1] if job.proc else "")
            proxy.resume()
            feeder.finish()
            _finish_all([job], timeout=240)
        finally:
            proxy.resume()
            job.kill()
        ends = check_committed(bootstrap, job, src)
        assert sum(ends.values()) == n
        assert broker.running()
        return {"records": n, "pause_s": pause_s, "session_ms": session_ms,
                "sent_at_pause": sent_at_pause, "connections": proxy.connections,
                "wall_s": round(job.wall, 1),
                "stall": check_record_history(bootstrap, job, src, ends)}


# ---- the give-up bound ------------------------------------------------------------------------

def give_up(tmp: Path, *, n: int, give_up_s: float) -> dict[str, Any]:
    """Batch and share-group jobs run, the broker is killed for good: each exits 1 with one
    line naming the bound, within the bound plus a margin."""
    with own_broker(tmp) as broker:
        bootstrap = broker.bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap})
        src = _uid("src")
        create_topic(admin, src, PARTS)
        db = tmp / "giveup.duckdb"
        batch = _job("batch-giveup", BATCH_DUCKDB, tmp, bootstrap, admin, src=src, db=db)
        share = _job("share-giveup", REALTIME_SET, tmp, bootstrap, admin, src=src,
                     group_type="SHARE", props="{}")
        jobs = [batch, share]
        for job in jobs:
            job.env["WAXFLOW_BROKER_GIVE_UP"] = str(give_up_s)
        produce_json(bootstrap, src, [{"id": i} for i in range(n)], partitions=PARTS)
        out: dict[str, Any] = {"give_up_s": give_up_s}
        try:
            for job in jobs:
                job.start()
            _wait_terminal(bootstrap, jobs, timeout=150)
            kill_hard(broker)
            killed = time.monotonic()
            for job in jobs:
                assert job.proc is not None
                try:
                    _o, job.err = job.proc.communicate(timeout=give_up_s + 60)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"{job.name} still waits {give_up_s + 60:.0f}s after "
                                         f"the broker died:\n{job_lines(job.proc.captured()[1])}"
                                         ) from None
                took = time.monotonic() - killed
                assert job.proc.returncode == 1, (job.proc.returncode, job_lines(job.err))
                stops = [ln for ln in job.err.splitlines() if "stayed unreachable" in ln]
                assert len(stops) == 1, job_lines(job.err)
                assert give_up_s <= took, f"{job.name} stopped after {took:.1f}s"
                out[job.name] = {"exit": job.proc.returncode, "after_s": round(took, 1),
                                 "line": stops[0][:200]}
        finally:
            for job in jobs:
                job.kill()
        return out


def _has_terminal(bootstrap: str, job: Job) -> bool:
    """Whether the job's log has a terminal document (it works)."""
    try:
        docs = log_documents(bootstrap, job.log_topic)
    except (TimeoutError, RuntimeError):
        docs = []
    return any(d.get("terminal") for d in docs)


def _wait_terminal(bootstrap: str, jobs: list[Job], timeout: float) -> None:
    """Wait until each job has a terminal document in its log (it works)."""
    deadline = time.monotonic() + timeout
    todo = list(jobs)
    while todo:
        assert time.monotonic() < deadline, "no terminal document from " + "; ".join(
            f"{j.name}:\n{job_lines(j.proc.captured()[1] if j.proc else '')}" for j in todo)
        for job in list(todo):
            assert job.alive(), job_lines(job.proc.captured()[1] if job.proc else "")
            if _has_terminal(bootstrap, job):
                todo.remove(job)
        time.sleep(0.5)


Scenario = Callable[..., dict[str, Any]]
