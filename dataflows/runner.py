"""``waxflow run``: run a flow with Bytewax in this process, or as a cluster of processes.

Epochs default to 200 ms (sub-second epochs are only reachable through ``cli_main``), so
offsets are committed within a fraction of a second of the work. ``--processes N`` starts N
processes; ``-w N`` adds worker threads per process (they share the GIL: prefer processes).
For a realtime flow without ``--recovery-dir`` the N processes are independent Bytewax
runs, each reading its share of the Kafka partitions (``$WAXFLOW_PARTITION_SHARE``; share
groups: the broker spreads the records): their state is in Kafka (committed offsets,
acks), so nothing needs the cluster's exchange, and a cluster's members wait on each other at
every epoch (measured by ``bench/scale.py``: 0.68x the speed of one process at 2.1x its CPU,
against 1.09x at 1.26x for independent ones). Batch and schedule flows, and runs with
``--recovery-dir``, start the N processes of one Bytewax cluster on loopback ports. Either
way the launcher holds the flow's instance lock, and when one process fails it stops the
others (a flow runs whole or not at all; restart it).
Realtime flows keep their position in the consumer group's committed offsets, so recovery
is off unless ``--recovery-dir`` is given (then Bytewax snapshots are the resume point).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from waxflow.connectors import shutdown
from waxflow.connectors.broker import free_port
from waxflow.connectors.health import DEFAULT_STUCK_AFTER
from waxflow.errors import WaxflowError, user_message

#: this process's index among the flow's processes (its transactional ids and metrics)
PROCESS_ID_ENV = "WAXFLOW_PROCESS_ID"


class MetricsPortError(WaxflowError):
    """The metrics port cannot be served (taken, not allowed)."""


class ClusterMemberLost(WaxflowError):
    """Another process of a ``--addresses`` cluster went away."""


def member_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is Bytewax's panic when a peer's connection broke (timely's send or
    receive thread for that peer panics: measured, the survivor stops ~1 s after a SIGKILL
    of the other member)."""
    text = str(exc)
    return type(exc).__name__ == "PanicException" and (
        "Send thread panic" in text or "Recv thread panic" in text)

#: young-generation threshold of the garbage collector while a flow runs (default 700)
YOUNG_GC_THRESHOLD = 10_000


def user_error(exc: BaseException) -> str | None:
    """The one-line message for the user of an error that stopped the job, if it is one of
    ours (:func:`waxflow.errors.user_message`) or a Kafka client error; None for a bug."""
    from confluent_kafka import KafkaException

    return user_message(exc, also=(KafkaException,))


