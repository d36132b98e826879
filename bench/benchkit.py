"""What the benches share: the ~200-byte JSON record, the broker resources one run creates
(deleted at the end) and its scratch folder, bulk producing of the input, reading a topic
to its end, running ``waxflow run`` as a child process (wall and CPU time) or a flow in this
process, load average and child CPU time, and the cProfile tables of the profile_* scripts."""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the benches run as scripts from bench/
    sys.path.insert(0, str(REPO))
WAXFLOW = str(Path(sys.executable).with_name("waxflow"))
PARTITIONS = 3
LOG_PARTITIONS = 6


def add_bootstrap(ap: argparse.ArgumentParser) -> None:
    """The ``--bootstrap`` option (default ``$WAXFLOW_BOOTSTRAP`` or 127.0.0.1:9092)."""
    ap.add_argument("--bootstrap", default=os.environ.get("WAXFLOW_BOOTSTRAP", "127.0.0.1:9092"))


def padded(doc: dict[str, Any], size: int = 200) -> bytes:
    """``doc`` as compact JSON, its ``note`` field padded with x's to about ``size`` bytes."""
    raw = json.dumps(doc, separators=(",", ":"))
    doc["note"] = "x" * max(0, size - len(raw))
    return json.dumps(doc, separators=(",", ":")).encode()


def record(i: int) -> bytes:
    """One ~200-byte JSON record; 3 in 4 are orders, 1 in 4 refunds."""
    return padded({
        "id": i, "type": "refund" if i % 4 == 3 else "order",
        "customer": f"cust-{i % 10007:05d}", "amount": round(10 + (i % 9973) * 0.37, 2),
        "qty": 1 + i % 5, "currency": "EUR", "country": "DE", "sku": f"sku-{i % 997:06d}",
        "ts": "2024-05-01T12:00:00.000Z", "note": "",
    })


def iso_seconds(text: str) -> float:
    """An ISO-8601 date (an execution document's ``startDate``...) as epoch seconds."""
    return datetime.fromisoformat(text).timestamp()


def verdict(met: bool) -> str:
    """How a summary line marks a target."""
    return "met" if met else "NOT met"


# --------------------------------------------------------------------------- broker resources
@dataclass
class Resources:
    """Everything this run created on the broker, deleted at the end.

    ``report_group_errors=False``: a consumer group that cannot be deleted is passed over
    silently (share groups may refuse; they hold no data).
    """

    admin: AdminClient
    prefix: str = "bench"
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    report_group_errors: bool = True

    def name(self, kind: str) -> str:
        return f"{self.prefix}-{kind}-{self.run_id}-{uuid.uuid4().hex[:4]}"

    def group(self, kind: str) -> str:
        g = self.name(f"g-{kind}")
        self.groups.append(g)
        return g

    def create(self, topic: str, partitions: int, config: dict[str, str] | None = None) -> str:
        self.topics.append(topic)
        self.admin.create_topics([NewTopic(topic, partitions, 1, config=config or {})]
                                 )[topic].result(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            md = self.admin.list_topics(topic, timeout=5).topics.get(topic)
            if md and md.error is None and len(md.partitions) == partitions and all(
                    p.leader >= 0 for p in md.partitions.values()):
                return topic
            time.sleep(0.1)
        raise TimeoutError(f"topic {topic} not ready")

    def log_topic(self, kind: str) -> str:
        """An execution-log topic as ``ensure_topic`` creates it, plus LogAppendTime
        timestamps (the job then finds and keeps it)."""
        return self.create(self.name(f"log-{kind}"), LOG_PARTITIONS, {
            "cleanup.policy": "compact", "min.compaction.lag.ms": str(7 * 24 * 3600 * 1000),
            "segment.ms": str(3600 * 1000), "message.timestamp.type": "LogAppendTime"})

    def cleanup(self) -> None:
        if self.topics:
            for t, fut in self.admin.delete_topics(self.topics).items():
                try:
                    fut.result(timeout=30)
                except KafkaException as exc:
                    print(f"  (could not delete topic {t}: {exc})")
        if self.groups:
            for g, fut in self.admin.delete_consumer_groups(self.groups).items():
                try:
                    fut.result(timeout=30)
                except KafkaException as exc:
                    if (self.report_group_errors
                            and exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND):
                        print(f"  (could not delete group {g}: {exc})")


@contextmanager
def scratch(res: Resources, prefix: str, *, announce: bool = False) -> Iterator[Path]:
    """A temporary folder for the run; on the way out the broker resources of ``res`` are
    deleted (``announce``: with a line saying how many) and the folder removed."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if announce:
            print(f"cleaning up: {len(res.topics)} topics, {len(res.groups)} consumer groups")
        res.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- producing, reading
def produce_all(bootstrap: str, topic: str, n: int, *,
                value: Callable[[int], bytes] = record,
                key: Callable[[int], bytes] = lambda i: str(i).encode()) -> float:
    """Produce records 0..n-1 round-robin over the partitions (not timed by the benches:
    the input is in place before anything is measured); returns seconds taken."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4",
                  "batch.num.messages": 10000, "queue.buffering.max.messages": 500000})
    start = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=value(i), key=key(i), partition=i % PARTITIONS)
                break
            except BufferError:
                p.poll(0.01)
        if i % 10000 == 0:
            p.poll(0)
    if p.flush(120) != 0:
        raise RuntimeError("input records not delivered")
    return time.perf_counter() - start


