"""The chaos suite at full size (issue 11), with a report.

Runs the scenarios of ``tests/chaos/scenarios.py`` (the same code ``tests/chaos`` runs at CI
size) and prints what each measured; any broken promise fails the scenario with its reason,
and the script exits 1:

- ``broker-kill``: four jobs (realtime → core.Set, realtime → transactional Produce,
  kafka.Trigger → duckdb.Load, share group → core.Set) under ~1,000 records/s; the broker is
  SIGKILLed ~5 s in and kept down 8 to 15 s (random, ``--seed``), ``--rounds`` times;
- ``job-kills``: 20 SIGKILLs at random moments of a realtime ``--processes 2`` job and of a
  transactional Produce job, each over a backlog;
- ``stall``: a TCP proxy stops forwarding for longer than the consumer session (45 s default
  session → 50 s pause), then forwards again;
- ``give-up``: the broker dies for good; batch and share-group jobs stop at the bound.

Broker-killing scenarios start their own brokers on free ports; ``job-kills`` uses
``$WAXFLOW_BOOTSTRAP`` (or ``--bootstrap``). ``core.Python`` flows need the repository on
``PYTHONPATH`` (set here for the children).

    .venv/bin/python bench/chaos.py                 # everything, full size
    .venv/bin/python bench/chaos.py broker-kill --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from bench/
    sys.path.insert(0, str(REPO))

from tests.chaos import scenarios  # noqa: E402


def _broker_kill(tmp: Path, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    return scenarios.broker_kill(tmp, rate=args.rate, down_s=round(rng.uniform(8.0, 15.0), 1),
                                 kill_after=5.0, feed_after=args.feed_after, idle=30.0)


def _job_kills(tmp: Path, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    bootstrap = args.bootstrap or os.environ.get("WAXFLOW_BOOTSTRAP", "127.0.0.1:9092")
    return scenarios.job_kills(tmp, bootstrap, n=args.backlog, kills=args.kills,
                               seed=rng.randrange(1 << 30), window=(2.0, 10.0))


def _stall(tmp: Path, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    return scenarios.network_stall(tmp, n=args.records // 2, rate=args.rate // 2,
                                   pause_s=50.0, session_ms=45000, pause_after=8.0, idle=40.0)


def _give_up(tmp: Path, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    return scenarios.give_up(tmp, n=1000, give_up_s=30.0)


SCENARIOS: dict[str, Callable[[Path, argparse.Namespace, random.Random], dict[str, Any]]] = {
    "broker-kill": _broker_kill, "job-kills": _job_kills, "stall": _stall,
    "give-up": _give_up,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*", metavar="SCENARIO",
                    help=f"scenarios to run: {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each scenario")
    ap.add_argument("--feed-after", type=float, default=15.0,
                    help="broker-kill: seconds records keep coming after the broker is back")
    ap.add_argument("--records", type=int, default=30_000, help="records fed during stall")
    ap.add_argument("--rate", type=int, default=1000, help="records/s fed (broker-kill)")
    ap.add_argument("--backlog", type=int, default=100_000, help="job-kills backlog")
    ap.add_argument("--kills", type=int, default=20, help="job-kills SIGKILLs per job")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--bootstrap", help="broker for job-kills (default $WAXFLOW_BOOTSTRAP)")
    args = ap.parse_args()
    unknown = [n for n in args.only if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    rng = random.Random(args.seed)
    print(f"chaos bench, seed {args.seed}")
    failed = 0
    for name in args.only or list(SCENARIOS):
        for round_no in range(1, args.rounds + 1):
            tmp = Path(tempfile.mkdtemp(prefix=f"waxflow-chaos-{name}-"))
            t0 = time.monotonic()
            try:
                result = SCENARIOS[name](tmp, args, rng)
                status = "ok"
            except AssertionError as exc:
                result, status = {"failure": str(exc)[:4000]}, "FAILED"
                failed += 1
            except Exception:
                result, status = {"error": traceback.format_exc()[-4000:]}, "ERROR"
                failed += 1
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            took = time.monotonic() - t0
            print(f"\n== {name} round {round_no}: {status} in {took:.0f}s")
            print(json.dumps(result, indent=2, sort_keys=True, default=str))
            sys.stdout.flush()
    print(f"\n{failed} scenario run(s) failed" if failed else "\nall scenario runs passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
