"""Peak RSS of one realtime job against the size of the backlog it starts on.

Run: ``.venv/bin/python bench/memory.py [--sizes 100000,1000000,3000000] [--processes 1]``.
For each size a fresh topic holds that many ~200-byte JSON records (3 partitions); the flow
of bench/realtime.py (Switch + Set) runs over it with ``waxflow run --stop-when-idle 2``;
the job's peak resident set size (VmHWM, sampled every 0.1 s; with ``--processes N`` the
sum over the cluster's processes) is printed per size, with the ratio to the smallest size.
Memory bounded by settings (pre-fetch, in-flight executions) shows ratios near 1.0; memory
bounded by the backlog grows with it.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import benchkit
import realtime
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out += _tree(int(child))
    return out


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[float, float]:
    """Run ``cmd``; (peak RSS in MB summed over its process tree, seconds taken)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    peaks: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        for pid in _tree(proc.pid):
            peaks[pid] = max(peaks.get(pid, 0), _hwm_kb(pid))
        time.sleep(0.1)
    _out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"job exited {proc.returncode}: {err[-2000:]}")
    return sum(peaks.values()) / 1024, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchkit.add_bootstrap(ap)
    ap.add_argument("--sizes", default="100000,1000000,3000000",
                    help="backlog sizes, comma-separated")
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    res = benchkit.Resources(AdminClient({"bootstrap.servers": args.bootstrap}))
    rows: list[tuple[int, float, float]] = []
    with benchkit.scratch(res, "waxflow-mem-", announce=True) as tmp:
        for n in sizes:
            inputs = benchkit.fresh_inputs(res, args.bootstrap, f"mem{n}", n)
            flow = tmp / f"flow-{n}.yaml"
            flow.write_text(realtime.flow_yaml(inputs.topic, inputs.group))
            cmd = benchkit.waxflow_cmd(flow, 2, "--processes", str(args.processes))
            peak, took = peak_rss_mb(cmd, benchkit.child_env(args.bootstrap, inputs.log),
                                     timeout=3600)
            rows.append((n, peak, took))
            print(f"  backlog {n:>9,}: peak RSS {peak:7.1f} MB in {took:6.1f} s "
                  f"(load {benchkit.load()})", flush=True)
    base = rows[0][1]
    print(f"\n| backlog | peak RSS (MB), {args.processes} process(es) | ratio to "
          f"{rows[0][0]:,} |\n|---|---|---|")
    for n, peak, _took in rows:
        print(f"| {n:,} | {peak:.0f} | {peak / base:.2f} |")


if __name__ == "__main__":
    main()