@dataclass
class Inputs:
    """A fresh input topic already holding the records, a log topic and a group for one job."""

    topic: str
    log: str
    group: str
    produce_s: float


def fresh_inputs(res: Resources, bootstrap: str, kind: str, n: int) -> Inputs:
    """Input topic (``PARTITIONS`` partitions) with records 0..n-1, log topic and group."""
    topic = res.create(res.name(f"in-{kind}"), PARTITIONS)
    log = res.log_topic(kind)
    group = res.group(kind)
    return Inputs(topic, log, group, produce_all(bootstrap, topic, n))


def read_to_end(bootstrap: str, topic: str, *, isolation: str = "read_committed",
                timeout: float = 300.0) -> Iterator[Message]:
    """Every record of ``topic``, from the beginning up to the high watermarks seen at the
    start (assigned, not subscribed: no consumer group is left behind on the broker)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-reader-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": isolation})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions]
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                for tp in parts}
        todo = {p for p, e in ends.items() if e > 0}
        c.assign(parts)
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for m in c.consume(5000, 0.5):
                part = int(m.partition() or 0)
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(part)
                        continue
                    raise RuntimeError(str(err))
                yield m
                if int(m.offset() or 0) + 1 >= ends[part]:
                    todo.discard(part)
        if todo:
            raise TimeoutError(f"did not reach the end of {topic}")
    finally:
        c.close()


def read_docs(bootstrap: str, topic: str, *, isolation: str = "read_committed",
              timeout: float = 300.0) -> list[dict[str, Any]]:
    """Every document of an execution-log topic (JSON), in the order read."""
    return [json.loads(m.value() or b"null")
            for m in read_to_end(bootstrap, topic, isolation=isolation, timeout=timeout)]


# --------------------------------------------------------------------------- child processes
def child_env(bootstrap: str, log_topic: str, extra: dict[str, str] | None = None, *,
              paths: Sequence[Path] = ()) -> dict[str, str]:
    """This environment for a ``waxflow`` child: broker, log topic, warnings only, the repo
    (and ``paths``) on ``PYTHONPATH``, plus ``extra``."""
    return {**os.environ, "WAXFLOW_BOOTSTRAP": bootstrap, "WAXFLOW_EXECUTION_LOG": log_topic,
            "WAXFLOW_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(str(p) for p in (REPO, *paths)), **(extra or {})}


def waxflow_cmd(flow: Path, idle: float, *more: str) -> list[str]:
    """``waxflow run FLOW --stop-when-idle IDLE`` plus ``more`` options, the repository's
    modules compiled first (:func:`compile_repo`)."""
    compile_repo()
    return [WAXFLOW, "run", str(flow), "--stop-when-idle", str(idle), *more]


#: the folders of the package (``waxflow/`` and the ones its subpackages link to)
PACKAGE_DIRS = ("waxflow", "dataflows", "operators", "connectors", "recovery")


def compile_repo() -> None:
    """Write the bytecode of every module of the repository whose ``.pyc`` is missing or
    stale, as installing the wheel does (pip compiles it): under
    ``PYTHONDONTWRITEBYTECODE=1`` a source tree edited since its last compilation would
    otherwise be compiled again by every child, at start-up (measured: ~0.13 s of CPU per
    process with 60 stale modules), which a peer installed from its wheels never pays."""
    import compileall

    for folder in PACKAGE_DIRS:
        compileall.compile_dir(REPO / folder, quiet=1)


@dataclass
class ChildRun:
    launch: float  # wall-clock time (epoch s) just before the launch
    wall: float    # launch -> exit, s
    cpu: float     # user + system CPU s of the child


def run_child(cmd: list[str], env: dict[str, str], *, timeout: float, name: str) -> ChildRun:
    """Run ``cmd`` to its end; raise with the tail of its stderr unless it exits 0."""
    cpu0 = child_cpu()
    launch = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return ChildRun(launch, wall, child_cpu() - cpu0)


def load() -> str:
    """The 1-minute load average."""
    return f"{os.getloadavg()[0]:.1f}"


def child_cpu() -> float:
    """CPU seconds of every waited-for child process so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- in this process
