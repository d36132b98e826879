"""Chaos at CI size (issue 11): broker SIGKILL under load, SIGKILLed jobs, a stalled network
path and the give-up bound. The scenarios and what each asserts are in
:mod:`tests.chaos.scenarios`; ``bench/chaos.py`` runs them at full size.

Broker-killing scenarios start their own broker on free ports (never the shared one); the
job-kill scenario uses the session broker (``$WAXFLOW_BOOTSTRAP``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.chaos import scenarios

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def _report(name: str, result: dict[str, object]) -> None:
    print(f"{name}: {json.dumps(result, sort_keys=True)}")


def test_broker_kill_four_jobs_ride_it_out(tmp_path: Path) -> None:
    # records arrive until 8 s after the broker is back: the realtime source counts time
    # without a broker as idle (until it calls broker_watch.idle_since), and a broker restart
    # on a loaded 2-core machine took 20-90 s. Idle 40 s: on such a machine a new share
    # group's first assignment took over 20 s (its state topic is created on first use)
    result = scenarios.broker_kill(tmp_path, rate=250, down_s=8.0, kill_after=5.0,
                                   feed_after=8.0, idle=40.0)
    _report("broker_kill", result)
    # the outage was noticed and its end too, one line each per outage episode (a broker
    # restarting on a loaded machine can be reachable, then gone again: two episodes)
    # (measured once: 3 "unreachable" and 2 "reachable again" lines from the batch job, whose
    # last episode was still open when it stopped at idle: see the issue 11 note)
    # A share job still starting up (no client yet: start-up took over 30 s at load 12)
    # when the broker died may never see the outage; it must still catch up (checked above)
    for name in ("share-set", "batch-duckdb"):
        down, back = result[name]["outage_lines"]
        if name == "share-set" and not result["share_worked_at_kill"]:
            assert down == back, (name, down, back)
            continue
        assert 1 <= back <= down <= back + 1, (name, down, back)


def test_job_kills_at_random_moments(bootstrap: str, tmp_path: Path) -> None:
    result = scenarios.job_kills(tmp_path, bootstrap, n=3000, kills=4, window=(2.0, 6.0))
    _report("job_kills", result)
    assert result["kills"] == {"rt-procs": 4, "produce": 4}


def test_network_stall_longer_than_the_session(tmp_path: Path) -> None:
    result = scenarios.network_stall(tmp_path, n=3000, rate=200, pause_s=12.0,
                                     session_ms=6000, pause_after=5.0, idle=20.0)
    _report("network_stall", result)
    assert result["pause_s"] * 1000 > result["session_ms"]


def test_consumers_give_up_after_the_bound(tmp_path: Path) -> None:
    result = scenarios.give_up(tmp_path, n=300, give_up_s=8.0)
    _report("give_up", result)