@contextlib.contextmanager
def quiet_panics() -> Iterator[None]:
    """Forward fd 2 through a filter that drops the Rust panic report of a failed step.

    Bytewax reports an exception raised in a step as a Rust panic with a long backtrace on
    stderr before the exception reaches Python; users get our one-line message instead.
    Everything else (logs, librdkafka warnings) passes through. ``WAXFLOW_DEBUG=1`` keeps it.
    """
    if env_flag("WAXFLOW_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    shutdown.direct_stderr(saved)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    out = os.fdopen(saved, "wb", buffering=0, closefd=False)

    def pump() -> None:
        dropping = False
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                if b"panicked at" in line:
                    dropping = True
                if not dropping:
                    out.write(line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF
        shutdown.direct_stderr(2)
        thread.join(timeout=5)
        os.close(saved)


def serve_metrics(flow_path: str, port: int, *, process_id: int | None,
                  stuck_after: float) -> None:
    """Turn metrics on and serve ``/metrics``, ``/healthz``, ``/readyz`` on ``port``
    (before the flow compiles: its Kafka clients then report statistics)."""
    from waxflow.connectors import health, metrics
    from waxflow.dataflows.spec import parse_flow
    from waxflow.flow import KafkaTrigger

    spec = parse_flow(flow_path)
    trig = spec.trigger
    rule: health.ReadyRule = "running"
    topics: list[str] = []
    pattern = None
    if isinstance(trig, KafkaTrigger):
        rule = "share" if trig.groupType == "SHARE" else "partitions"
        topics, pattern = trig.topic_list(), trig.topicPattern
    metrics.enable(f"{spec.namespace}.{spec.id}", topics=topics, pattern=pattern,
                   process_id=process_id)
    health.HEALTH.stuck_after = stuck_after
    health.HEALTH.rule = rule
    try:
        health.serve(port)
    except OSError as exc:
        raise MetricsPortError(f"cannot serve metrics on port {port}: {exc.strerror or exc}"
                               ) from None


def run_here(flow_path: str, *, workers: int, epoch: timedelta, recovery_dir: str | None,
             stop_when_idle: float | None, process_id: int | None = None,
             addresses: list[str] | None = None, max_ticks: int | None = None,
             metrics_port: int | None = None,
             stuck_after: float = DEFAULT_STUCK_AFTER,
             inputs: dict[str, str] | None = None) -> None:
    """Run the flow in this process (one member of a cluster when ``addresses`` is set),
    serving metrics and health on ``metrics_port`` when given; ``inputs``: values of the
    flow's inputs for every execution."""
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.run import cli_main

    from waxflow.dataflows import load_flow

    if process_id is not None:
        os.environ[PROCESS_ID_ENV] = str(process_id)  # stable transactional.ids
    elif os.environ.get(PROCESS_ID_ENV, "").isdigit():  # one of --processes' independent runs
        process_id = int(os.environ[PROCESS_ID_ENV])
    if metrics_port is not None:
        serve_metrics(flow_path, metrics_port, process_id=process_id, stuck_after=stuck_after)
    flow = load_flow(flow_path, stop_when_idle=stop_when_idle, max_ticks=max_ticks,
                     inputs=inputs)
    # everything built so far lives for the whole run: keep the collector from rescanning
    # it (measured: full collections cost ~1 s CPU per 50k records and 60-240 ms pauses).
    # No collection first: it costs 15-30 ms of CPU to free ~160 objects of start-up
    # garbage (a realtime flow, measured), which the freeze keeps instead
    gc.freeze()
    # a batch holds hundreds of thousands of young container objects (records, Kafka
    # messages): with the default young threshold (700) the collector re-walks them ~10x
    # per batch (measured by bench/microbatch.py: 1.4 us of 4 us per record of consume);
    # the workload makes almost no cyclic garbage
    gc.set_threshold(YOUNG_GC_THRESHOLD, 10, 10)
    recovery = None
    if recovery_dir is not None:
        rdir = Path(recovery_dir)
        if not rdir.exists() or not any(rdir.iterdir()):
            rdir.mkdir(parents=True, exist_ok=True)
            init_db_dir(rdir, max(1, workers * len(addresses or [""])))  # type: ignore[no-untyped-call]
        recovery = RecoveryConfig(str(rdir))  # type: ignore[no-untyped-call]
    os.environ.setdefault("RUST_BACKTRACE", "0")
    shutdown.install()
    if metrics_port is not None:
        from waxflow.connectors.health import HEALTH

        HEALTH.running = True
    try:
        with quiet_panics():
            cli_main(  # type: ignore[no-untyped-call]
                flow, workers_per_process=workers,
                process_id=process_id if addresses else None, addresses=addresses,
                epoch_interval=epoch, recovery_config=recovery)
    except BaseException as exc:  # a Rust panic is a BaseException (pyo3's PanicException)
        if addresses and len(addresses) > 1 and member_lost(exc):
            raise ClusterMemberLost(
                f"cluster member lost: another process of the {len(addresses)}-member "
                "cluster stopped or became unreachable, so this one stops too (a Bytewax "
                "cluster runs all members or none); restart every member: they resume from "
                "the committed offsets") from None
        raise
    if shutdown.requested():
        print(f"waxflow: stopped by {shutdown.requested()}; {shutdown.done_count()} "
              "executions finished, offsets committed", file=sys.stderr)


#: what a forked member of ``--processes N`` runs: ``run_here`` with the command line's
#: options, given its process index, the cluster's addresses (None: an independent run) and
#: its metrics port; returns the process's exit code
Member = Callable[[int, list[str] | None, int | None], int]


def run_cluster(argv_base: list[str], processes: int, flow_path: str | None = None,
                metrics_port: int | None = None, member: Member | None = None) -> int:
    """Start ``processes`` members of one cluster; return the worst exit code. The parent
    holds the flow's instance lock for the whole cluster (``flow_path``). With
    ``metrics_port``, process ``i`` serves its metrics on ``metrics_port + i``.

    With ``member``, the members are forks of this process, which has imported and
    validated everything they need (each spares ~0.3 s of CPU); they start their run once
    the lock is held. Otherwise (or when this process is not single-threaded, which a fork
    needs) each is ``python -m waxflow.cli`` with ``argv_base`` and its own options."""
    from waxflow.connectors.instance_lock import HELD_ENV
    from waxflow.connectors.kafka_source import PARTITION_SHARE_ENV
    from waxflow.dataflows.instance import hold_instance
    from waxflow.dataflows.spec import parse_flow
    from waxflow.flow import RealtimeTrigger

    flow = parse_flow(flow_path) if flow_path is not None else None
    independent = (isinstance(flow.trigger, RealtimeTrigger)
                   and "--recovery-dir" not in argv_base) if flow is not None else False
    held = {HELD_ENV: "1"} if flow is not None else {}
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))

    def env_of(i: int) -> dict[str, str]:
        if independent:  # not a cluster member: its index only names it (transactional ids)
            return {**held, PARTITION_SHARE_ENV: f"{i}/{processes}", PROCESS_ID_ENV: str(i)}
        return dict(held)

    def port_of(i: int) -> int | None:
        return None if metrics_port is None else metrics_port + i

    forks = None
    if member is not None and _single_threaded():
        # before the lock: holding it runs a Kafka client's threads, and a fork copies none
        forks = _Forks(member, [(env_of(i), i, None if independent else addresses.split(";"),
                                 port_of(i)) for i in range(processes)])
    try:
        if flow is not None:
            hold_instance(flow)
    except BaseException:
        if forks is not None:
            forks.cancel()
        raise
    children: list[Any]
    if forks is not None:
        children = forks.go()
    else:
        def start(i: int) -> subprocess.Popen[bytes]:
            more: list[str] = []
            if not independent:
                more += ["--process-id", str(i), "--addresses", addresses]
            if metrics_port is not None:
                more += ["--metrics-port", str(port_of(i))]
            return subprocess.Popen([sys.executable, "-m", "waxflow.cli", *argv_base, *more],
                                    env={**os.environ, **env_of(i)})

        children = [start(i) for i in range(processes)]

    def forward(sig: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGUSR2, forward)  # every process prints its threads' stacks
    return _wait_all(children)