def compile_flow(flow_path: Path, bootstrap: str, log_topic: str, *, idle: float,
                 extra_env: dict[str, str] | None = None) -> Any:
    """The Dataflow of ``waxflow run FLOW --stop-when-idle IDLE``, compiled in this process
    with the broker and log topic (and ``extra_env``) set in its environment."""
    os.environ.update({"WAXFLOW_BOOTSTRAP": bootstrap, "WAXFLOW_EXECUTION_LOG": log_topic,
                       **(extra_env or {})})
    from waxflow.dataflows import load_flow

    return load_flow(str(flow_path), stop_when_idle=idle)


@dataclass
class InProcessRun:
    wall: float        # run_main, s
    thread_cpu: float  # CPU s of this (the Bytewax worker) thread
    user: float        # CPU s of the whole process
    system: float

    @property
    def cpu(self) -> float:
        return self.user + self.system


def run_in_process(flow: Any, profiler: cProfile.Profile | None = None) -> InProcessRun:
    """Run a compiled flow to its end as ``waxflow run -w 1`` does (Bytewax's single-worker
    ``run_main``, 200 ms epochs) in this thread, under ``profiler`` if given."""
    from bytewax.testing import run_main

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0, c0 = time.perf_counter(), time.thread_time()
    if profiler is not None:
        profiler.enable()
    try:
        run_main(flow, epoch_interval=timedelta(milliseconds=200))  # type: ignore[no-untyped-call]
    finally:
        if profiler is not None:
            profiler.disable()
    wall, thread_cpu = time.perf_counter() - t0, time.thread_time() - c0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    return InProcessRun(wall, thread_cpu, ru1.ru_utime - ru0.ru_utime,
                        ru1.ru_stime - ru0.ru_stime)


# --------------------------------------------------------------------------- profile tables
def _below(parts: tuple[str, ...], anchor: str) -> str | None:
    if anchor not in parts:
        return None
    idx = len(parts) - 1 - parts[::-1].index(anchor)
    return "/".join(parts[idx + 1:])


def where(key: tuple[str, int, str]) -> str:
    """A cProfile function key as ``path-below-site-packages-or-repo:line(function)``."""
    file, line, func = key
    if file == "~":
        return func
    parts = Path(file).parts
    for anchor in ("site-packages", "main", "python3.11"):
        below = _below(parts, anchor)
        if below is not None:
            return f"{below}:{line}({func})"
    return f"{file}:{line}({func})"


def module_of(key: tuple[str, int, str], builtins: Sequence[str], other: str | None) -> str:
    """The library (site-packages), repo file or stdlib module of a cProfile function key;
    a C builtin as ``builtin X`` for the first of ``builtins`` in its name, else as ``other``
    (by default its own name)."""
    file, _, func = key
    if file == "~":
        name = func.strip("<>")
        for known in builtins:
            if known in name:
                return f"builtin {known}"
        return other if other is not None else f"builtin {name.split(' ')[-1][:60]}"
    parts = Path(file).parts
    if "site-packages" in parts:
        i = parts.index("site-packages")
        return parts[i + 1].removesuffix(".py")
    below = _below(parts, "main")
    if below is not None:
        return below
    return "stdlib " + Path(file).stem


