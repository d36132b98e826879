"""What-if runs for the realtime bench: product hotspots patched in memory (not a test).

Run: ``.venv/bin/python bench/whatif_realtime.py [--records 50000] [--repeat 2]
[--variants a,b]`` for throughput, or ``... --latency [--rate 1000] [--seconds 20]`` for the
latency phase of bench/realtime.py with each variant as the job.

Each variant runs the flow of bench/realtime.py in a fresh child process, in-process Bytewax
(``run_main``, one worker, 200 ms epochs, ``--stop-when-idle 2``), on fresh topics, with some
product functions replaced *in that process's memory only* by prototypes of proposed changes
(no product file is touched). The prototypes keep the observable behaviour of the flow used
here (same documents, delivery still checked, offsets still committed after the work); they
are sketches to size the gains, not drop-in patches (e.g. the inline variant ignores
``maxConcurrency``, which a real change must keep for flows whose tasks block).

Variants (the first six are cumulative):

* ``base``    - product code as is.
* ``retry``   - ``RetryPolicy`` built once per retry spec instead of per task run
                (each ``RetryPolicy()`` seeds a ``random.Random()`` from ``os.urandom``).
* ``inline``  - + the executions of a batch run in the Bytewax worker thread instead of one
                thread-pool future per record (now the product's behaviour for flows whose
                tasks never block: ``Executor.inline``; kept so the variants stay cumulative).
* ``logbatch``- + ``Deliveries`` (``LogBatch``) counts deliveries with plain counters (no
                Condition / ``notify_all`` per delivery; the waiter is the thread that
                polls, so delivery callbacks run on it anyway).
* ``jsonable``- + ``jsonable``/``as_dict`` without ``isinstance(x, A | B)`` (a new
                ``types.UnionType`` per call) and with one ``isoformat`` helper.
* ``gcfreeze``- + ``gc.collect(); gc.freeze()`` after the flow is compiled, before the run:
                the ~70k start-up objects (modules, pydantic models, Bytewax, Jinja) leave
                the cyclic GC's full (gen-2) scans, which otherwise cost ~35-60 ms of CPU
                each and hold the GIL (see ``profile_realtime.py --no-profile --gc``).
* ``norunning`` (behaviour change, for sizing only) - + no RUNNING document.
* ``gconly``  - ``base`` + ``gcfreeze`` alone.

Printed per variant: executions/s (first log document -> last terminal document, broker
append times) and process CPU per record (less sensitive to other load on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchkit
import realtime

_STACK = ["retry", "inline", "logbatch", "jsonable"]
VARIANTS: dict[str, set[str]] = {
    "base": set(),
    "retry": set(_STACK[:1]),
    "inline": set(_STACK[:2]),
    "logbatch": set(_STACK[:3]),
    "jsonable": set(_STACK),
    "gcfreeze": {*_STACK, "gcfreeze"},
    "norunning": {*_STACK, "gcfreeze", "norunning"},
    "gconly": {"gcfreeze"},
}
DEFAULT_LATENCY = "base,gconly,gcfreeze"


# --------------------------------------------------------------------------- prototypes
def patch_retry() -> None:
    import waxflow.operators.engine as engine_mod
    from waxflow.retry import RetryPolicy

    cache: dict[int, RetryPolicy] = {}

    def policy(spec: Any) -> RetryPolicy:
        found = cache.get(id(spec))
        if found is None:
            found = cache[id(spec)] = RetryPolicy(spec)
        return found

    engine_mod.RetryPolicy = policy  # type: ignore[assignment,misc]


def patch_inline(write_running: bool = True) -> None:
    """``inline`` is the product's behaviour now (``Executor.inline``: a flow whose tasks
    never block runs its executions on the worker thread); ``norunning`` still drops the
    RUNNING document, for sizing only."""
    from waxflow.operators.executor import Executor, Job

    if not hasattr(Executor, "run_job") or not hasattr(Executor, "inline"):
        raise RuntimeError("waxflow.operators.executor changed: update bench/whatif_realtime.py")
    if write_running:
        return

    def run_job(self: Any, job: Job, batch: Any, scope: Any = None) -> Any:
        execution = job.execution
        if job.variables is not None:
            self.engine.run(execution, job.variables, scope)
        if job.finish is not None:
            job.finish(execution)
        batch.write(execution.id, execution.to_json())
        return execution

    Executor.run_job = run_job  # type: ignore[method-assign]


def patch_logbatch() -> None:
    import waxflow.connectors.deliveries as dv

    D = dv.Deliveries
    if not hasattr(D, "_on_delivery"):
        raise RuntimeError("waxflow.connectors.deliveries changed: update bench/whatif_realtime.py")

    def __init__(self: Any, producer: Any) -> None:
        self.producer = producer
        self.sent = 0
        self._acked = 0
        self._errors = []
        self._lock = threading.Lock()

    def _on_delivery(self: Any, err: Any, msg: Any) -> None:
        self._acked += 1  # served by poll() in the waiting thread
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err.str()}")

    def produce(self: Any, topic: str, key: Any, value: Any, headers: Any = None,
                partition: int | None = None, timestamp: int | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        with self._lock:
            self.sent += 1
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,
                                      on_delivery=self._on_delivery, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)

    def wait(self: Any, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        poll = self.producer.poll
        while self._acked < self.sent:
            if time.monotonic() > deadline:
                raise dv.DeliveryError("unacknowledged")
            poll(0.05)
        if self._errors:
            raise dv.DeliveryError("delivery failed: " + "; ".join(self._errors[:5]))

    D.__init__ = __init__  # type: ignore[method-assign]
    D._on_delivery = _on_delivery  # type: ignore[method-assign]
    D.produce = produce  # type: ignore[method-assign]
    D.wait = wait  # type: ignore[method-assign]


def patch_jsonable() -> None:
    import base64

    import waxflow.execution as ex

    scalars = (str, int, float, bool, type(None))

    def jsonable(value: Any) -> Any:
        t = type(value)
        if t in scalars:
            return value
        if t is dict:
            return {k if type(k) is str else str(k): jsonable(v) for k, v in value.items()}
        if t is list or t is tuple:
            return [jsonable(v) for v in value]
        if isinstance(value, (bytes, bytearray)):
            return {"$base64": base64.b64encode(value).decode()}
        if isinstance(value, dict):
            return {str(k): jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [jsonable(v) for v in value]
        if isinstance(value, scalars):
            return value
        return str(value)

    def as_dict(self: Any) -> dict[str, Any]:
        return {
            "taskId": self.task_id, "type": self.type, "parentTaskId": self.parent,
            "state": self.state,
            "attempts": [{"state": a.state, "startDate": a.start.isoformat(),
                          "endDate": a.end.isoformat() if a.end is not None else None,
                          "error": a.error} for a in self.attempts],
            "outputs": jsonable(self.outputs) if self.outputs else None,
        }

    ex.jsonable = jsonable
    ex.TaskRun.as_dict = as_dict  # type: ignore[method-assign]
    import waxflow.operators.execute as exe

    exe.jsonable = jsonable


def apply(variant: str) -> None:
    patches = VARIANTS[variant]
    if "retry" in patches:
        patch_retry()
    if "inline" in patches:
        patch_inline(write_running="norunning" not in patches)
    if "logbatch" in patches:
        patch_logbatch()
    if "jsonable" in patches:
        patch_jsonable()


# --------------------------------------------------------------------------- runs
def child(args: argparse.Namespace) -> int:
    """One variant, in this process: print a JSON line with the result."""
    apply(args.variant)
    flow = benchkit.compile_flow(Path(args.flow), args.bootstrap, args.log, idle=realtime.IDLE)
    if "gcfreeze" in VARIANTS[args.variant]:
        import gc

        gc.collect()
        gc.freeze()  # start-up objects (modules, pydantic models, ...) leave the GC's scans
    print(json.dumps({"cpu": benchkit.run_in_process(flow).cpu}))
    return 0


def child_cmd(variant: str, flow: Path, log: str, bootstrap: str) -> list[str]:
    """This script in ``--child`` mode: the flow as ``variant``."""
    return [sys.executable, __file__, "--child", "--variant", variant,
            "--flow", str(flow), "--log", log, "--bootstrap", bootstrap]


def one(variant: str, n: int, bootstrap: str, res: benchkit.Resources, tmp: Path
        ) -> tuple[float, float]:
    inp = benchkit.fresh_inputs(res, bootstrap, f"wi-{variant}", n)
    log = inp.log
    flow = tmp / f"{variant}.yaml"
    flow.write_text(realtime.flow_yaml(inp.topic, inp.group))
    proc = subprocess.run(child_cmd(variant, flow, log, bootstrap),
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(benchkit.REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed: {proc.stderr[-3000:]}")
    cpu = json.loads(proc.stdout.strip().splitlines()[-1])["cpu"]
    scan = realtime.scan_log(bootstrap, log)
    if len(scan.terminal_ids) != n or scan.success != n:
        raise RuntimeError(f"{variant}: {len(scan.terminal_ids)} terminal, {scan.success} "
                           f"SUCCESS of {n}")
    expected_docs = n if variant == "norunning" else 2 * n
    if scan.docs != expected_docs:
        raise RuntimeError(f"{variant}: {scan.docs} documents, expected {expected_docs}")
    assert scan.first_ms is not None and scan.last_terminal_ms is not None
    rate = n / ((scan.last_terminal_ms - scan.first_ms) / 1000)
    return rate, cpu / n * 1e6


def latency(args: argparse.Namespace, res: benchkit.Resources, variants: list[str]) -> int:
    """bench/realtime.py's latency phase with each variant as the job (interleaved rounds)."""

    def cmd_for(variant: str) -> Any:
        def cmd(flow: Path, log: str) -> list[str]:
            return child_cmd(variant, flow, log, args.bootstrap)
        return cmd

    results: dict[str, list[realtime.Latency]] = {v: [] for v in variants}
    with benchkit.scratch(res, "waxflow-whatif-") as tmp:
        for r in range(args.repeat):
            for v in variants:
                print(f"round {r + 1} {v} (load {benchkit.load()})", flush=True)
                lat = realtime.latency_phase(res, args.bootstrap, v, args.rate, args.seconds,
                                             tmp, cmd_for(v))
                lat.report()
                results[v].append(lat)
    print(f"\nproduce() -> terminal document appended, {args.rate:,.0f} records/s for "
          f"{args.seconds:g} s (per round p50 / p99)")
    for v in variants:
        rounds = ", ".join(f"{realtime.pct(x.total, 50):.1f} / {realtime.pct(x.total, 99):.1f} ms"
                           for x in results[v])
        print(f"  {v:10s} {rounds}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated, of {', '.join(VARIANTS)} (default: all; with "
                         f"--latency: {DEFAULT_LATENCY})")
    ap.add_argument("--latency", action="store_true",
                    help="latency phase of bench/realtime.py per variant instead")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    benchkit.add_bootstrap(ap)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--flow", help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from confluent_kafka.admin import AdminClient

    res = benchkit.Resources(AdminClient({"bootstrap.servers": args.bootstrap}))
    if args.latency:
        return latency(args, res, (args.variants or DEFAULT_LATENCY).split(","))
    variants = (args.variants or ",".join(VARIANTS)).split(",")
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    with benchkit.scratch(res, "waxflow-whatif-") as tmp:
        for r in range(args.repeat):  # interleaved, so background load hits all variants
            for v in variants:
                rate, us = one(v, args.records, args.bootstrap, res, tmp)
                results[v].append((rate, us))
                print(f"  round {r + 1} {v:10s} {rate:8,.0f} executions/s  {us:5.0f} us CPU/record"
                      f"  (load {benchkit.load()})", flush=True)
    print(f"\n{args.records:,} records per run, {args.repeat} runs per variant "
          "(best / median executions/s; median CPU us/record)")
    for v in variants:
        rates = [x[0] for x in results[v]]
        cpus = [x[1] for x in results[v]]
        print(f"  {v:10s} best {max(rates):8,.0f}/s  median {statistics.median(rates):8,.0f}/s  "
              f"CPU {statistics.median(cpus):5.0f} us/record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