def _single_threaded() -> bool:
    """Whether this process runs one thread (native ones included: a fork copies only the
    calling thread, so a lock held by another one would stay held in the child)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:  # not Linux: no fork
        return False


class _Forked:
    """A forked member, with the part of ``subprocess.Popen``'s interface the launcher
    uses (``returncode``: the exit code, or minus the signal that ended it)."""

    def __init__(self, process: Any) -> None:
        self.process = process

    @property
    def returncode(self) -> int | None:
        code: int | None = self.process.exitcode
        return code

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"member {self.process.pid}", timeout or 0.0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)


class _Forks:
    """The members of ``--processes N`` forked now, each waiting on a pipe for :meth:`go`
    (or for the pipe's end, :meth:`cancel` or this process gone: it then exits 0)."""

    def __init__(self, member: Member,
                 specs: list[tuple[dict[str, str], int, list[str] | None, int | None]]) -> None:
        import multiprocessing

        # what every member imports next is imported once, here (forked, not re-imported)
        import waxflow.dataflows.compiler  # noqa: F401

        self.read_fd, self.write_fd = os.pipe()
        context = multiprocessing.get_context("fork")
        sys.stdout.flush()
        sys.stderr.flush()
        self.processes = [context.Process(target=_member_main, name=f"waxflow-{i}",
                                          args=(member, self.read_fd, self.write_fd, *spec))
                          for i, spec in enumerate(specs)]
        for process in self.processes:
            process.start()
        os.close(self.read_fd)

    def go(self) -> list[Any]:
        """Let every member run; the members."""
        os.write(self.write_fd, b"1" * len(self.processes))
        os.close(self.write_fd)
        return [_Forked(p) for p in self.processes]

    def cancel(self) -> None:
        """Let every member exit without running; wait for them."""
        os.close(self.write_fd)
        for process in self.processes:
            process.join()


def _member_main(member: Member, read_fd: int, write_fd: int, env: dict[str, str],
                 process_id: int, addresses: list[str] | None, metrics_port: int | None
                 ) -> None:
    """A forked member: wait for its launcher's go, then run (exit with its code). Its exit
    runs the exit handlers it registered, as a process's does (multiprocessing ends a fork
    with ``os._exit``), and not the launcher's (a temporary directory the launcher uses...)."""
    os.close(write_fd)
    atexit._clear()
    go = os.read(read_fd, 1)
    os.close(read_fd)
    if go != b"1":
        sys.exit(0)  # the launcher could not start the cluster (it says why), or is gone
    os.environ.update(env)
    try:
        code = member(process_id, addresses, metrics_port)
    finally:
        atexit._run_exitfuncs()
    sys.exit(code)


def _wait_all(children: list[Any]) -> int:
    """Wait for every child; the first one to fail stops the others (SIGTERM: they finish
    what runs and commit it). The worst exit code."""
    stopping = False
    while True:
        codes = [c.poll() for c in children]
        if all(code is not None for code in codes):
            break
        if not stopping and any(code not in (None, 0) for code in codes):
            stopping = True
            for child, code in zip(children, codes, strict=True):
                if code is None:
                    child.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired, StopIteration):
            next(c for c in children if c.poll() is None).wait(timeout=0.2)
    done: list[int] = [c.returncode for c in children]
    return max(done, key=lambda c: (c != 0, abs(c)))


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