def module_table(st: pstats.Stats, total: float, builtins: Sequence[str], *, top: int,
                 title: str, other: str | None = None) -> None:
    """Print self time summed by :func:`module_of`, the ``top`` largest."""
    by_module: dict[str, float] = {}
    for key, (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        mod = module_of(key, builtins, other)
        by_module[mod] = by_module.get(mod, 0.0) + tt
    print(f"\n{title}")
    for mod, tt in sorted(by_module.items(), key=lambda kv: kv[1], reverse=True)[:top]:
        print(f"  {tt / total:6.1%} {tt:7.2f} s  {mod}")


def table(st: pstats.Stats, total: float, sort: int, top: int, title: str) -> None:
    """Print the ``top`` functions of a profile by column ``sort`` (2 self, 3 cumulative)."""
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][sort], reverse=True)[:top]  # type: ignore[attr-defined]
    print(f"\n{title}")
    print(f"  {'self%':>6} {'cum%':>6} {'self s':>7} {'cum s':>7} {'calls':>9}  function")
    for key, (_cc, nc, tt, ct, _callers) in rows:
        print(f"  {tt / total:6.1%} {ct / total:6.1%} {tt:7.2f} {ct:7.2f} {nc:9,}  {where(key)}")


# --------------------------------------------------------------------------- peer venvs
def ensure_venv(path: Path, requirement: str, module: str, version: str) -> Path:
    """The python of a venv at ``path`` where ``module.__version__ == version``, created
    (``python3.11 -m venv``) and ``pip install requirement`` on demand; for peers whose pins
    may conflict with ours (bench/peers.py)."""
    python = path / "bin" / "python"
    probe = [str(python), "-c", f"import {module}; print({module}.__version__)"]
    if python.exists():
        got = subprocess.run(probe, capture_output=True, text=True)
        if got.returncode == 0 and got.stdout.strip() == version:
            return python
    print(f"  setting up {path} with {requirement} (once) ...", flush=True)
    if not python.exists():
        subprocess.run([shutil.which("python3.11") or sys.executable, "-m", "venv", str(path)],
                       check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True)
    got = subprocess.run(probe, capture_output=True, text=True, check=True)
    if got.stdout.strip() != version:
        raise RuntimeError(f"{path}: {module} {got.stdout.strip()} installed, want {version}")
    return python


# --------------------------------------------------------------------------- per-thread CPU
def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc/*/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


class ThreadCpu:
    """Samples the CPU time of every thread of a process tree (Linux /proc) while it runs:
    ``by_thread()`` is CPU s per (process index, thread name) at the last sample (threads
    that ended before it are counted up to their last sample; at most ``every`` s lost)."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        import threading

        self.pid = pid
        self.every = every
        self.seen: dict[tuple[int, int], tuple[str, float]] = {}  # (pid, tid) -> name, cpu
        self.order: list[int] = []  # processes in the order first seen
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._run, name="thread-cpu", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for p in _descendants(self.pid):
            try:
                tasks = list(Path(f"/proc/{p}/task").iterdir())
            except OSError:
                continue
            for task in tasks:
                try:
                    stat = (task / "stat").read_text()
                except OSError:
                    continue
                name = stat[stat.index("(") + 1:stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                cpu = (int(fields[11]) + int(fields[12])) / self._tick
                if p not in self.order:
                    self.order.append(p)
                self.seen[(p, int(task.name))] = (name, cpu)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def by_thread(self) -> dict[tuple[int, str], float]:
        out: dict[tuple[int, str], float] = {}
        for (p, _tid), (name, cpu) in self.seen.items():
            key = (self.order.index(p), name)
            out[key] = out.get(key, 0.0) + cpu
        return out

    def by_name(self) -> list[tuple[str, int, float, float]]:
        """(thread name, how many threads, their CPU s, the busiest one's), busiest first."""
        groups: dict[str, list[float]] = {}
        for (_p, _tid), (name, cpu) in self.seen.items():
            groups.setdefault(name, []).append(cpu)
        return sorted(((name, len(c), sum(c), max(c)) for name, c in groups.items()),
                      key=lambda row: row[2], reverse=True)

    def by_process(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for (idx, _name), cpu in self.by_thread().items():
            out[idx] = out.get(idx, 0.0) + cpu
        return out
